"""The paths by which a grade is chosen and reported: which files Gradescope grades, what its
always-visible text may say, what GitHub Classroom adds up, which JUnit file the public grade
reads, which folder the release grades. Each test first shows the attack working against the
old path (kept here as a small reimplementation) and then that it gains nothing now."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from autograder.gradescope import choose_submission, unpack
from autograder.report import Report
from autograder.report import TestResult as Result  # not "Test...": pytest would collect it
from autograder.runner import grade_public, public_check_ids
from tests.conftest import ROOT, cli

SKELETONS = sorted(p for p in (ROOT / "exercises").glob("*.py"))
SOLUTIONS = sorted(p for p in (ROOT / "solutions").glob("*.py") if p.name != "convert.py")

# run_autograder's old selection, word for word
OLD_SELECTION = """
WORK="$1"; ROOT="$2"
FOUND="$(find "$ROOT/submission" -type d -name exercises -not -path '*/.*' | head -n 1)"
if [ -n "$FOUND" ]; then cp -RP "$FOUND"/. "$WORK"/;
else find "$ROOT/submission" -maxdepth 1 -name '*.py' -exec cp -P {} "$WORK"/ \\; ; fi
"""


def newline_upload(root):
    """Skeleton files at the top of the upload, a link `sol` to the reference solutions and a
    real folder named "sol\\nx/exercises": `find | head -n 1` prints ".../sol"."""
    upload = root / "submission"
    upload.mkdir(parents=True)
    for path in SKELETONS:
        shutil.copy(path, upload / path.name)
    (upload / "sol").symlink_to("../source/course/solutions")
    (upload / "sol\nx" / "exercises").mkdir(parents=True)
    shutil.copy(ROOT / "exercises" / "attention.py", upload / "sol\nx" / "exercises" / "attention.py")
    return upload


def test_gradescope_choice_refuses_the_newline_folder_and_the_link(tmp_path):
    root = tmp_path / "autograder"
    shutil.copytree(ROOT / "solutions", root / "source" / "course" / "solutions")
    newline_upload(root)
    # the old selection copied the reference through the link
    old = tmp_path / "old"
    old.mkdir()
    subprocess.run(["bash", "-c", OLD_SELECTION, "bash", str(old), str(root)], check=True, timeout=60)
    assert (old / "attention.py").read_text() == (ROOT / "solutions" / "attention.py").read_text()
    # now: the loose skeleton files, nothing through the link, both refusals named
    choice = choose_submission(root / "submission")
    assert choice.chosen == "" and sorted(choice.files) == [p.name for p in SKELETONS]
    assert all(choice.files[p.name] == p.read_bytes() for p in SKELETONS)
    assert "link outside your submission" in choice.refused["sol"]
    assert "control character" in choice.refused["sol\nx/exercises/attention.py"]


def test_gradescope_choice_takes_the_shallowest_exercises_folder(tmp_path):
    upload = tmp_path / "upload"
    for folder in ("b/exercises", "a/exercises", "a/deeper/exercises"):
        (upload / folder).mkdir(parents=True)
        (upload / folder / "attention.py").write_text(f"# {folder}\n")
    (upload / "loose.py").write_text("# loose\n")
    choice = choose_submission(upload)
    assert choice.chosen == "a/exercises" and choice.files == {"attention.py": b"# a/exercises\n"}


def test_gradescope_top_level_output_names_no_hidden_test():
    # the hidden test's exercise comes first in course order, so the hint (the earliest
    # unfinished exercise's first failure) would pick it
    hidden = Result(exercise="attention", name="secret_generation", description="greedy tokens",
                        max_points=5, status="failed", visibility="after_published",
                        message="This looks like a known mistake: expected the tokens [17, 4, 9]")
    shown = Result(exercise="kv_cache", name="softmax", description="softmax", max_points=1,
                       status="failed", message="not implemented")
    report = Report(submission="s", results=[shown, hidden], duration=1.0)
    assert "secret_generation" in report.hint()  # the old top-level hint: the hidden test
    results = report.to_gradescope()
    assert "secret_generation" not in results["output"] and "17, 4, 9" not in results["output"]
    assert "Total of the tests shown: 0 / 1 points" in results["output"]
    assert {t["name"]: t["visibility"] for t in results["tests"]}["attention: secret_generation"] == "after_published"


@pytest.mark.slow
def test_gradescope_run_autograder_grades_a_newline_and_link_upload_as_the_skeleton(tmp_path):
    zip_path = tmp_path / "autograder.zip"
    assert cli("gradescope", str(zip_path)).returncode == 0
    root = tmp_path / "autograder"
    source = unpack(zip_path, root)
    newline_upload(root)
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), AUTOGRADER_PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(source / "run_autograder")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 0 and results["tests"]  # what the skeleton scores: 0 (tests/test_grading.py)
    assert "link outside your submission (sol -> ../source/course/solutions)" in results["output"]
    assert "control character" in results["output"]
    hidden = [t for t in results["tests"] if t["visibility"] != "visible"]
    assert hidden
    for test in hidden:
        assert test["name"] not in results["output"] and test["name"].split(": ", 1)[1] not in results["output"]


# -- GitHub Classroom --------------------------------------------------------------------------
def classroom_points(workflow, repo):
    """Run the workflow's steps after the install as GitHub would (a `run` step by bash, each
    command grader's command by a shell: its max-score when it exits 0, else 0)."""
    # `python` is the environment's, as actions/setup-python makes it
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    points = total = 0
    for step in workflow["jobs"]["grade"]["steps"]:
        if "run" in step and "pip install" not in step["run"]:
            assert subprocess.run(["bash", "-c", step["run"]], cwd=repo, env=env, timeout=600).returncode == 0
        if "autograding-command-grader" in step.get("uses", ""):
            ok = subprocess.run(["bash", "-c", step["with"]["command"]], cwd=repo, env=env,
                                capture_output=True, timeout=600).returncode == 0
            points += step["with"]["max-score"] if ok else 0
            total += step["with"]["max-score"]
    return points, total


