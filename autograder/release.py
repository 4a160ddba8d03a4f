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
          "runner.py", "worker_parent.py", "isolation.py", "worker_child.py", "skeleton.py", "release.py", "classroom.py",
          "intake.py", "text.py", "replies.py", "static.py", "public.py", "catalogue.py"]
TEMPLATES = ROOT / "autograder" / "templates"
DOCS = ["API.md", "GLOSSARY.md"]  # the contract and the glossary: lectures and skeletons point to them
# nbgrader's instructor tools, off in the student's JupyterLab (the Validate button stays)
INSTRUCTOR_LAB_PLUGINS = ["@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment",
                          "@jupyter/nbgrader:course-list", "@jupyter/nbgrader:assignment-list",
                          "@jupyter/nbgrader:menu"]
INSTRUCTOR_SERVER_EXTENSIONS = ["nbgrader.server_extensions.formgrader", "nbgrader.server_extensions.course_list",
                                "nbgrader.server_extensions.assignment_list"]


def build(out: Path) -> list[str]:
    """Write the release into ``out`` (which must not exist) and return the leak report."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new folder")
    out.mkdir(parents=True)
    (out / "README.md").write_text(student_readme())
    (out / "requirements.txt").write_text(student_requirements())  # what students run, no more
    for name in ("course.py", "pytest.ini", ".gitignore"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, out / name)
    (out / "docs").mkdir()
    for name in DOCS:
        shutil.copy(ROOT / "docs" / name, out / "docs" / name)
    if (ROOT / "docs" / "ko").exists():  # the exercises' task statements in Korean
        shutil.copytree(ROOT / "docs" / "ko", out / "docs" / "ko")
    shutil.copytree(ROOT / "exercises", out / "exercises",
                    ignore=shutil.ignore_patterns("__pycache__", "reference.pt"))
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
        "the public suites in exercises/checks instead, by the same engine.\n")
    write_jupyter_config(out / ".jupyter")
    record_reference(out / "exercises" / "checks" / "reference.pt")
    write_catalogue(out / "autograder" / "catalogue_ko.toml", out / "exercises" / "checks" / "reference.pt")
    workflow = out / ".github" / "workflows"
    workflow.mkdir(parents=True)
    (workflow / "classroom.yml").write_text(classroom_workflow())
    (out / "lectures" / "ko").mkdir(parents=True)
    for notebook in sorted((ROOT / "lectures").glob("*.ipynb")):
        student_notebook(notebook, out / "lectures" / notebook.name)
    for notebook in sorted((ROOT / "lectures" / "ko").glob("*.ipynb")):  # the Korean edition
        student_notebook(notebook, out / "lectures" / "ko" / notebook.name, docs="../../docs")
    if (ROOT / "data").exists():  # the corpus lecture 05 trains on, with its licence
        shutil.copytree(ROOT / "data", out / "data", ignore=shutil.ignore_patterns("__pycache__"))
    if (TEMPLATES / "STUDENT_README.ko.md").exists():  # the same README in Korean
        (out / "README.ko.md").write_text(student_readme("STUDENT_README.ko.md"))
    return leak_check(out)


def pins() -> dict[str, str]:
    """Package -> its exact requirement in the course's requirements.txt, as course.py reads
    it (the stdlib bootstrap, a file rather than a module of this package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("course_bootstrap", ROOT / "course.py")
    course = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(course)
    return course.pins()


def student_requirements() -> str:
    """The release's requirements.txt: the template, each bare package name that the course
    pins exactly (torch, triton) given the course's pin."""
    pinned, lines = pins(), []
    for line in (TEMPLATES / "requirements.txt").read_text().splitlines():
        name = line.split("#")[0].strip()
        if name in pinned:
            line = pinned[name] + line[len(line.split("#")[0].rstrip()):]
        elif name and not any(op in name for op in "=<>"):
            raise ValueError(f"autograder/templates/requirements.txt: {name!r} has no version and the course's "
                             "requirements.txt does not pin it exactly")
        lines.append(line)
    return "\n".join(lines) + "\n"


def student_readme(template: str = "STUDENT_README.md") -> str:
    """The student README: the template with the course order (autograder/exercises.py)."""
    from .exercises import COURSE

    korean = template.endswith(".ko.md")
    rows = ["| # | 연습 | 준비 강의 | 선수 연습 |" if korean else "| # | exercise | lecture that prepares it | needs |",
            "|---|---|---|---|"]
    lectures = "lectures/ko" if korean else "lectures"
    for number, exercise in enumerate(COURSE, start=1):
        if not (ROOT / "solutions" / f"{exercise.name}.py").exists():
            continue  # listed in the course, not yet written
        needs = ", ".join(f"`{n}`" for n in exercise.needs) or "-"
        rows.append(f"| {number} | `exercises/{exercise.name}.py` | `{lectures}/{exercise.lecture}.ipynb` | {needs} |")
    text = (TEMPLATES / template).read_text()
    if "<!-- COURSE ORDER -->" not in text:
        raise ValueError("the student README template has no <!-- COURSE ORDER --> line to fill in")
    return text.replace("<!-- COURSE ORDER -->", "\n".join(rows))


def _strings(value, found: set[str]) -> set[str]:
    if isinstance(value, str):
        found.add(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _strings(key, found)
            _strings(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _strings(item, found)
    return found


def write_catalogue(path: Path, recorded: Path) -> None:
    """The Korean catalogue as the release ships it: every template, and only the mistake
    sentences its public checks can show (those in the recorded reference values). The whole
    catalogue holds every known mistake, and some state the reference's formula."""
    import torch

    from .catalogue import release_text

    strings = _strings(torch.load(recorded, weights_only=True), set())
    shown = " ".join(strings)
    path.write_text(release_text(lambda en: en in shown))


def record_reference(path: Path) -> None:
    """Grade the reference with the public suites once, recording every value they ask the
    reference and the known mistakes for (``autograder/public.py``), and write them to
    ``path``: the release's public suites read them instead of solutions/ and mistakes/."""
    from . import public
    from .runner import grade

    recorder = public.start_recording()
    try:
        report = grade(ROOT / "solutions", public=True)
    finally:
        public.stop_recording()
    failed = [f"{r.exercise}/{r.name}: {r.message}" for r in report.results if r.status != "passed"]
    if failed:
        raise RuntimeError("the reference fails its own public checks:\n  " + "\n  ".join(failed[:10]))
    public.write_data(path, recorder.values)


def write_jupyter_config(folder: Path) -> None:
    """The student's Jupyter configuration directory (``python3 course.py lab`` makes it
    JUPYTER_CONFIG_DIR): nbgrader's formgrader, create-assignment, course and assignment
    lists off, in JupyterLab and in the server; the Validate button stays."""
    import json

    (folder / "labconfig").mkdir(parents=True)
    (folder / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {name: True for name in INSTRUCTOR_LAB_PLUGINS}}, indent=2) + "\n")
    (folder / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {name: False for name in INSTRUCTOR_SERVER_EXTENSIONS}}},
        indent=2) + "\n")


