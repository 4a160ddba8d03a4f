"""The student release works as its README says: `grade` is a feedback loop (the same table
and named mistakes as the staff's, coverage, --exercise, -k, -v, file and line of a broken
import, a hint in course order), the lectures point to files that exist, JupyterLab shows no
instructor tools, the staff's commands say what they are, the install is light and its CPU
index optional, and each skeleton says what it needs."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import nbformat
import pytest

from autograder import skeleton
from autograder.exercises import BY_NAME, COURSE
from tests.conftest import ROOT, cli


def course_module(root):
    """course.py of ``root`` imported as a module (its functions, without running main)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"course_{abs(hash(str(root)))}", root / "course.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the install ------------------------------------------------------------------------------
@pytest.mark.slow  # the student_release fixture builds the release (minutes)
def test_release_requirements_hold_only_what_students_run(student_release):
    lines = [line.split("#")[0].strip() for line in (student_release / "requirements.txt").read_text().splitlines()]
    names = {line.split("=")[0].split(">")[0].split("<")[0] for line in lines if line}
    assert "transformers" not in names and "jsonschema" not in names and "bleach" not in names
    assert {"torch", "pytest", "rich", "jupyterlab", "nbgrader", "triton"} <= names
    from autograder.release import pins

    assert pins()["torch"] in lines and pins()["triton"] in lines  # the course's own pins, written once


def test_release_requirements_cover_what_the_exercises_and_engine_import():
    """Every third-party module the shipped exercises, public checks and engine import is a
    requirement of the release (the tokenizer skeleton's ``import regex`` once was not)."""
    import ast
    from importlib.metadata import packages_distributions

    from autograder.release import ENGINE, student_requirements

    from importlib.metadata import PackageNotFoundError, requires

    def name_of(requirement):
        return re.split(r"[ ;<>=!\[~(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")

    required = {name_of(line.split("#")[0]) for line in student_requirements().splitlines() if line.split("#")[0].strip()}
    todo = list(required)
    while todo:  # what they install with them (nbgrader brings nbformat)
        try:
            needs = requires(todo.pop()) or []
        except PackageNotFoundError:
            continue
        for need in (name_of(r) for r in needs if "extra ==" not in r):
            if need not in required:
                required.add(need)
                todo.append(need)
    files = [*(ROOT / "exercises").glob("*.py"), *(ROOT / "exercises" / "checks").glob("*.py"),
             *(ROOT / "autograder" / name for name in ENGINE if name.endswith(".py")),
             *(ROOT / "autograder" / "adapters").glob("*.py")]
    ours = {p.stem for p in (ROOT / "solutions").glob("*.py")} | {"autograder", "solutions", "exercises", "course_adapters"}
    distributions = packages_distributions()
    missing = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for top in {n.split(".")[0] for n in names}:
                if top in sys.stdlib_module_names or top in ours:
                    continue
                dists = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                if not dists & required:
                    missing.add(f"{path.relative_to(ROOT)}: {top}")
    assert not missing, f"imported but not in the release's requirements: {sorted(missing)}"


