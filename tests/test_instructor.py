"""The instructor's tools end to end: the student release and its leak check, class batch
grading, the Gradescope package in a simulated /autograder tree, GitHub Classroom."""
import csv
import json
import os
import shutil
import subprocess
import sys

import jsonschema
import pytest
import yaml

from autograder import release
from autograder.adequacy import suite_tests
from tests.conftest import FIXTURES, ROOT, cli

pytestmark = pytest.mark.slow


def test_release_contains_what_students_need_and_no_answers(student_release):
    out = student_release
    for needed in ("README.md", "course.py", "requirements.txt", "exercises/attention.py",
                   "exercises/checks/test_attention.py", "autograder/worker_child.py", "lectures/01_self_attention.ipynb",
                   ".github/workflows/classroom.yml"):
        assert (out / needed).exists(), needed
    assert not (out / "solutions").exists()
    assert not list((out / "autograder" / "suites").glob("test_*.py"))
    assert not (out / "autograder" / "mistakes").exists()
    assert release.leak_check(out) == []


def test_leak_check_catches_a_solution_body_and_a_hidden_test(student_release, tmp_path):
    leaky = tmp_path / "leaky"
    shutil.copytree(student_release, leaky)
    shutil.copy(ROOT / "solutions" / "rope.py", leaky / "exercises" / "rope.py")
    (leaky / "exercises" / "notes.md").write_text("remember test_forward_lse\n")
    problems = release.leak_check(leaky)
    assert any("exercises/rope.py contains solution code from solutions/rope.py" in p for p in problems)
    assert any("names the hidden test test_forward_lse" in p for p in problems)


def test_release_grades_the_public_checks(student_release, tmp_path):
    proc = cli("grade", "--json", str(tmp_path / "skeleton.json"), cwd=student_release)
    report = json.loads((tmp_path / "skeleton.json").read_text())
    assert proc.returncode == 0 and report["score"] == 0 and report["max_score"] >= 20
    assert "grading the public checks" in proc.stderr
    # a student who completed everything passes every public check
    done = tmp_path / "done"
    shutil.copytree(student_release, done)
    for path in (ROOT / "solutions").glob("*.py"):
        if path.name != "convert.py":
            shutil.copy(path, done / "exercises" / path.name)
    cli("grade", "--json", str(tmp_path / "done.json"), cwd=done)
    report = json.loads((tmp_path / "done.json").read_text())
    assert report["score"] == report["max_score"], [t for e in report["exercises"] for t in e["tests"] if t["status"] != "passed"]


def test_grade_class_survives_a_hostile_student_and_skips_unchanged_ones(tmp_path):
    subs = tmp_path / "submissions"
    shutil.copytree(ROOT / "solutions", subs / "alice")
    shutil.copytree(ROOT / "exercises", subs / "bob" / "exercises")  # the exercises/ layout
    (subs / "carol").mkdir()
    (subs / "carol" / "attention.py").write_text("import os\nos._exit(0)\n")
    out = tmp_path / "grades.csv"
    proc = cli("grade-class", str(subs), "--out", str(out), "--jobs", "2", "--exercise", "attention")
    assert proc.returncode == 0, proc.stderr
    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    full = sum(t.max_points for t in suite_tests("attention"))  # the hidden suite's total
    assert rows["alice"]["score"] == rows["alice"]["max_score"] == rows["alice"]["attention"] == f"{full:.1f}"
    assert rows["bob"]["score"] == "0.0" and rows["carol"]["score"] == "0.0"
    assert all(r["status"] == "graded" for r in rows.values())
    carol = json.loads((tmp_path / "reports" / "carol.json").read_text())
    assert "exited with status 0" in carol["exercises"][0]["tests"][0]["message"]
    assert f"Total: {full:g} / {full:g}" in (tmp_path / "reports" / "alice.txt").read_text()

    (subs / "bob" / "exercises" / "attention.py").write_text((ROOT / "solutions" / "attention.py").read_text())
    proc = cli("grade-class", str(subs), "--out", str(out), "--exercise", "attention")
    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    assert rows["alice"]["status"] == "skipped (unchanged)" and rows["bob"]["status"] == "graded"
    assert rows["bob"]["score"] == f"{full:.1f}"
    proc = cli("grade-class", str(subs), "--out", str(out), "--exercise", "attention", "--force")
    assert {r["status"] for r in csv.DictReader(out.open())} == {"graded"}


