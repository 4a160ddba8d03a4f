"""``grade-class`` with hostile students: links to the solutions or to a classmate, files
that hang or crash a reader, a name that is a spreadsheet formula, messages full of
terminal escapes. Every student gets a row, in bounded time; the links score nothing; the
honest student's score is unchanged; nothing a student wrote reaches the CSV, the reports or
the terminal raw. The protections are also switched off (the code before them, put back in
the grader processes by a ``sitecustomize``) to show that the attacks then work."""
import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autograder import classroom
from tests.conftest import FIXTURES, ROOT, strings

CONTROL = {chr(c) for c in [*range(0, 9), *range(11, 32), *range(0x7f, 0xa0)]}
FORMULA = ("=", "+", "-", "@", "\t", "\r")
HONEST = FIXTURES / "variants" / "einsum" / "attention.py"
FORMULA_NAME = '=HYPERLINK("x")'
ESCAPES = r'''
print("\x1b[2J\x1b]0;pwned\x07")
raise RuntimeError("\x1b[31mred\x1b[0m\r\x1b]0;owned\x07got you \ud800 \x9b2J done")
'''
# the grader as it was before intake and text cleaning, for the "protection off" runs
PROTECTION_OFF = '''
import os, shutil
import autograder.classroom, autograder.intake, autograder.report, autograder.runner

def follow_links(src, dst, deadline=None):
    shutil.copytree(os.path.realpath(src), dst, symlinks=False)
    return autograder.intake.Intake(source=str(src))

autograder.intake.stage_submission = follow_links
autograder.classroom.submission_folder = lambda d: d / "exercises" if (d / "exercises").is_dir() else d
autograder.report.clean_data = lambda value, limit=None: value
autograder.runner.clean = lambda value, limit=None: str(value)
'''


def grade_class(classroom_dir: Path, out: Path, env=None, timeout=600):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade-class", str(classroom_dir),
                           "--out", str(out), "--jobs", "2", "--exercise", "attention",
                           "--student-timeout", "240"],
                          cwd=ROOT, capture_output=True, text=True, errors="replace", timeout=timeout,
                          env=dict(os.environ, **(env or {})))
    return proc, time.monotonic() - started


def rows_of(out: Path) -> dict:
    return {r["student"]: r for r in csv.DictReader(out.open(newline=""))}


def clean_text(value: str) -> bool:
    return not (set(value) & CONTROL) and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)


def make_class(root: Path, with_junk=True) -> Path:
    subs = root / "class"
    (subs / "honest").mkdir(parents=True)
    (subs / "honest" / "attention.py").write_text(HONEST.read_text())
    # the red team's links: the course's solutions, a classmate's folder, a classmate as a whole
    (subs / "solutions_link").mkdir()
    os.symlink(os.path.relpath(ROOT / "solutions", subs / "solutions_link"), subs / "solutions_link" / "exercises")
    (subs / "classmate_link").mkdir()
    os.symlink("../honest", subs / "classmate_link" / "exercises")
    os.symlink("honest", subs / "mirror")
    (subs / "escapes").mkdir()
    (subs / "escapes" / "attention.py").write_text(ESCAPES)
    if with_junk:
        junk = subs / "junk"
        junk.mkdir()
        (junk / "attention.py").write_text((ROOT / "exercises" / "attention.py").read_text())
        (junk / "notes.py").mkdir()
        (junk / "zero.py").symlink_to("/dev/zero")
        (junk / "stdin.py").symlink_to("/proc/self/fd/0")
        os.mkfifo(junk / "fifo.py")
        (subs / FORMULA_NAME).mkdir()
        (subs / FORMULA_NAME / "attention.py").write_text(HONEST.read_text())
    return subs


