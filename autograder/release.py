"""The student release: what students get, and a check that nothing of the answers leaks.

``python -m autograder release OUT_DIR`` writes a tree with the student README, the
lectures with their quiz solutions and hidden tests removed (nbgrader's own preprocessors),
``exercises/`` (skeletons and public checks), the requirements, ``course.py`` and the
grading engine without its hidden suites. Without hidden suites the grade command grades
the public checks (``runner.grade_public``). No ``solutions/``, no ``autograder/suites``,
no known-mistake computations (``autograder/mistakes/`` computes reference values).
``leak_check`` fails when any solution body or hidden test shows up in a tree.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from .skeleton import BEGIN, END

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ["__init__.py", "__main__.py", "adapters", "exercises.py", "cli.py", "compare.py", "inputs.py", "report.py",
          "runner.py", "sandbox.py", "isolation.py", "worker.py", "skeleton.py", "release.py", "classroom.py",
          "intake.py", "text.py", "replies.py", "static.py"]


def build(out: Path) -> list[str]:
    """Write the release into ``out`` (which must not exist) and return the leak report."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new folder")
    out.mkdir(parents=True)
    shutil.copy(ROOT / "autograder" / "templates" / "STUDENT_README.md", out / "README.md")
    for name in ("course.py", "requirements.txt", "pytest.ini", ".gitignore"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, out / name)
    shutil.copytree(ROOT / "exercises", out / "exercises", ignore=shutil.ignore_patterns("__pycache__"))
    (out / "autograder").mkdir()
    for name in ENGINE:
        source = ROOT / "autograder" / name
        if source.is_dir():  # a package: the adapters, shared helpers plus one module per exercise
            shutil.copytree(source, out / "autograder" / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy(source, out / "autograder" / name)
    (out / "autograder" / "suites").mkdir()
    (out / "autograder" / "suites" / "README.md").write_text(
        "The hidden suites are not part of the student release: `python3 course.py grade` grades\n"
        "the public checks in exercises/checks instead.\n")
    workflow = out / ".github" / "workflows"
    workflow.mkdir(parents=True)
    (workflow / "classroom.yml").write_text(classroom_workflow())
    (out / "lectures").mkdir()
    for notebook in sorted((ROOT / "lectures").glob("*.ipynb")):
        student_notebook(notebook, out / "lectures" / notebook.name)
    return leak_check(out)


def classroom_workflow(checks: dict[str, list[str]] | None = None) -> str:
    """The GitHub Classroom workflow: the template with one command-grader step per public
    check (1 point, its command exits 0 only if the check passed), so that the points
    Classroom adds up are the public grade (``runner.grade_public``: one point per check)."""
    import json

    from .runner import public_check_ids

    checks = checks if checks is not None else public_check_ids()
    steps, env, runners = [], [], []
    for file in sorted(checks):
        exercise = Path(file).stem.removeprefix("test_")
        for name in checks[file]:
            runner = f"check{len(runners) + 1:02d}"
            check = f"{exercise}/{name}"
            # json.dumps: a double-quoted YAML scalar (check names hold brackets)
            steps.append(f"      - id: {runner}\n"
                         f"        name: {json.dumps('Check ' + check)}\n"
                         f"        uses: classroom-resources/autograding-command-grader@v1\n"
                         f"        with:\n"
                         f"          test-name: {json.dumps(check)}\n"
                         f"          setup-command: \"\"\n"
                         f"          command: {json.dumps(f'python -m autograder classroom-score report.json --check {json.dumps(check)}')}\n"
                         f"          timeout: 1\n"
                         f"          max-score: 1\n")
            env.append(f"          {runner.upper()}_RESULTS: \"${{{{ steps.{runner}.outputs.result }}}}\"\n")
            runners.append(runner)
    text = (ROOT / "autograder" / "templates" / "classroom.yml").read_text()
    for marker, value in (("      # CHECK STEPS\n", "".join(steps)), ("          # RESULTS ENV\n", "".join(env)),
                          ("# RUNNERS", ",".join(runners))):
        if marker not in text:
            raise ValueError(f"the workflow template has no {marker.strip()!r} line to fill in")
        text = text.replace(marker, value)
    return text


def student_notebook(source: Path, target: Path) -> None:
    """The lecture without quiz solutions, hidden tests and outputs (nbgrader's preprocessors)."""
    import nbformat
    from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions

    nb = nbformat.read(source, as_version=4)
    resources = {}
    for preprocessor in (ClearSolutions(), ClearHiddenTests(), ClearOutput()):
        nb, resources = preprocessor.preprocess(nb, resources)
    nbformat.write(nb, target)


def _solution_lines(root: Path) -> dict[str, str]:
    """Distinctive lines of every marked solution body -> where they come from."""
    lines = {}
    for path in sorted((root / "solutions").glob("*.py")):
        inside = False
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if BEGIN.match(line):
                inside = True
            elif END.match(line):
                inside = False
            elif inside:
                code = line.split("#")[0].strip()
                if len(code) >= 24 and not code.startswith(("return x", "raise ", "if ", "else", "for ")):
                    lines[code] = f"solutions/{path.name}:{number}"
    return lines


def _hidden_test_names(root: Path) -> set[str]:
    names = set()
    for path in (root / "autograder" / "suites").glob("test_*.py"):
        names.update(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
    return names


def leak_check(tree: Path, root: Path = ROOT) -> list[str]:
    """Every place in ``tree`` where a solution body or a hidden test appears (empty: clean)."""
    tree = Path(tree)
    problems = []
    for forbidden in ("solutions", "autograder/mistakes", "autograder/bench.py"):
        if (tree / forbidden).exists():
            problems.append(f"{forbidden} is in the release")
    for suite in (tree / "autograder" / "suites").glob("test_*.py") if (tree / "autograder" / "suites").exists() else []:
        problems.append(f"hidden suite {suite.relative_to(tree)} is in the release")
    solution_lines = _solution_lines(root)
    hidden_tests = _hidden_test_names(root)
    for path in sorted(p for p in tree.rglob("*") if p.is_file() and p.suffix in (".py", ".ipynb", ".md", ".txt", ".json", ".yml")):
        text = path.read_text(errors="replace")
        normalised = " ".join(text.split())
        for line, origin in solution_lines.items():
            if line in text or " ".join(line.split()) in normalised:
                problems.append(f"{path.relative_to(tree)} contains solution code from {origin}: {line[:60]}")
        for name in hidden_tests:
            if re.search(rf"\b{name}\b", text):
                problems.append(f"{path.relative_to(tree)} names the hidden test {name}")
    return problems