def classroom_workflow(checks: dict[str, list[tuple[str, float]]] | None = None) -> str:
    """The GitHub Classroom workflow: the template with one command-grader step per public
    test (its points, its command exits 0 only if the test passed), so that the points
    Classroom adds up are the public grade (``runner.grade_public``)."""
    import json

    from .runner import public_check_ids

    checks = checks if checks is not None else public_check_ids()
    steps, env, runners = [], [], []
    for exercise in checks:
        for name, points in checks[exercise]:
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
                         f"          max-score: {points:g}\n")
            env.append(f"          {runner.upper()}_RESULTS: \"${{{{ steps.{runner}.outputs.result }}}}\"\n")
            runners.append(runner)
    text = (ROOT / "autograder" / "templates" / "classroom.yml").read_text()
    for marker, value in (("      # CHECK STEPS\n", "".join(steps)), ("          # RESULTS ENV\n", "".join(env)),
                          ("# RUNNERS", ",".join(runners))):
        if marker not in text:
            raise ValueError(f"the workflow template has no {marker.strip()!r} line to fill in")
        text = text.replace(marker, value)
    return text


def student_notebook(source: Path, target: Path, docs: str = "../docs") -> None:
    """The lecture without quiz solutions, hidden tests and outputs (nbgrader's preprocessors)."""
    import nbformat
    from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions

    nb = nbformat.read(source, as_version=4)
    resources = {}
    for preprocessor in (ClearSolutions(), ClearHiddenTests(), ClearOutput()):
        nb, resources = preprocessor.preprocess(nb, resources)
    # cells tagged "instructor-only" and comment lines "# instructor: ..." are the staff's notes
    nb.cells = [cell for cell in nb.cells if "instructor-only" not in cell.metadata.get("tags", [])]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = "\n".join(line for line in cell.source.splitlines()
                                    if not re.match(r"\s*#\s*instructor\s*:", line, flags=re.I))
        if cell.cell_type == "markdown":  # "see `API.md`": a link to the release's copy
            cell.source = re.sub(r"(?<!\[)`(API|GLOSSARY)\.md`", rf"[`docs/\1.md`]({docs}/\1.md)", cell.source)
    nbformat.write(nb, target)


