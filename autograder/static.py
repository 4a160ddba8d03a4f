"""Static checks of a submission's source, made in the grader (never in the worker).

A ban enforced at run time ("torch.softmax raises while your softmax runs") lives inside
the worker, next to the student's code, which can capture the real function before the
ban is installed or reach it by another name (``torch.ops.aten._softmax``,
``torch.special.softmax``, ``getattr(torch, "soft" + "max")``). So the grader reads the
source instead: from the exercise's entry point (a function, a class, or a method) it
follows every name the code can reach in its own module (module-level functions, classes,
aliases, imports, other submission modules imported relatively) and reports

- any attribute or imported name that matches a banned pattern (``softmax``,
  ``layer_norm``, ``cat``, ...), whatever object it is taken from;
- any dynamic lookup that could hide one (``getattr``, ``eval``, ``__import__``,
  ``importlib``, ``__dict__``, ``torch.ops``, ``torch._C``, ...).

The runtime ban stays in the worker as a second line.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# names and attributes through which any function can be reached without naming it
DYNAMIC_NAMES = {"getattr", "setattr", "delattr", "eval", "exec", "compile", "__import__", "globals",
                 "locals", "vars", "importlib", "operator", "builtins", "__builtins__", "sys", "ctypes"}
DYNAMIC_ATTRS = {"ops", "_C", "_VF", "_ops", "_refs", "_prims", "_decomp", "__dict__", "__getattribute__",
                 "__getattr__", "__globals__", "__builtins__", "__subclasses__", "__import__", "import_module",
                 "attrgetter", "methodcaller", "modules", "_jit_internal", "library"}


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.what} ({self.file} line {self.line})"


class Source:
    """One parsed module of the submission, with its module-level names."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.file = f"{name}.py"
        self.tree = ast.parse(text, filename=self.file)
        self.defs: dict[str, list[ast.AST]] = {}  # name -> the statements that bind it
        for node in self.tree.body:
            for bound in _bound_names(node):
                self.defs.setdefault(bound, []).append(node)
        # methods of every class, by name: ``self.helper()`` may reach any of them
        self.methods: dict[str, list[ast.AST]] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.methods.setdefault(item.name, []).append(item)

    def entry(self, dotted: str) -> list[ast.AST]:
        """"softmax" -> its def; "LayerNorm" -> the class; "LayerKVCache.update" -> the method."""
        first, _, rest = dotted.partition(".")
        nodes = [n for n in self.defs.get(first, []) if isinstance(n, (ast.FunctionDef, ast.ClassDef,
                                                                      ast.AsyncFunctionDef))]
        if rest:
            nodes = [item for cls in nodes if isinstance(cls, ast.ClassDef) for item in cls.body
                     if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == rest]
        return nodes


def _bound_names(node: ast.AST) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):  # bindings inside blocks
        return [name for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)
                for name in _bound_names(child)]
    return []


def banned_uses(read: Callable[[str], str | None], module: str, entry: str, banned: list[str],
                *, reason: str) -> list[Finding]:
    """Findings for ``module.entry`` and everything it reaches.

    ``read(name)`` returns the source of the submission's ``name.py`` (None if it has none);
    ``banned``: regular expressions matched against every attribute and imported name
    (case-insensitive). ``reason`` goes into each finding's text.
    """
    patterns = [re.compile(p, re.IGNORECASE) for p in banned]
    sources: dict[str, Source | None] = {}

    def source(name: str) -> Source | None:
        if name not in sources:
            text = read(name)
            sources[name] = Source(name, text) if text is not None else None
        return sources[name]

    try:
        start = source(module)
    except (SyntaxError, ValueError):  # the worker reports the import error in the student's words
        return []
    if start is None:
        return []  # the worker reports the missing file
    roots = start.entry(entry)
    if not roots:
        return []  # the worker reports the missing name
    findings: list[Finding] = []
    seen: set[int] = set()
    todo: list[tuple[Source, ast.AST]] = [(start, node) for node in roots]
    while todo:
        src, node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for sub in ast.walk(node):
            found = _check_node(sub, patterns, reason)
            if found:
                findings.append(Finding(src.file, getattr(sub, "lineno", 0), found))
            name = sub.id if isinstance(sub, ast.Name) else sub.attr if isinstance(sub, ast.Attribute) else None
            if name is not None:
                todo += [(src, d) for d in src.defs.get(name, []) + src.methods.get(name, [])]
            if isinstance(sub, ast.ImportFrom) and sub.level >= 1 and sub.module:
                try:
                    other = source(sub.module.split(".")[0])  # a sibling file of the submission
                except (SyntaxError, ValueError):
                    other = None  # importing it fails in the worker, with the student's error
                if other is not None:
                    for alias in sub.names:
                        todo += [(other, d) for d in other.defs.get(alias.name, [])]
    return sorted(set(findings), key=lambda f: (f.file, f.line, f.what))


