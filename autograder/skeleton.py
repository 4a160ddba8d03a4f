"""Generate ``exercises/`` from ``solutions/``: one source of truth for both.

In a solution file, the code a student writes sits between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` lines (nbgrader's markers). The skeleton keeps everything else --
module docstring, imports, signatures, docstrings, validation -- and replaces each marked
block by ``raise NotImplementedError("<function>: ...")`` at the block's indentation.
``python -m autograder skeletons --check`` fails when the committed skeletons differ.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
HEADER = ("# Exercise file: replace each `raise NotImplementedError` with your code.\n"
          "# Check your work: `python3 course.py grade` (the public checks; the course staff grade with more).\n")


def header(name: str) -> str:
    """The skeleton's first lines: where the exercise sits in the course (autograder/exercises.py),
    the lecture that prepares it, the exercises it needs, and how to check it."""
    from .exercises import BY_NAME, NAMES

    exercise = BY_NAME.get(name)
    if exercise is None:  # a file the course list does not know (a helper module)
        return HEADER
    needs = (", ".join(f"{n} (exercises/{n}.py)" for n in exercise.needs) + ": finish "
             + ("it" if len(exercise.needs) == 1 else "them") + " first") if exercise.needs else "no other exercise"
    import textwrap

    prepared = textwrap.fill(f"Prepared by lectures/{exercise.lecture}.ipynb. Needs {needs}.", width=98,
                             initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)
    return (f"# Exercise {NAMES.index(name) + 1} of {len(NAMES)}: {name}. Replace each `raise NotImplementedError` "
            f"with your code.\n{prepared}\n"
            f"# The contract (shapes, conventions, precision): docs/API.md.\n"
            f"# Check it: `python3 course.py grade --exercise {name}` (one function: add `-k NAME`; whole\n"
            f"# messages: `-v`). Those are the public checks; the course staff grade with more inputs.\n")


def _enclosing_functions(source: str) -> dict[int, str]:
    """Line number -> qualified name of the innermost function containing it."""
    names: dict[int, str] = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    for line in range(child.lineno, child.end_lineno + 1):
                        names[line] = qualname
                visit(child, qualname + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return names


def make_skeleton(source: str, filename: str) -> str:
    functions = _enclosing_functions(source)
    lines = source.splitlines(keepends=True)
    out, inside = [], False
    for number, line in enumerate(lines, start=1):
        begin = BEGIN.match(line)
        if begin:
            if inside:
                raise ValueError(f"{filename}:{number}: nested BEGIN SOLUTION")
            inside = True
            name = functions.get(number)
            if name is None:
                raise ValueError(f"{filename}:{number}: BEGIN SOLUTION outside a function")
            out.append(f'{begin.group(1)}raise NotImplementedError("{name}: '
                       f'write this part (see the docstring)")\n')
        elif END.match(line):
            if not inside:
                raise ValueError(f"{filename}:{number}: END SOLUTION without BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{filename}: BEGIN SOLUTION without END")
    return header(Path(filename).stem) + "".join(out)


def expected_skeletons(solutions: Path = ROOT / "solutions") -> dict[str, str]:
    """File name -> skeleton text, for every solution file with markers."""
    files = {}
    for path in sorted(solutions.glob("*.py")):
        source = path.read_text()
        if "### BEGIN SOLUTION" in source:
            files[path.name] = make_skeleton(source, str(path))
    return files


def write(exercises: Path = ROOT / "exercises") -> list[str]:
    exercises.mkdir(exist_ok=True)
    written = []
    for name, text in expected_skeletons().items():
        target = exercises / name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
            written.append(name)
    return written


def check(exercises: Path = ROOT / "exercises") -> list[str]:
    """Names of skeleton files that are missing or differ from what ``write`` produces."""
    return [name for name, text in expected_skeletons().items()
            if not (exercises / name).exists() or (exercises / name).read_text() != text]
