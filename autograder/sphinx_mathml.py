"""A Sphinx math renderer that writes MathML when the site is built (latex2mathml), so pages
need no MathJax, no script and no font download: browsers draw MathML themselves."""
from __future__ import annotations

from docutils import nodes
from latex2mathml.converter import convert


def _mathml(latex: str, display: str) -> str:
    try:
        return convert(latex, display=display)
    except Exception:  # a formula the converter cannot read stays readable as its source
        return f'<code class="math-source">{nodes.Text(latex).astext()}</code>'


def visit_inline(self, node):
    self.body.append(_mathml(node.astext(), "inline"))
    raise nodes.SkipNode


def visit_block(self, node):
    latex = node["latex"] if "latex" in node else node.astext()
    self.body.append(f'<div class="math-block">{_mathml(latex, "block")}</div>')
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer("mathml", (visit_inline, None), (visit_block, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