def _check_node(node: ast.AST, patterns, reason: str) -> str:
    if isinstance(node, ast.Attribute):
        if any(p.search(node.attr) for p in patterns):
            return f"uses {_dotted(node)}: {reason}"
        if node.attr in DYNAMIC_ATTRS:
            return f"uses {_dotted(node)}, which could reach a banned function by another name"
    elif isinstance(node, ast.Name):
        if node.id in DYNAMIC_NAMES:
            return f"uses {node.id}, which could reach a banned function by another name"
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
        for alias in node.names:
            full = f"{node.module or ''}.{alias.name}" if isinstance(node, ast.ImportFrom) else alias.name
            if any(p.search(part) for p in patterns for part in full.split(".")):
                return f"imports {full.lstrip('.')}: {reason}"
            if any(part in DYNAMIC_NAMES | DYNAMIC_ATTRS for part in full.split(".")):
                return f"imports {full.lstrip('.')}, which could reach a banned function by another name"
    return ""


def _dotted(node: ast.AST) -> str:
    try:
        return ast.unparse(node)[:80]
    except Exception:  # unparse cannot fail on a parsed tree; a short name is enough anyway
        return getattr(node, "attr", "?")


def reader(root: Path | None) -> Callable[[str], str | None]:
    """``read(name)`` over a folder of ``name.py`` files (the grader's staged copy)."""
    def read(name: str) -> str | None:
        if root is None or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            return None
        path = Path(root) / f"{name}.py"
        if path.is_symlink() or not path.is_file():
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    return read


def describe(findings: list[Finding], what: str, limit: int = 3) -> str:
    """One message for a failed check."""
    shown = "; ".join(str(f) for f in findings[:limit])
    more = f" (and {len(findings) - limit} more)" if len(findings) > limit else ""
    return f"{what} {shown}{more}"


# banned patterns per exercise rule (full names, case-insensitive)
SOFTMAX = [r"softmax", r"softmin"]
LAYER_NORM = [r"layer_?norm", r"group_?norm", r"batch_?norm", r"instance_?norm", r"^native_"]
CONCATENATION = [r"^(cat|cat_|concat|concatenate|stack|hstack|vstack|dstack|column_stack|row_stack|pad|"
                 r"resize_|resize|resize_as_|append|extend|insert)$"]


def assert_source_avoids(worker, module: str, entry: str, banned: list[str], reason: str) -> None:
    """Fail the current test when ``module.entry`` (or what it reaches) uses a banned name.
    Reads the grader's own staged copy of the submission, never the worker's."""
    path = worker.source_path(module)
    findings = banned_uses(reader(path.parent if path else None), module, entry, banned, reason=reason)
    assert not findings, describe(findings, f"{module}.{entry}")


# -- Triton kernels: the grader carries only the kernels into a worker of their own ----------
KERNEL_BUILTINS = {"tl", "triton", "math", "range", "min", "max", "abs", "float", "int", "bool", "len", "print",
                   "tuple", "list", "zip", "enumerate", "isinstance", "True", "False", "None"}
TRITON_IMPORTS = {"triton", "triton.language", "math"}


def _decorator_kind(node: ast.AST) -> str:
    """"jit", "autotune", "heuristics" or "" for a decorator expression."""
    target = node.func if isinstance(node, ast.Call) else node
    dotted = _dotted(target)
    return {"triton.jit": "jit", "triton.autotune": "autotune", "triton.heuristics": "heuristics"}.get(dotted, "")