def test_gradescope_package_in_a_simulated_autograder_tree(tmp_path):
    from autograder.gradescope import unpack

    zip_path = tmp_path / "autograder.zip"
    assert cli("gradescope", str(zip_path)).returncode == 0
    root = tmp_path / "autograder"
    source = unpack(zip_path, root)
    assert os.access(source / "run_autograder", os.X_OK) and os.access(source / "setup.sh", os.X_OK)
    # a student upload: a zip of their exercises/ folder, with one mistake (no 1/sqrt(d_k))
    upload = root / "submission" / "my-course" / "exercises"
    shutil.copytree(ROOT / "solutions", upload)
    attention = upload / "attention.py"
    attention.write_text(attention.read_text().replace("scale = 1.0 / math.sqrt(d_k)", "scale = 1.0"))
    # and a link to the hidden reference: run_autograder must not read through it
    (upload / "rope.py").unlink()
    (upload / "rope.py").symlink_to(source / "course" / "solutions" / "rope.py")
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), AUTOGRADER_PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(source / "run_autograder")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((root / "results" / "results.json").read_text())
    schema = json.loads((FIXTURES.parent / "schemas" / "gradescope_results.schema.json").read_text())
    jsonschema.validate(results, schema)
    tests = {t["name"]: t for t in results["tests"]}
    assert 0 < results["score"] < sum(t["max_score"] for t in tests.values())
    assert tests["attention: sdpa_values[batch-heads]"]["status"] == "failed"
    assert "not scaled by 1/sqrt(d_k)" in tests["attention: sdpa_values[batch-heads]"]["output"]
    # the link leads outside the upload: refused when the upload is read, named in the output
    rope = [t for name, t in tests.items() if name.startswith("rope:")]
    assert rope and all(t["score"] == 0 for t in rope)
    assert "link outside your submission (my-course/exercises/rope.py" in results["output"]
    assert "Graded: the folder my-course/exercises of your upload" in results["output"]
    hidden = [t for t in tests.values() if t["visibility"] == "after_published"]
    assert hidden and all(t["name"].startswith("kv_cache: greedy_generation") for t in hidden)


def test_gradescope_run_reports_a_broken_grader_in_results_json(tmp_path):
    from autograder.gradescope import unpack

    zip_path = tmp_path / "autograder.zip"
    cli("gradescope", str(zip_path))
    root = tmp_path / "autograder"
    unpack(zip_path, root)
    (root / "submission").mkdir()
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), AUTOGRADER_PYTHON="/nonexistent/python")
    subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env, capture_output=True, timeout=60)
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 0 and "autograder failed" in results["output"]


def test_github_classroom_workflow(student_release, tmp_path):
    workflow = yaml.safe_load((student_release / ".github" / "workflows" / "classroom.yml").read_text())
    steps = workflow["jobs"]["grade"]["steps"]
    assert any(s.get("run") == "python -m autograder grade --json report.json" for s in steps)
    graders = [s for s in steps if "autograding-command-grader" in s.get("uses", "")]
    # one step per public test, worth that test's points
    assert graders and all(s["with"]["max-score"] >= 1 and "classroom-score report.json --check" in s["with"]["command"]
                           for s in graders)
    # classroom-score exits 0 only at full marks, or with --check only when that check passed
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"score": 21, "max_score": 28, "exercises": [
        {"name": "attention", "tests": [{"name": "test_a", "status": "passed", "message": ""},
                                        {"name": "test_b", "status": "failed", "message": "no"}]}]}))
    proc = cli("classroom-score", str(report))
    assert proc.returncode == 1 and "score: 21 / 28 (75%)" in proc.stdout
    assert cli("classroom-score", str(report), "--check", "attention/test_a").returncode == 0
    assert cli("classroom-score", str(report), "--check", "attention/test_b").returncode == 1
    assert cli("classroom-score", str(report), "--check", "attention/test_c").returncode == 1