@pytest.mark.slow
def test_a_hostile_class_is_graded_row_by_row_and_the_links_score_nothing(tmp_path):
    subs = make_class(tmp_path)
    out = tmp_path / "out" / "grades.csv"
    out.parent.mkdir()
    proc, elapsed = grade_class(subs, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 300, f"the class took {elapsed:.0f} s"
    rows = rows_of(out)
    assert set(rows) == {"honest", "solutions_link", "classmate_link", "mirror", "escapes", "junk",
                         "'" + FORMULA_NAME}, rows.keys()

    honest = rows["honest"]
    assert honest["status"] == "graded" and float(honest["score"]) == float(honest["max_score"]) > 0
    assert honest["attention"] == honest["score"]
    # the same honest work under a formula name: the same score, the cell escaped
    assert rows["'" + FORMULA_NAME]["score"] == honest["score"]

    reports = out.parent / "reports"
    for name, link in (("solutions_link", "exercises -> ../"), ("classmate_link", "exercises -> ../honest"),
                       ("mirror", "mirror -> honest")):
        row = rows[name]
        assert float(row["score"]) == 0 and row["max_score"] == honest["max_score"], row
        assert row["status"].startswith(f"refused: link outside your submission ({link}"), row
        report = json.loads((reports / f"{name}.json").read_text())
        tests = [t for ex in report["exercises"] for t in ex["tests"]]
        assert tests and all(t["message"].startswith("refused: link outside your submission") for t in tests)

    junk = rows["junk"]
    assert float(junk["score"]) == 0 and junk["status"].startswith(
        "graded; refused: link outside your submission (stdin.py -> /proc/self/fd/0)"), junk
    notes = json.loads((reports / "junk.json").read_text())["intake"]
    assert set(notes["refused"]) == {"stdin.py", "zero.py"} and set(notes["skipped"]) == {"fifo.py", "notes.py"}
    assert notes["files"] == ["attention.py"]

    # nothing a student wrote reaches a cell a spreadsheet would run, or any output raw
    for row in csv.reader(out.open(newline="")):
        assert not any(cell.startswith(FORMULA) for cell in row), row
        assert all(clean_text(cell) for cell in row), row
    escapes = json.loads((reports / "escapes.json").read_text())
    messages = [t["message"] for ex in escapes["exercises"] for t in ex["tests"]]
    assert messages and all("got you \ufffd" in m and "red" in m for m in messages)
    assert float(rows["escapes"]["score"]) == 0
    for path in reports.iterdir():
        if path.suffix == ".json":
            assert all(clean_text(s.replace("\n", "")) for s in strings(json.loads(path.read_text()))), path
        else:
            assert clean_text(path.read_text().replace("\n", "")), path
    assert clean_text(proc.stdout.replace("\n", "")) and (reports / f"{FORMULA_NAME}.json").exists()


@pytest.mark.slow
def test_with_the_protections_off_the_attacks_work(tmp_path):
    """The same links and escapes with intake, the lstat-only student folder and the text
    cleaning switched off: the links score full marks and the escapes reach the report. This
    is what the test above guards against."""
    subs = make_class(tmp_path, with_junk=False)
    (tmp_path / "off").mkdir()
    (tmp_path / "off" / "sitecustomize.py").write_text(PROTECTION_OFF)
    out = tmp_path / "out" / "grades.csv"
    out.parent.mkdir()
    proc, _ = grade_class(subs, out, env={"PYTHONPATH": os.pathsep.join([str(tmp_path / "off"), str(ROOT)])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_of(out)
    for name in ("solutions_link", "classmate_link", "mirror"):
        assert float(rows[name]["score"]) == float(rows[name]["max_score"]) > 0, rows[name]
    escapes = json.loads((out.parent / "reports" / "escapes.json").read_text())
    message = escapes["exercises"][0]["tests"][0]["message"]
    assert "\x1b[31m" in message and "\ud800" in message


def test_one_students_failure_is_that_students_row_never_the_class(tmp_path, monkeypatch):
    """A grader that raises, one stuck for good, one whose report is malformed: each becomes a
    row; rows are in the CSV as soon as their student is done; the class ends in bounded time."""
    subs = tmp_path / "class"
    for name in ("=cmd", "bad", "boom", "ok", "stuck"):
        (subs / name).mkdir(parents=True)
    out = tmp_path / "grades.csv"
    seen_while_stuck = {}
    forever = threading.Event()
    good = {"score": 3.0, "max_score": 4.0, "exercises": [{"name": "attention", "score": 3.0}]}

    def fake_grade(student_dir, reports, force, extra_args, timeout, label=None, threads=1):
        name = label
        if name == "boom":
            raise RuntimeError("\x1b[31mexploded\x1b[0m")
        if name == "bad":
            return name, {"score": "lots", "exercises": []}, "graded"
        if name == "stuck":
            deadline = time.monotonic() + 3  # the class thread writes the rows before it: give it a moment
            while len(out.read_text().splitlines()) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            seen_while_stuck["csv"] = out.read_text()
            forever.wait()  # a system call that never returns
        return name, good, "graded"

    monkeypatch.setattr(classroom, "grade_student", fake_grade)
    monkeypatch.setattr(classroom, "WATCHDOG_GRACE_S", 0.5)
    started = time.monotonic()
    rows = classroom.grade_class(subs, out, jobs=1, timeout=1.0, exercises=["attention"])
    assert time.monotonic() - started < 10
    forever.set()
    by_name = {r["student"]: r for r in rows}
    assert by_name["ok"]["score"] == 3.0 and by_name["=cmd"]["attention"] == 3.0
    assert by_name["boom"]["status"] == "grader error: RuntimeError: exploded"
    assert by_name["bad"]["status"].startswith("grader failed: its report could not be read")
    assert by_name["stuck"]["status"].startswith("timed out")
    # written as they finished: when "stuck" began, the four before it were in the file
    assert seen_while_stuck["csv"].splitlines()[0] == "student,score,max_score,attention,status"
    assert len(seen_while_stuck["csv"].splitlines()) == 5
    table = list(csv.reader(out.open(newline="")))
    assert [r[0] for r in table[1:]] == ["'=cmd", "bad", "boom", "ok", "stuck"]
    assert all(not cell.startswith(FORMULA) for r in table for cell in r)


def test_submission_folder_never_follows_a_link(tmp_path):
    student = tmp_path / "mallory"
    student.mkdir()
    os.symlink(ROOT / "solutions", student / "exercises")
    assert classroom.submission_folder(student) == student / "exercises"  # the link itself...
    assert classroom.fingerprint(student / "exercises") != classroom.fingerprint(ROOT / "solutions")  # ...not read
    names = [label for _, label in classroom.list_students(tmp_path)]
    assert names == ["mallory"]


HANGS = '''
import os, time
with open({pidfile!r}, "w") as f:
    f.write(str(os.getpid()))
time.sleep(3600)
'''


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_grader_out_of_time_is_ended_with_its_worker(tmp_path):
    """A student whose grading outlasts the student timeout (an import that sleeps, shorter
    than the worker's own per-call timeout) gets a "grader timed out" row, and neither its
    grader (a fork of the class's fork server, in a session of its own) nor its worker is
    left running."""
    import io
    import shutil
    import tempfile

    from rich.console import Console

    drop = Path(tempfile.mkdtemp(prefix="course-test-pid-"))  # the worker may run as another uid
    os.chmod(drop, 0o777)
    try:
        pidfile = drop / "pid"
        (tmp_path / "class" / "hangs").mkdir(parents=True)
        (tmp_path / "class" / "hangs" / "attention.py").write_text(HANGS.format(pidfile=str(pidfile)))
        started = time.monotonic()
        rows = classroom.grade_class(tmp_path / "class", tmp_path / "grades.csv", jobs=1, timeout=12.0,
                                     exercises=["attention"], console=Console(file=io.StringIO()))
        assert time.monotonic() - started < 12.0 + classroom.TERM_GRACE_S + 10
        assert rows[0]["status"].startswith("grader timed out after"), rows
        assert pidfile.exists(), "the worker never imported the submission: the test proves nothing"
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), f"the worker ({pid}) of a grader that timed out is still running"
        assert not classroom._LIVE
    finally:
        shutil.rmtree(drop, ignore_errors=True)