def _is_constant(node: ast.AST, known: set[str]) -> bool:
    """Literals, arithmetic on them, math.* of them, tl.constexpr(...) and earlier constants."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id in known
    if isinstance(node, ast.UnaryOp):
        return _is_constant(node.operand, known)
    if isinstance(node, ast.BinOp):
        return _is_constant(node.left, known) and _is_constant(node.right, known)
    if isinstance(node, ast.Attribute):
        return _dotted(node).startswith("math.") and "__" not in node.attr
    if isinstance(node, ast.Call):
        name = _dotted(node.func)
        return (name == "tl.constexpr" or (name.startswith("math.") and "__" not in name)) and not node.keywords \
            and all(_is_constant(a, known) for a in node.args)
    return False


def _kernel_findings(fn: ast.FunctionDef, allowed: set[str]) -> list[Finding]:
    """What a kernel body may use: its arguments and locals, tl / triton / math, other kernels
    and the module's constants; no imports, no dunder attributes, nothing else."""
    local = {a.arg for a in fn.args.args + fn.args.kwonlyargs + fn.args.posonlyargs}
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            local.add(node.id)
        elif isinstance(node, ast.arg):
            local.add(node.arg)
    findings = []
    for node in ast.walk(fn):
        line = getattr(node, "lineno", fn.lineno)
        if isinstance(node, ast.Raise) and "NotImplementedError" in _dotted(node.exc or node):
            # the skeleton's body: say so, in the words the rest of the grader uses
            return [Finding("flash_attention_triton.py", line, f"not implemented: kernel {fn.name} still raises "
                                                               f"NotImplementedError")]
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal)):
            findings.append(Finding("flash_attention_triton.py", line, "a kernel may not import or use global names"))
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            findings.append(Finding("flash_attention_triton.py", line, f"a kernel may not assign {_dotted(node)}"))
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            findings.append(Finding("flash_attention_triton.py", line, f"a kernel may not use {_dotted(node)}"))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in local | allowed:
            findings.append(Finding("flash_attention_triton.py", line,
                                    f"kernel {fn.name} uses {node.id}, which is not Triton, its arguments or a "
                                    f"module constant (a kernel computes with tl.* only)"))
    for decorator in fn.decorator_list:
        if _decorator_kind(decorator) == "heuristics":
            findings.append(Finding("flash_attention_triton.py", decorator.lineno,
                                    "@triton.heuristics is not supported by the grader's launcher; compute the "
                                    "value on the host and pass it as a tl.constexpr argument"))
    return findings


def triton_kernels(text: str) -> tuple[str, list[Finding]]:
    """The module's @triton.jit kernels (autotune decorators dropped: the host's launch is
    recorded with its first config), the triton/math imports and the literal constants,
    as source the grader runs in a worker that imports nothing of the submission; and what
    in the kernels breaks the rules of ``_kernel_findings``."""
    tree = ast.parse(text, filename="flash_attention_triton.py")
    kept: list[ast.stmt] = []
    constants: set[str] = set()
    kernels: list[ast.FunctionDef] = []
    for node in tree.body:
        if isinstance(node, ast.Import) and all(a.name in TRITON_IMPORTS for a in node.names):
            kept.append(node)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in ("triton", "triton.language") \
                and all(f"{node.module}.{a.name}" in TRITON_IMPORTS for a in node.names):
            kept.append(node)
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets) \
                and _is_constant(node.value, constants):
            kept.append(node)
            constants |= {t.id for t in node.targets}
        elif isinstance(node, ast.FunctionDef) and any(_decorator_kind(d) for d in node.decorator_list):
            kernels.append(node)
    names = {k.name for k in kernels}
    allowed = KERNEL_BUILTINS | constants | names
    findings = [f for k in kernels for f in _kernel_findings(k, allowed)]
    for kernel in kernels:
        kernel.decorator_list = [d for d in kernel.decorator_list if _decorator_kind(d) == "jit"]
        for decorator in kernel.decorator_list:  # triton.jit(...) keeps only literal options
            if isinstance(decorator, ast.Call) and not all(isinstance(k.value, (ast.Constant, ast.List, ast.Tuple))
                                                           for k in decorator.keywords):
                findings.append(Finding("flash_attention_triton.py", decorator.lineno,
                                        "triton.jit's options must be literals"))
        kept.append(kernel)
    module = ast.Module(body=kept, type_ignores=[])
    return ast.unparse(ast.fix_missing_locations(module)), findings