def test_gradescope_and_classroom_read_the_torch_pin_from_requirements():
    """Their install scripts read the pin from requirements.txt (no second copy to go stale):
    the shell pipeline they run gives exactly the course's pin."""
    from autograder.gradescope import SETUP_SH
    from autograder.release import classroom_workflow, pins

    pipeline = "grep -E '^torch==' requirements.txt | cut -d'#' -f1 | tr -d ' '"
    assert pipeline.replace("requirements.txt", "/autograder/source/course/requirements.txt") in SETUP_SH
    assert pipeline in classroom_workflow()
    out = subprocess.run(["bash", "-c", pipeline], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == pins()["torch"]


def test_cpu_index_is_used_only_when_reachable(monkeypatch):
    course = course_module(ROOT)
    monkeypatch.setenv("COURSE_TORCH_INDEX", "none")
    assert course.torch_index() is None
    monkeypatch.setenv("COURSE_TORCH_INDEX", "file:///opt/wheels")
    assert course.torch_index() == "file:///opt/wheels"
    # an index that does not answer (a closed port here) is skipped within seconds, and pip then
    # takes torch from the default index or local wheels: the install works without internet
    monkeypatch.setenv("COURSE_TORCH_INDEX", "https://127.0.0.1:9/whl/cpu")
    started = time.monotonic()
    assert course.torch_index() is None
    assert time.monotonic() - started < 10
    assert course.TORCH_CPU_INDEX == "https://download.pytorch.org/whl/cpu"


def test_pip_progress_is_not_hidden():
    text = (ROOT / "course.py").read_text()
    assert '"--quiet"' not in text and "stderr=subprocess.PIPE" not in text


# -- course.py in the release -------------------------------------------------------------------
@pytest.mark.slow  # the student_release fixture builds the release (minutes)
@pytest.mark.parametrize("command", [["test"], ["bench"], ["skeletons", "--check"]])
def test_staff_commands_say_what_they_are_in_the_release(student_release, tmp_path, command):
    release = tmp_path / "course"
    shutil.copytree(student_release, release, ignore=shutil.ignore_patterns(".venv"))
    proc = subprocess.run([sys.executable, str(release / "course.py"), *command], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "python3 course.py grade" in proc.stderr
    assert not (release / ".venv").exists()  # said before any install


@pytest.mark.slow  # the student_release fixture builds the release (minutes)
def test_lab_runs_as_root_with_the_students_jupyter_config(student_release, monkeypatch):
    course = course_module(student_release)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("JUPYTER_CONFIG_DIR", raising=False)
    args = course.lab([])
    assert args[1] == "lab" and "--allow-root" in args
    assert os.environ["JUPYTER_CONFIG_DIR"] == str(student_release / ".jupyter")


def _plain(proc) -> str:
    """What a jupyter listing printed, without its colour codes (it colours when it likes)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)


@pytest.mark.slow
def test_jupyterlab_in_the_release_has_no_instructor_tools(student_release):
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(student_release / ".jupyter"))  # as course.py lab sets it
    jupyter = [sys.executable, "-m", "jupyter"]
    server = subprocess.run([*jupyter, "server", "extension", "list"], env=env, capture_output=True, text=True,
                            timeout=120)
    listing = _plain(server)
    assert "nbgrader.server_extensions.formgrader disabled" in listing, listing
    assert "nbgrader.server_extensions.validate_assignment enabled" in listing, listing
    lab = subprocess.run([*jupyter, "labextension", "list"], env=env, capture_output=True, text=True, timeout=120)
    listing = _plain(lab)
    for plugin in ("@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment"):
        assert plugin in listing, listing  # listed as disabled
    # the staff's own JupyterLab keeps them
    staff = subprocess.run([*jupyter, "server", "extension", "list"], capture_output=True, text=True, timeout=120)
    assert "nbgrader.server_extensions.formgrader enabled" in _plain(staff)


# -- what the release says --------------------------------------------------------------------
@pytest.mark.slow  # the student_release fixture builds the release (minutes)
def test_lectures_point_to_docs_that_ship(student_release):
    for name in ("API.md", "GLOSSARY.md"):
        assert (student_release / "docs" / name).read_text() == (ROOT / "docs" / name).read_text()
    for path in sorted((student_release / "lectures").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown" and "API.md" in cell.source:
                assert "(../docs/API.md)" in cell.source, f"{path.name}: {cell.source[:200]}"
                assert (path.parent / "../docs/API.md").resolve().exists()


@pytest.mark.slow  # the student_release fixture builds the release (minutes)
def test_lecture_09_says_which_exercises_it_needs(student_release):
    first = nbformat.read(student_release / "lectures" / "09_encoder_decoder.ipynb", as_version=4).cells[0].source
    for needed in ("seq2seq", *BY_NAME["seq2seq"].needs):
        assert f"{needed}" in first


@pytest.mark.slow  # the student_release fixture builds the release (minutes)
def test_readme_gives_the_course_order_and_how_to_check(student_release):
    text = (student_release / "README.md").read_text()
    for exercise in COURSE:
        if (ROOT / "solutions" / f"{exercise.name}.py").exists():
            assert f"`exercises/{exercise.name}.py` | `lectures/{exercise.lecture}.ipynb`" in text
    for needed in ("--exercise attention -k softmax", "-v", "Validate", "python3 course.py lab", "GitHub Classroom",
                   "docs/API.md", "docs/GLOSSARY.md", "cover N of the M points"):
        assert needed in text, needed


def test_skeleton_headers_say_lecture_and_needs():
    for name, text in skeleton.expected_skeletons().items():
        exercise = BY_NAME.get(name[:-3])
        if exercise is None:
            continue
        head = " ".join(line.removeprefix("# ") for line in text.splitlines()[:8])
        assert f"lectures/{exercise.lecture}.ipynb" in head and f"--exercise {exercise.name}" in head
        for needed in exercise.needs:
            assert f"{needed} (exercises/{needed}.py)" in head


# -- grade in the release: the feedback loop ------------------------------------------------------
def _release_with(student_release, tmp_path, files):
    release = tmp_path / "course"
    shutil.copytree(student_release, release)
    for name, text in files.items():
        (release / "exercises" / name).write_text(text)
    return release


def _grade(release, *args):
    out = release / "report.json"
    proc = cli("grade", "--json", str(out), *args, cwd=release)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


@pytest.mark.slow
def test_release_grade_names_the_mistake_and_the_coverage(student_release, tmp_path):
    from tests.fixtures.mutants import MUTANTS
    from tests.conftest import materialize

    mutant = materialize(tmp_path, "mask_inverted", MUTANTS["mask_inverted"]["edits"])
    release = _release_with(student_release, tmp_path, {"attention.py": (mutant / "attention.py").read_text()})
    proc, report = _grade(release, "--exercise", "attention")
    assert proc.returncode == 0, proc.stderr
    assert "the mask is inverted" in proc.stdout  # named in the table, as the staff's suite names it
    assert "public checks cover" in proc.stdout and "points the staff grade" in proc.stdout
    assert report["exercises"][0]["name"] == "attention" and 0 < report["score"] < report["max_score"]
    assert "Hint: attention/" in proc.stdout


@pytest.mark.slow
def test_release_grade_exercise_and_k_select(student_release, tmp_path):
    release = _release_with(student_release, tmp_path, {})
    proc, _ = _grade(release, "--exercise", "atention")
    assert proc.returncode == 2 and "atention" in proc.stderr and "attention, rope" in proc.stderr
    proc, report = _grade(release, "--exercise", "attention", "-k", "softmax")
    assert proc.returncode == 0, proc.stderr
    names = [t["name"] for e in report["exercises"] for t in e["tests"]]
    assert names and all("softmax" in n for n in names)
    proc, _ = _grade(release, "--exercise", "attention", "-k", "no_such_test")
    assert proc.returncode == 2 and "selects no test" in proc.stderr


@pytest.mark.slow
def test_release_grade_names_file_and_line_of_a_broken_import(student_release, tmp_path):
    broken = (ROOT / "exercises" / "attention.py").read_text() + "\ndef oops(:\n"
    release = _release_with(student_release, tmp_path, {"attention.py": broken})
    proc, report = _grade(release, "--exercise", "attention", "-k", "softmax", "-v")
    line = len(broken.splitlines())
    messages = [t["message"] for e in report["exercises"] for t in e["tests"]]
    assert any("SyntaxError" in m and f"line {line}" in m and "attention.py" in m for m in messages), messages[:2]
    release = _release_with(student_release, tmp_path / "b", {"rope.py": "import torch\nimport no_such_module\n"})
    proc, report = _grade(release, "--exercise", "rope", "-k", "odd_head_dim")
    messages = [t["message"] for e in report["exercises"] for t in e["tests"]]
    assert any("no_such_module" in m and "rope.py" in m and "line 2" in m for m in messages), messages[:2]


def test_hint_is_the_first_failure_of_the_earliest_unfinished_exercise():
    from autograder.report import Report, TestResult

    results = [TestResult("kv_cache", "cache_update", "", 2, "failed", message="This looks like a known mistake: x"),
               TestResult("rope", "apply_rope_half_split", "", 2, "failed", message="values differ"),
               TestResult("attention", "softmax", "", 1, "passed"),
               TestResult("rope", "rope_cos_sin", "", 1, "failed", message="not implemented: rope_cos_sin")]
    assert Report("x", results, 0.0).hint() == "rope/apply_rope_half_split: values differ"


def test_student_notebook_drops_instructor_notes_and_links_the_contract(tmp_path):
    from autograder.release import student_notebook

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("Conventions: see `API.md`."),
                nbformat.v4.new_code_cell("x = 1\n# instructor: the answer is 2\ny = 2"),
                nbformat.v4.new_code_cell("secret = 3", metadata={"tags": ["instructor-only"]})]
    nbformat.write(nb, tmp_path / "in.ipynb")
    student_notebook(tmp_path / "in.ipynb", tmp_path / "out.ipynb")
    cells = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    assert [c.source for c in cells] == ["Conventions: see [`docs/API.md`](../docs/API.md).", "x = 1\ny = 2"]
