"""The course as a static website: ``python3 course.py site OUT_DIR``.

What a self-learner reads, built offline with Sphinx, myst-nb and the book theme (all from
PyPI; formulas are turned into MathML at build time, so no page loads anything from the
internet and none needs a script to show its math):

- every lecture, executed, with its outputs and figures, in English and in Korean
  (``lectures/ko/``), each page linking to the same lecture in the other language;
- one page per exercise: the task (the skeleton's docstrings), the lecture that prepares it,
  the exercises it needs, how it is graded and its public checks -- never a solution body
  or a hidden test;
- the API reference (docs/API.md), the glossary and the adequacy report.

Lectures are executed once per content: an executed copy is kept under ``.cache/lectures``
keyed by the notebook's bytes and the course modules it imports, so a
rebuild after one edit re-executes only that lecture (``execute_lecture``; the lecture tests
use the same cache). The pages are made from the student release's view of each lecture
(quiz solutions and hidden tests removed, their cells' outputs too) and the built site goes
through the release's leak check.
"""
from __future__ import annotations

import ast
import hashlib
import html.parser
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from .exercises import COURSE

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "lectures"
LANGUAGES = {"en": "English", "ko": "한국어"}
EXECUTION_TIMEOUT_S = 300  # per cell; the lecture tests hold each lecture to its own budget
CPU_PROBE = ("import os as _course_os\n_t = _course_os.times()\n"
             "print('course-cpu-seconds', _t.user + _t.system + _t.children_user + _t.children_system)")


# ---------------------------------------------------------------------------------------
# executing lectures, cached by content
# ---------------------------------------------------------------------------------------
IMPORT = re.compile(r"\b(solutions|exercises)\.(\w+)|from (solutions|exercises) import \(?([\w, \n]+)\)?")
RELATIVE = re.compile(r"^from \.(\w+) import", re.M)


def _imported_files(path: Path) -> list[Path]:
    """The course modules a lecture imports (``solutions.attention``, ``from exercises import
    rope``), and theirs (``from .layers import ...``), so that an edit there re-executes it."""
    import nbformat

    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    wanted = set()
    for match in IMPORT.finditer(code):
        if match.group(1):
            wanted.add((match.group(1), match.group(2)))
        else:
            wanted.update((match.group(3), name.strip()) for name in match.group(4).split(",") if name.strip())
    files, queue = set(), list(wanted)
    while queue:
        folder, name = queue.pop()
        file = ROOT / folder / f"{name}.py"
        if file.exists() and file not in files:
            files.add(file)
            queue += [(folder, dep) for dep in RELATIVE.findall(file.read_text())]
    return sorted(files)


CACHE_FORMAT = b"2"  # what an executed copy records (nb.metadata.course); bump when that changes


def lecture_key(path: Path) -> str:
    digest = hashlib.sha256(CACHE_FORMAT + Path(path).read_bytes())
    for file in _imported_files(Path(path)):
        digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:24]


