"""nbgrader used for real: a course directory, generate_assignment, the course's sandboxed
quiz grading (quiz-grade, in place of nbgrader autograde), feedback and export with the real
commands and a real SQLite gradebook, plus the exercise scores of grade-class imported into
the same gradebook."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def nbgrader(*args, cwd):
    proc = subprocess.run([str(BIN / "nbgrader"), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_lectures_have_autograded_quizzes():
    for path in sorted((ROOT / "lectures").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        solutions = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert graded and solutions, f"{path.name} has no nbgrader quiz"
        assert all(c.metadata["nbgrader"].get("points", 0) > 0 for c in graded)


def test_quiz_flow_and_one_gradebook_for_quizzes_and_exercises(tmp_path):
    course = tmp_path / "course"
    proc = subprocess.run([sys.executable, "-m", "autograder", "nbgrader-setup", str(course)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    nbgrader("generate_assignment", "lecture01", "--force", cwd=course)
    released = course / "release" / "lecture01" / "01_self_attention.ipynb"
    source = course / "source" / "lecture01" / "01_self_attention.ipynb"
    text = released.read_text()
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    assert "raise NotImplementedError()" in text
    # alice hands in the answers (the source version), bob the untouched release version;
    # both also leave an exercise file that nbgrader must not overwrite or copy
    for student, notebook in (("alice", source), ("bob", released)):
        folder = course / "submitted" / student / "lecture01"
        folder.mkdir(parents=True)
        shutil.copy(notebook, folder / notebook.name)
        (folder / "attention.py").write_text(f"# {student}'s own file\n")
    # the course's grading path (nbgrader autograde is refused by the course's config)
    proc = subprocess.run([sys.executable, "-m", "autograder", "quiz-grade", "lecture01", "--course", str(course)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not (course / "autograded" / "alice" / "lecture01" / "attention.py").exists()
    assert (course / "submitted" / "alice" / "lecture01" / "attention.py").read_text() == "# alice's own file\n"
    nbgrader("generate_feedback", "lecture01", cwd=course)
    feedback = {s: next((course / "feedback" / s / "lecture01").glob("*.html")).read_text() for s in ("alice", "bob")}
    assert all("HIDDEN TESTS" not in page and "2 * 8 * 2048**2 * 4" not in page for page in feedback.values())
    assert "passed" in feedback["alice"] and "raised NotImplementedError" in feedback["bob"]

    # the exercise scores from grade-class go into the same gradebook
    reports = tmp_path / "reports"
    reports.mkdir()
    for student, score in (("alice", 63.0), ("bob", 20.0)):
        (reports / f"{student}.json").write_text(json.dumps(
            {"score": score, "max_score": 63.0, "exercises": [{"name": "attention", "score": score, "max_score": 63.0}]}))
    proc = subprocess.run([sys.executable, "-m", "autograder", "nbgrader-import", str(reports),
                           "--db", f"sqlite:///{course / 'gradebook.db'}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    nbgrader("export", cwd=course)
    rows = {(r["assignment"], r["student_id"]): r for r in csv.DictReader((course / "grades.csv").open())}
    quiz_max = float(rows[("lecture01", "alice")]["max_score"])
    assert quiz_max > 0
    assert float(rows[("lecture01", "alice")]["score"]) == quiz_max
    assert float(rows[("lecture01", "bob")]["score"]) == 0.0
    assert float(rows[("exercises", "alice")]["score"]) == 63.0
    assert float(rows[("exercises", "bob")]["score"]) == 20.0