@pytest.mark.slow
def test_github_classroom_points_are_the_public_grade(student_release, tmp_path):
    workflow = yaml.safe_load((student_release / ".github" / "workflows" / "classroom.yml").read_text())
    graders = [s for s in workflow["jobs"]["grade"]["steps"] if "autograding-command-grader" in s.get("uses", "")]
    assert len(graders) == sum(len(v) for v in public_check_ids().values())
    reporter = next(s for s in workflow["jobs"]["grade"]["steps"] if "grading-reporter" in s.get("uses", ""))
    assert reporter["with"]["runners"].split(",") == [s["id"] for s in graders]
    # the old step (`grade ... && classroom-score`, max-score 100): grade exits 0 whatever the
    # score, and the old classroom-score always returned 0, so a skeleton got 100/100
    skeleton = tmp_path / "skeleton"
    shutil.copytree(student_release, skeleton)
    assert cli("grade", "--json", "old.json", cwd=skeleton).returncode == 0
    points, total = classroom_points(workflow, skeleton)
    report = json.loads((skeleton / "report.json").read_text())
    # one step per public test, worth its points: Classroom's total is the public total
    assert points == report["score"] == 0 and total == report["max_score"] > 0
    done = tmp_path / "done"
    shutil.copytree(student_release, done)
    for path in SOLUTIONS:
        shutil.copy(path, done / "exercises" / path.name)
    assert classroom_points(workflow, done) == (total, total)