def execute_lecture(path: Path, cache: Path = CACHE):
    """(executed notebook, seconds it took now: 0.0 when it came from the cache). What the
    execution took is kept in ``nb.metadata.course`` either way: ``executed_in_s`` (wall) and
    ``cpu_s`` (the kernel's CPU time, which the lecture tests hold to the budget). The notebook runs in its own folder (its relative paths and
    imports as a reader's JupyterLab has them)."""
    import fcntl
    import time

    import nbformat
    from nbclient import NotebookClient

    path = Path(path).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    # the editions share file names: ko/01_self_attention is cached as ko--01_self_attention
    edition = path.parent.name if path.parent.name in LANGUAGES else ""
    name = f"{edition}--{path.stem}" if edition else path.stem
    target = cache / f"{name}-{lecture_key(path)}.ipynb"
    with open(cache / f"{name}.lock", "w") as lock:  # two test workers: one executes, one waits
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return nbformat.read(target, as_version=4), 0.0
        nb = nbformat.read(path, as_version=4)
        # a last cell reads the kernel's CPU time (its own and its children's): what the lecture
        # costs, whatever else the machine runs at the same time; removed before the copy is kept
        nb.cells.append(nbformat.v4.new_code_cell(CPU_PROBE))
        started = time.monotonic()
        NotebookClient(nb, timeout=EXECUTION_TIMEOUT_S, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        elapsed = time.monotonic() - started
        probe = nb.cells.pop()
        # the print may arrive as several stream chunks: join them before reading the number
        printed = "".join(o.get("text", "") for o in probe.outputs if o.get("output_type") == "stream").split()
        cpu = float(printed[-1]) if printed and printed[-1][0].isdigit() else float("nan")
        nb.metadata["course"] = {"executed_in_s": round(elapsed, 1), "cpu_s": round(cpu, 1)}
        for stale in cache.glob(f"{name}-*.ipynb"):
            stale.unlink()
        nbformat.write(nb, target)
        return nb, elapsed


def student_view(nb):
    """The release's version of an executed lecture: nbgrader's solution regions and hidden
    tests removed (as ``release.student_notebook`` does), and the outputs of every quiz cell
    cleared, since a quiz answer's output would give the answer away."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions

    resources = {}
    for preprocessor in (ClearSolutions(), ClearHiddenTests()):
        nb, resources = preprocessor.preprocess(nb, resources)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.metadata.get("nbgrader"):
            cell.outputs, cell.execution_count = [], None
    return nb


# ---------------------------------------------------------------------------------------
# pages
# ---------------------------------------------------------------------------------------
TEXT = {
    "en": dict(
        home="Transformer internals: a graded course", lectures="Lectures", exercises="Exercises",
        reference="Reference", api="API reference", glossary="Glossary", adequacy="How well the grader checks",
        other="한국어로 읽기", task="The task", prepares="Prepared by lecture", needs="Needs",
        nothing="nothing else", grading="How it is graded", public="Public checks",
        graded_by=("`python3 course.py grade` runs the public checks below; the staff grade with a "
                   "hidden suite on other inputs ({points} points), which names the known mistakes it "
                   "recognises."),
        untranslated="This lecture has no Korean edition yet.",
        intro=("Lectures with their outputs, the exercises and the API they implement. Clone the "
               "student release to do the exercises: `python3 course.py grade` gives named feedback.")),
    "ko": dict(
        home="트랜스포머 내부 구조: 채점되는 강의", lectures="강의", exercises="연습 문제",
        reference="참고 자료", api="API 명세", glossary="용어집", adequacy="채점기가 얼마나 잘 검사하는가",
        other="Read in English", task="과제", prepares="준비 강의", needs="먼저 끝낼 연습 문제",
        nothing="없음", grading="채점 방식", public="공개 검사",
        graded_by=("`python3 course.py grade`는 아래 공개 검사를 실행합니다. 최종 채점은 다른 입력을 쓰는 "
                   "비공개 검사 묶음({points}점)으로 하며, 알려진 실수는 이름을 붙여 알려 줍니다."),
        untranslated="이 강의의 한국어판은 아직 없습니다.",
        intro=("실행 결과가 담긴 강의, 연습 문제, 그리고 연습 문제가 구현하는 API입니다. 연습 문제를 풀려면 "
               "학생용 배포본을 받아 `python3 course.py grade`로 피드백을 받으세요.")),
}


def _lecture_title(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return "lecture"


def _switch_cell(nb, lang: str, stem: str):
    """A first cell linking to the same lecture in the other language (a document link that
    Sphinx resolves, so a missing target fails the build's link check)."""
    import nbformat

    other = "ko" if lang == "en" else "en"
    link = f"[{TEXT[lang]['other']}](../../{other}/lectures/{stem}.ipynb)"
    cell = nbformat.v4.new_markdown_cell(f"<div class=\"language-switch\">\n\n{link}\n\n</div>")
    nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0, cell)
    return nb


def _public_checks(name: str, release: Path) -> list[str]:
    path = release / "exercises" / "checks" / f"test_{name}.py"
    if not path.exists():
        return []
    tree = ast.parse(path.read_text())
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


def _api_items(skeleton: Path) -> tuple[str, list[tuple[str, str]]]:
    """(module docstring, [(signature, docstring)]) of the skeleton's public names."""
    tree = ast.parse(skeleton.read_text())
    items = []

    def signature(node, prefix=""):
        if isinstance(node, ast.ClassDef):
            return f"class {prefix}{node.name}"
        return f"{prefix}{node.name}({ast.unparse(node.args)})" + (f" -> {ast.unparse(node.returns)}" if node.returns else "")

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            items.append((signature(node), ast.get_docstring(node) or ""))
            if isinstance(node, ast.ClassDef):
                for child in node.body:
                    if isinstance(child, ast.FunctionDef) and (not child.name.startswith("_") or child.name == "__init__"):
                        items.append((signature(child, f"{node.name}."), ast.get_docstring(child) or ""))
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
            items.append((ast.unparse(node), ""))
    return ast.get_docstring(tree) or "", items


def _hidden_points(name: str) -> float:
    from .adequacy import suite_tests

    try:
        return sum(t.max_points for t in suite_tests(name))
    except FileNotFoundError:  # an exercise whose hidden suite is not written yet
        return 0.0


def exercise_page(exercise, lang: str, release: Path) -> str:
    t = TEXT[lang]
    skeleton = release / "exercises" / f"{exercise.name}.py"
    doc, items = _api_items(skeleton)
    lines = [f"# {exercise.name}", "", f"[{t['other']}](../../{'ko' if lang == 'en' else 'en'}/exercises/{exercise.name}.md)", "",
             f"**{t['prepares']}:** [{exercise.lecture}](../lectures/{exercise.lecture}.ipynb)  ",
             f"**{t['needs']}:** " + (", ".join(f"[{n}]({n}.md)" for n in exercise.needs) or t["nothing"]), "",
             f"## {t['task']}", "", f"File: `exercises/{exercise.name}.py`", "", doc, ""]
    for sig, docstring in items:
        lines += [f"### `{sig}`", "", docstring, ""]
    lines += [f"## {t['grading']}", "", t["graded_by"].format(points=f"{_hidden_points(exercise.name):g}"), ""]
    checks = _public_checks(exercise.name, release)
    if checks:
        lines += [f"### {t['public']}", "", *[f"- `{c}`" for c in checks], ""]
    return "\n".join(lines)


def language_index(lang: str, lectures: list[tuple[str, str]], exercises: list[str]) -> str:
    t = TEXT[lang]
    other = "ko" if lang == "en" else "en"
    return "\n".join([
        f"# {t['home']}", "", f"[{t['other']}](../{other}/index.md)", "", t["intro"], "",
        "```{toctree}", f":caption: {t['lectures']}", ":maxdepth: 1", "",
        *[f"lectures/{stem}" for stem, _ in lectures], "```", "",
        "```{toctree}", f":caption: {t['exercises']}", ":maxdepth: 1", "",
        *[f"exercises/{name}" for name in exercises], "```", "",
        "```{toctree}", f":caption: {t['reference']}", ":maxdepth: 1", "",
        "api", "glossary", "adequacy", "```", ""])


def adequacy_markdown() -> str:
    """The adequacy report's table (counts per exercise; no test names)."""
    from . import adequacy

    from .exercises import course_order

    reports = adequacy.analyse_all(course_order(adequacy.exercises()))
    header = ("| exercise | tests | points | mutants caught | variants | rules | rules enforced | untestable |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [f"| {r.exercise} | {len(r.tests)} | {r.max_points:g} | {len(r.caught)}/{len(r.mutants)} | "
            f"{len(r.variants)} | {len(r.rules)} | {len([x for x in r.rules if r.rule_mutants(x)])} | "
            f"{len(r.untestable_rules)} |" for r in reports]
    return "\n".join([header, *rows])


CONF = """\
project = "Transformer internals"
author = "the course authors"
extensions = ["myst_nb", "autograder.sphinx_mathml"]
html_theme = "sphinx_book_theme"
html_title = "Transformer internals"
html_static_path = ["_static"]
html_css_files = ["course.css"]
# formulas become MathML when the site is built (autograder/sphinx_mathml.py): no MathJax, no script
html_math_renderer = "mathml"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # executed beforehand, by content (autograder.website.execute_lecture)
nb_merge_streams = True
exclude_patterns = ["_build"]
suppress_warnings = ["myst.header"]
html_theme_options = {"show_toc_level": 2, "use_download_button": False, "search_bar_text": "Search"}
html_context = {"default_mode": "light"}
html_favicon = "_static/favicon.png"  # else every browser asks for /favicon.ico and logs a 404  # else the theme logs "invalid theme mode" on a first visit
"""

CSS = """\
.language-switch { float: right; font-weight: 600; }
/* Korean text: the CJK font the setup installs (Debian's fonts-nanum) before the generic family */
:root { --pst-font-family-base: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
        "NanumGothic", "Noto Sans CJK KR", sans-serif; }
"""


def _favicon() -> bytes:
    """A 16x16 PNG (one colour), written by hand: no image file to keep in the repository."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes((32, 96, 160)) * 16 for _ in range(16))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def stage(source: Path, release: Path, log=print) -> None:
    """Write the Sphinx project into ``source`` from the release and executed lectures."""
    import nbformat

    (source / "_static").mkdir(parents=True)
    (source / "conf.py").write_text(CONF)
    (source / "_static" / "course.css").write_text(CSS)
    (source / "_static" / "favicon.png").write_bytes(_favicon())
    english = sorted((ROOT / "lectures").glob("*.ipynb"))
    lectures = []
    for path in english:
        korean = ROOT / "lectures" / "ko" / path.name
        title = None
        for lang, original in (("en", path), ("ko", korean)):
            target = source / lang / "lectures" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if original.exists():
                nb, seconds = execute_lecture(original)
                log(f"  {lang}/{path.stem}: " + (f"executed in {seconds:.0f} s" if seconds else "from the cache"))
                nb = student_view(nb)
            else:  # a page that says so, keeping the switch's target in place
                nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
                    f"# {title or path.stem}\n\n{TEXT[lang]['untranslated']}")])
            title = title or _lecture_title(nb)
            nbformat.write(_switch_cell(nb, lang, path.stem), target)
        lectures.append((path.stem, title))
    exercises = [e for e in COURSE if (release / "exercises" / f"{e.name}.py").exists()]
    adequacy_table = adequacy_markdown()
    for lang in LANGUAGES:
        folder = source / lang
        (folder / "exercises").mkdir(parents=True, exist_ok=True)
        for exercise in exercises:
            (folder / "exercises" / f"{exercise.name}.md").write_text(exercise_page(exercise, lang, release))
        (folder / "index.md").write_text(language_index(lang, lectures, [e.name for e in exercises]))
        (folder / "api.md").write_text((ROOT / "docs" / "API.md").read_text())
        (folder / "glossary.md").write_text((ROOT / "docs" / "GLOSSARY.md").read_text())
        (folder / "adequacy.md").write_text(f"# {TEXT[lang]['adequacy']}\n\n{adequacy_table}\n")
    (source / "index.md").write_text("\n".join([
        "# Transformer internals / 트랜스포머 내부 구조", "",
        "- [English](en/index.md)", "- [한국어](ko/index.md)", "",
        "```{toctree}", ":hidden:", "", "en/index", "ko/index", "```", ""]))


class _Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def site_leaks(out: Path) -> list[str]:
    """The release's leak check over the text of every built page (tags stripped: code is
    split into highlighted spans there)."""
    from .release import leak_check

    with tempfile.TemporaryDirectory(prefix="course-site-text-") as tmp:
        for page in Path(out).rglob("*.html"):
            parser = _Text()
            parser.feed(page.read_text(errors="replace"))
            mirror = Path(tmp) / page.relative_to(out).with_suffix(".txt")
            mirror.parent.mkdir(parents=True, exist_ok=True)
            mirror.write_text("".join(parser.parts))
        return [problem.replace(tmp, str(out)) for problem in leak_check(Path(tmp))]


def build(out: Path, release: Path | None = None, log=print) -> list[str]:
    """Build the site into ``out`` (created; must not hold anything else) from a student
    release (``release``: one already built; else one is built here); returns the leak
    report of the built pages (empty: clean). Raises RuntimeError when Sphinx fails."""
    from .release import build as build_release
    from .release import leak_check

    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose a new or empty folder")
    with tempfile.TemporaryDirectory(prefix="course-site-") as tmp:
        if release is None:
            release = Path(tmp) / "release"
            release_leaks = build_release(release)
        else:
            release = Path(release).resolve()
            if not (release / "exercises").is_dir():
                raise FileExistsError(f"{release} is not a student release (no exercises/ folder)")
            release_leaks = leak_check(release)
        if release_leaks:
            raise RuntimeError("the student release leaks: " + "; ".join(release_leaks[:5]))
        source = Path(tmp) / "source"
        log("executing lectures (cached by content) ...")
        stage(source, release, log=log)
        log("rendering pages with Sphinx ...")
        proc = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-n", "-j", "1",
                               str(source), str(out)], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})  # the math extension
        warnings = [w for w in proc.stderr.splitlines() if "WARNING" in w or "ERROR" in w]
        if proc.returncode != 0:
            raise RuntimeError("Sphinx failed:\n" + proc.stderr[-4000:])
        if warnings:
            log(f"{len(warnings)} Sphinx warnings:\n" + "\n".join(warnings[:20]))
    (out / ".nojekyll").write_text("")  # GitHub Pages: serve _static/ as it is
    return site_leaks(out)


def main(out: str, release: str | None = None) -> int:
    try:
        leaks = build(Path(out), Path(release) if release else None)
    except (FileExistsError, RuntimeError) as exc:
        print(f"site: {exc}", file=sys.stderr)
        return 1
    if leaks:
        print("the built site leaks:\n" + "\n".join(leaks[:20]), file=sys.stderr)
        return 1
    print(f"wrote the site into {out} (open {Path(out) / 'index.html'})")
    return 0
