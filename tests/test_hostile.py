"""A crash, hang, exit or hostile act in one function fails that function's tests with a
message naming what happened; the other tests are still scored, in bounded time; the
course's files and the submission are untouched; nothing is left running or lying around.

The submissions are graded by a world-readable copy of the course (as an ordinary checkout
is), so a "Permission denied" can only come from the grader's own protections.
"""
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from autograder.isolation import network_namespace_available, privilege_drop_available, process_table
from tests.conftest import FIXTURES, ROOT, results, run_grader
from tests.fixtures.hostile import HOSTILE, LINK, PREPEND

CALL_TIMEOUT = 3  # seconds per call: the correct functions here take milliseconds
MARK = f"4321.{random.randrange(10**8):08d}"  # sleep accepts it; unique to this run


def world_readable_copy(folder: Path) -> Path:
    """Copy autograder/ and solutions/ with ordinary modes (dirs 755, files 644)."""
    folder.chmod(0o755)
    for name in ("autograder", "solutions"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


@pytest.fixture(scope="module")
def course():
    folder = Path(tempfile.mkdtemp(prefix="course-copy-"))
    yield world_readable_copy(folder)
    shutil.rmtree(folder, ignore_errors=True)


def fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


def build(folder: Path, name: str, course: Path, report: Path) -> Path:
    where, code = HOSTILE[name]["edit"]
    code = code.replace("COURSE", str(course)).replace("REPORT", str(report)).replace("MARK", MARK)
    base = (FIXTURES / "variants" / "einsum" / "attention.py").read_text()
    folder.mkdir()
    if where == LINK:
        (folder / "attention.py").symlink_to(code)
    else:
        (folder / "attention.py").write_text(code + base if where == PREPEND else base + "\n\n" + code)
    for name, text in HOSTILE[name].get("extra", {}).items():
        (folder / name).write_text(text)
    return folder


def leftovers(report: dict) -> list[str]:
    """Processes and files of a hostile run: by the mark, and by the uid its worker ran as."""
    used = re.match(r"unprivileged uid (\d+)", report["isolation"]["user"])
    found = [f"pid {pid}: {command}" for pid, (_, uid, command) in process_table().items()
             if (used and uid == int(used[1])) or MARK in _cmdline(pid)]
    return found + [f"/{d}/{MARK}" for d in ("tmp", "dev/shm") if os.path.exists(f"/{d}/{MARK}")]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def grade_hostile(tmp_path, name, course):
    reports = tmp_path / "reports"
    reports.mkdir(mode=0o755, parents=True)
    reports.chmod(0o755)  # an ordinary folder: only the uid keeps the worker out
    report = reports / "report.json"
    folder = build(tmp_path / name, name, course, report)
    before = fingerprint(course), fingerprint(folder)
    started = time.monotonic()
    proc, report_data = run_grader(folder, "--exercise", "attention", "--timeout", str(CALL_TIMEOUT),
                                   "--memory-gib", "3", timeout=300, course=course, report=report,
                                   env={"PYTHONDONTWRITEBYTECODE": "1"})
    return proc, report_data, time.monotonic() - started, before, (fingerprint(course), fingerprint(folder))


@pytest.mark.slow
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_submission_is_graded_safely(tmp_path, name, course):
    case = HOSTILE[name]
    if case.get("root_only") and not privilege_drop_available():
        pytest.skip("without root (or a Python the pool uid can run) the worker runs as the "
                    "grader's user and this succeeds (docs/THREAT_MODEL.md)")
    try:
        proc, report, elapsed, before, after = grade_hostile(tmp_path, name, course)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Traceback" not in proc.stdout + proc.stderr
        assert report["max_score"] > 0 and report["score"] <= report["max_score"]  # the grader's own
        by_name = results(report)
        failed = []
        for prefix, needles in case["fail"].items():
            needles = needles if isinstance(needles, tuple) else (needles,)
            hit = [t for n, t in by_name.items() if n.startswith(prefix)]
            assert hit and all(t["status"] == "failed" for t in hit), \
                [t["name"] for t in hit if t["status"] != "failed"]
            assert all(any(n in t["message"] for n in needles) for t in hit), \
                [t["message"] for t in hit if not any(n in t["message"] for n in needles)][:2]
            failed += hit
        if failed:
            assert any(case["where"] in t["message"] for t in failed)  # says where it happened
        if name == "opens_a_network_connection" and network_namespace_available():
            assert all("Network is unreachable" in t["message"] for t in failed)
        for prefix in case["pass_"]:
            hit = [t for n, t in by_name.items() if n.startswith(prefix)]
            assert hit and all(t["status"] == "passed" for t in hit), \
                [t["message"] for t in hit if t["status"] != "passed"]
        # bounded: a hanging function costs at most two timeouts, a broken import one start
        assert elapsed < 60, f"grading took {elapsed:.0f} s"
        assert after == before, "the course copy or the submission's originals changed"
        assert leftovers(report) == [], "left running or lying around after grading"
    finally:
        for path in (f"/tmp/{MARK}", f"/dev/shm/{MARK}"):  # without root nobody removes them
            if os.path.exists(path):
                os.unlink(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nondeterministic_softmax", "leaves_an_orphan_process"])
def test_grading_twice_gives_the_same_report(tmp_path, course, name):
    """Random noise, or a process left behind: the same values, the same messages, both times."""
    reports = []
    for attempt in ("first", "second"):
        proc, report, *_ = grade_hostile(tmp_path / attempt, name, course)
        assert proc.returncode == 0, proc.stderr[-2000:]
        for exercise in report["exercises"]:
            for test in exercise["tests"]:
                test.pop("duration")
        reports.append(report["exercises"])
    assert reports[0] == reports[1]


@pytest.mark.slow
@pytest.mark.skipif(not privilege_drop_available(), reason="only a grader that drops to a pool uid keeps students apart")
def test_a_hostile_student_cannot_touch_the_rest_of_the_class(tmp_path, course):
    """mallory reads bob's files and rewrites bob's report during grade-class: both fail,
    and bob's files and report are his own afterwards."""
    classroom, out = tmp_path / "class", tmp_path / "out"
    classroom.mkdir()
    out.mkdir()
    for path in (tmp_path, classroom, out):
        path.chmod(0o755)  # ordinary folders, so only the grader's protections stand in the way
    honest = (FIXTURES / "variants" / "einsum" / "attention.py").read_text()
    for student in ("alice", "bob"):
        (classroom / student).mkdir()
        (classroom / student / "attention.py").write_text(honest)
    (classroom / "mallory").mkdir()
    (classroom / "mallory" / "attention.py").write_text(honest + f"""

def causal_mask(n_q, n_k=None, *, device=None):
    open({str(classroom / 'bob' / 'attention.py')!r}).read()

def repeat_kv(x, n_rep):
    open({str(out / 'reports' / 'bob.json')!r}, 'w').write('{{"score": 0}}')
""")
    before = fingerprint(classroom / "alice"), fingerprint(classroom / "bob")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "autograder", "grade-class", str(classroom),
                           "--out", str(out / "grades.csv"), "--exercise", "attention"],
                          cwd=course, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = {s: json.loads((out / "reports" / f"{s}.json").read_text()) for s in ("alice", "bob", "mallory")}
    assert reports["bob"]["score"] == reports["bob"]["max_score"] == reports["alice"]["score"]
    by_name = results(reports["mallory"])
    assert all("Permission denied" in t["message"] for n, t in by_name.items()
               if n.startswith(("causal_mask", "repeat_kv")))
    assert all(t["status"] == "passed" for n, t in by_name.items() if n.startswith("softmax"))
    assert (fingerprint(classroom / "alice"), fingerprint(classroom / "bob")) == before
    assert all(leftovers(report) == [] for report in reports.values())