# -- the public grade ----------------------------------------------------------------------------
FORGER = textwrap.dedent('''
    import atexit as _atexit, glob as _glob, os as _os, re as _re, sys as _sys

    def _forge():
        """Rewrite every JUnit file this process can name or find so that all checks pass."""
        named = " ".join(_sys.argv) + " " + " ".join(_os.environ.values())
        for pid in ("self", str(_os.getppid())):
            try:
                named += " " + open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
            except OSError:
                pass
        paths = set(_re.findall(r"--junitxml=(\\S+)", named)) | {"junit.xml", _os.path.join(_os.getcwd(), "junit.xml")}
        for pattern in ("/tmp/*.xml", "/tmp/*/*.xml", "/tmp/*/*/*.xml", "*.xml"):
            paths.update(_glob.glob(pattern))
        for path in paths:
            try:
                text = open(path).read()
            except OSError:
                continue
            text = _re.sub(r"<(failure|error)[^>]*?(/>|>.*?</\\1>)", "", text, flags=_re.S)
            text = _re.sub(r'(failures|errors)="\\d+"', r'\\1="0"', text)
            open(path, "w").write(text)

    _forge()
    _atexit.register(_forge)
''')


OLD_CHECK = textwrap.dedent('''
    # the old public checks, in short: the student's code imported into this pytest process
    import importlib.util, os, torch

    def test_softmax_rows():
        spec = importlib.util.spec_from_file_location("attention", os.path.join(os.environ["COURSE_SUBMISSION"], "attention.py"))
        attention = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(attention)
        torch.testing.assert_close(attention.softmax(torch.zeros(2, 3), dim=-1), torch.full((2, 3), 1 / 3))
''')


def old_grade_public(submission, tmp_path):
    """The old grade_public, in short: the checks and the student's code in one pytest process,
    the JUnit path on its command line, the score read back from that file."""
    import xml.etree.ElementTree as ElementTree

    checks = tmp_path / "old-checks"
    checks.mkdir()
    (checks / "test_attention.py").write_text(OLD_CHECK)
    junit = tmp_path / "junit.xml"
    env = dict(os.environ, COURSE_SUBMISSION=str(submission))
    subprocess.run([sys.executable, "-m", "pytest", str(checks), "-q", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", f"--rootdir={checks}", "-c", os.devnull], env=env, cwd=tmp_path,
                   capture_output=True, timeout=600)
    cases = list(ElementTree.parse(junit).getroot().iter("testcase"))
    return sum(1 for c in cases if c.find("failure") is None and c.find("error") is None and
               c.find("skipped") is None), len(cases)


@pytest.mark.slow
def test_a_submission_that_rewrites_junit_files_gains_nothing(tmp_path):
    forger = tmp_path / "forger"
    forger.mkdir()
    for path in SKELETONS:
        shutil.copy(path, forger / path.name)
    with open(forger / "attention.py", "a") as f:
        f.write(FORGER)
    passed, total = old_grade_public(forger, tmp_path)
    assert passed == total > 0  # the old path: a skeleton scored full marks
    # now the public suites run in the grader, the submission only in the worker: no JUnit file,
    # nothing of the grader's in reach; the forger scores what the skeleton scores
    report = grade_public(forger, ["attention"])
    skeleton = grade_public(ROOT / "exercises", ["attention"])
    assert report.score == skeleton.score == 0 and report.max_score == skeleton.max_score > 0


@pytest.mark.slow
def test_a_submission_folder_named_exercises_is_the_one_graded(tmp_path):
    student = tmp_path / "student" / "exercises"
    student.mkdir(parents=True)
    for path in SOLUTIONS:
        shutil.copy(path, student / path.name)
    # the old import: the repository root first on sys.path, the submission imported by its
    # folder's name: `exercises` is this repository's skeletons, not the student's files
    old = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                          "import exercises.attention as a; print(a.__file__)", str(ROOT)],
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(student.parent), str(ROOT)])),
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert old.stdout.strip() == str(ROOT / "exercises" / "attention.py")
    report = grade_public(student, ["attention", "positional"])
    assert report.score == report.max_score > 0, [(r.name, r.message) for r in report.results if r.status != "passed"]