def _solution_lines(root: Path) -> dict[str, str]:
    """Distinctive lines of every marked solution body -> where they come from. A line the API
    reference itself states (docs/API.md fixes ``get_batch``'s exact randint call) is public."""
    api = root / "docs" / "API.md"
    public = " ".join(api.read_text().split()) if api.exists() else ""
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
                # an import names a dependency the course states anyway (README, skeleton headers)
                if len(code) >= 24 and not code.startswith(("return x", "raise ", "if ", "else", "for ", "from ",
                                                           "import ")) \
                        and " ".join(code.split()) not in public:
                    lines[code] = f"solutions/{path.name}:{number}"
    return lines


def _hidden_test_names(root: Path) -> set[str]:
    names = set()
    for path in (root / "autograder" / "suites").glob("test_*.py"):
        names.update(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
    return names


def _leaks(line: str, text: str, normalised: str) -> bool:
    """``line`` (solution code) occurs in ``text`` as code of its own: not inside a longer name,
    not as a signature (``def f(a, b):`` contains the call ``f(a, b)``, and signatures are
    the API students get)."""
    for haystack, needle in ((text, line), (normalised, " ".join(line.split()))):
        for match in re.finditer(re.escape(needle), haystack):
            before = haystack[max(0, match.start() - 4):match.start()]
            after = haystack[match.end():match.end() + 1]
            inside_a_name = before[-1:].isalnum() or before[-1:] in ("_", ".") or after.isalnum() or after == "_"
            if before.endswith("def ") or inside_a_name:
                continue
            return True
    return False


def leak_check(tree: Path, root: Path = ROOT) -> list[str]:
    """Every place in ``tree`` where a solution body or a hidden test appears (empty: clean).
    The contract (docs/API.md, a copy of the course's own) may state a formula the reference
    writes word for word: it is public by definition, so it is not searched for solution code."""
    tree = Path(tree)
    problems = []
    for forbidden in ("solutions", "autograder/mistakes", "autograder/bench.py"):
        if (tree / forbidden).exists():
            problems.append(f"{forbidden} is in the release")
    for suite in (tree / "autograder" / "suites").glob("test_*.py") if (tree / "autograder" / "suites").exists() else []:
        problems.append(f"hidden suite {suite.relative_to(tree)} is in the release")
    solution_lines = _solution_lines(root)
    hidden_tests = _hidden_test_names(root)
    contract = (root / "docs" / "API.md").read_bytes() if (root / "docs" / "API.md").exists() else None
    for path in sorted(p for p in tree.rglob("*") if p.is_file() and p.suffix in (".py", ".ipynb", ".md", ".txt", ".json", ".yml", ".toml")):
        text = path.read_text(errors="replace")
        normalised = " ".join(text.split())
        is_contract = contract is not None and path.read_bytes() == contract
        for line, origin in ({} if is_contract else solution_lines).items():
            if _leaks(line, text, normalised):
                problems.append(f"{path.relative_to(tree)} contains solution code from {origin}: {line[:60]}")
        for name in hidden_tests:
            if re.search(rf"\b{name}\b", text):
                problems.append(f"{path.relative_to(tree)} names the hidden test {name}")
    return problems
