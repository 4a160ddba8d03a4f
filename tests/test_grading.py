"""The grader end to end through its command line: full marks for the reference, zero for
the skeletons, full marks for correct implementations written differently, and reports
that follow their formats."""
import json
import shutil
import subprocess
import sys

import jsonschema
import pytest

from autograder import adequacy
from tests.conftest import FIXTURES, ROOT, materialize, results, run_grader

pytestmark = pytest.mark.slow


def test_solutions_score_full_marks(solutions_report):
    proc, report = solutions_report
    failed = {t["name"]: t["message"] for t in results(report).values() if t["status"] != "passed"}
    assert not failed
    assert report["score"] == report["max_score"] > 0
    assert "Total: " in proc.stdout


def test_skeletons_score_zero_with_not_implemented_messages(tmp_path):
    import shutil

    shutil.copytree(ROOT / "exercises", tmp_path / "exercises")
    proc, report = run_grader(tmp_path / "exercises")
    assert proc.returncode == 0
    assert report["score"] == 0 and report["max_score"] > 0
    assert all(t["message"].startswith("not implemented") for t in results(report).values())
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "0 / " in proc.stdout


# variant folder -> the exercises it is graded on: its files' stems, plus what its grades.txt
# names (tests/fixtures/variants/<variant>/; autograder/adequacy.py reads them)
VARIANTS = adequacy.load_variants()


@pytest.mark.parametrize("variant", VARIANTS)
def test_correct_variants_score_full_marks(tmp_path, variant):
    """A correct implementation written differently (overlaid on the reference's other
    files) gets every point of the exercises it implements."""
    folder = materialize(tmp_path, variant, {})
    for path in (FIXTURES / "variants" / variant).glob("*.py"):
        shutil.copy(path, folder / path.name)
    args = [arg for name in VARIANTS[variant] for arg in ("--exercise", name)]
    proc, report = run_grader(folder, *args)
    failed = {t["name"]: t["message"] for t in results(report).values() if t["status"] != "passed"}
    assert not failed
    assert report["score"] == report["max_score"]


def test_gradescope_report_follows_the_schema(tmp_path):
    out = tmp_path / "results.json"
    proc, report = run_grader(FIXTURES / "variants" / "einsum", "--exercise", "attention",
                              "--gradescope", str(out))
    data = json.loads(out.read_text())
    schema = json.loads((FIXTURES.parent / "schemas" / "gradescope_results.schema.json").read_text())
    jsonschema.validate(data, schema)
    assert data["score"] == sum(t["score"] for t in data["tests"]) == report["score"]
    assert sum(t["max_score"] for t in data["tests"]) == report["max_score"]
    assert {t["status"] for t in data["tests"]} == {"passed"}


def test_gradescope_schema_rejects_malformed_results():
    """The schema is not vacuous: it refuses what Gradescope would misread."""
    schema = json.loads((FIXTURES.parent / "schemas" / "gradescope_results.schema.json").read_text())
    good = {"score": 1, "tests": [{"name": "t", "score": 1, "max_score": 1, "status": "passed"}]}
    jsonschema.validate(good, schema)
    for bad in [{"tests": [{"name": "t", "score": 1}]},  # max_score missing
                {"score": 1, "tests": [{"name": "t", "score": 1, "max_score": 1, "status": "ok"}]},
                {"score": 1, "visibility": "students"},
                {"score": 1, "tests": [], "scores": 2}]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_failing_report_in_gradescope_format(tmp_path):
    out = tmp_path / "results.json"
    import shutil

    shutil.copytree(ROOT / "exercises", tmp_path / "exercises")
    run_grader(tmp_path / "exercises", "--gradescope", str(out))
    data = json.loads(out.read_text())
    jsonschema.validate(data, json.loads((FIXTURES.parent / "schemas" / "gradescope_results.schema.json").read_text()))
    assert data["score"] == 0 and {t["status"] for t in data["tests"]} == {"failed"}
    assert all("not implemented" in t["output"] for t in data["tests"])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "autograder", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_rejects_a_missing_folder_and_an_unknown_exercise(tmp_path):
    proc = _cli("grade", "--submission", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = _cli("grade", "--submission", str(tmp_path), "--exercise", "attenton")
    assert proc.returncode == 2 and "no hidden suite for attenton" in proc.stderr


def test_empty_submission_folder_is_graded_as_missing_files(tmp_path):
    proc, report = run_grader(tmp_path)
    assert proc.returncode == 0 and report["score"] == 0
    assert all(t["message"].startswith("missing: the submission has no file")
               for t in results(report).values())


def test_json_report_has_stable_keys(solutions_report):
    _, report = solutions_report
    assert set(report) == {"schema_version", "submission", "score", "max_score", "duration_s",
                           "worker_restarts", "isolation", "intake", "lang", "exercises"}
    assert report["lang"] == "en"  # the language the messages were written in (grade --lang)
    test = report["exercises"][0]["tests"][0]
    assert set(test) == {"exercise", "name", "description", "max_points", "status", "points",
                         "message", "message_en", "duration", "visibility"}


def test_bench_prints_its_ratios():
    # short runs: this checks the command and its output, not the speed
    proc = _cli("bench", "--new-tokens", "24", "--flash-lengths", "256", "--flash-n", "512", "--flash-repeats", "1",
                "--students", "2")
    assert proc.returncode == 0, proc.stderr
    for line in ("full hidden suite for", "goal <= 60 s", "cache speed-up", "reference / Hugging Face",
                 "same tokens: cache vs no cache True, reference vs Hugging Face True", "kv_cache_bytes",
                 "forward: naive", "reference/SDPA", "naive/reference",
                 "n naive reference SDPA naive/ref", "class of 2: 2 graded in", "goal <= 300 s"):
        assert line in " ".join(proc.stdout.split()), line
