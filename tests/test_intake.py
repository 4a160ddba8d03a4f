"""Intake: the grader takes regular .py files from a submission and nothing else, never
through a link and never by opening what is not a regular file; and text from a submission
is cleaned before any report shows it. Each protection is also switched off here (the code
before it, monkeypatched back in) to show that the attack then works."""
import json
import os
import shutil
import threading
import time
from io import StringIO
from pathlib import Path

import pytest
import torch
from rich.console import Console

from autograder import intake, report as report_module, worker_parent, text
from autograder.classroom import escape_cell
from autograder.intake import MAX_FILE_BYTES, MAX_FILES, MAX_TOTAL_BYTES, stage_submission
from autograder.report import Report
from autograder.worker_parent import SubmissionError, Worker
from tests.conftest import ROOT, strings

SOLUTION = ROOT / "solutions" / "attention.py"
CONTROL = [chr(c) for c in [*range(0, 9), *range(11, 32), *range(0x7f, 0xa0)]]


def old_fingerprint(folder: Path) -> str:
    """The fingerprint before intake: read every *.py under the folder, through links."""
    import hashlib
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def follow_links(src, dst, deadline=None):
    """The copy before intake, as the red team used it: links followed."""
    shutil.copytree(os.path.realpath(src), dst, symlinks=False)
    return intake.Intake(source=str(src))


def in_thread(function, *args, seconds=5.0):
    """(finished, result or exception): run ``function`` for at most ``seconds``."""
    box = {}

    def run():
        try:
            box["value"] = function(*args)
        except BaseException as exc:  # noqa: BLE001
            box["value"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box.get("value")


@pytest.fixture
def submission(tmp_path):
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "attention.py").write_text("def softmax(x, dim=-1):\n    raise NotImplementedError\n")
    return folder


# -- links ------------------------------------------------------------------------------------
def test_a_link_to_the_solutions_is_refused_and_never_read(submission, tmp_path):
    (submission / "attention.py").unlink()
    (submission / "attention.py").symlink_to(SOLUTION)
    notes = stage_submission(submission, tmp_path / "staged")
    assert not (tmp_path / "staged" / "attention.py").exists()
    assert notes.refused["attention.py"].startswith(
        f"refused: link outside your submission (attention.py -> {SOLUTION})")
    assert notes.reason("attention") == notes.refused["attention.py"]
    # with the protection off, the solution's code is what gets graded
    follow_links(submission, tmp_path / "followed")
    assert (tmp_path / "followed" / "attention.py").read_text() == SOLUTION.read_text()


def test_a_link_to_a_classmate_is_refused(tmp_path):
    alice, mallory = tmp_path / "alice", tmp_path / "mallory"
    alice.mkdir()
    mallory.mkdir()
    (alice / "attention.py").write_text("alice's work\n")
    (mallory / "attention.py").symlink_to("../alice/attention.py")
    notes = stage_submission(mallory, tmp_path / "staged")
    assert "refused: link outside your submission (attention.py -> ../alice/attention.py)" in notes.refused["attention.py"]
    assert notes.files == []


def test_a_submission_folder_that_is_a_link_is_refused_whole(tmp_path):
    student = tmp_path / "mallory"
    student.mkdir()
    os.symlink(os.path.relpath(ROOT / "solutions", student), student / "exercises")
    notes = stage_submission(student / "exercises", tmp_path / "staged")
    assert notes.whole.startswith("refused: link outside your submission (exercises -> ../")
    assert notes.whole.split("(")[1].split(")")[0].endswith("/solutions")
    assert notes.files == [] and os.listdir(tmp_path / "staged") == []
    assert notes.reason("attention") == notes.whole  # every module fails with the reason
    follow_links(student / "exercises", tmp_path / "followed")
    assert (tmp_path / "followed" / "attention.py").read_text() == SOLUTION.read_text()


def test_a_link_inside_the_submission_is_taken_as_a_copy(submission, tmp_path):
    (submission / "impl").mkdir()
    (submission / "impl" / "real.py").write_text("VALUE = 1\n")
    (submission / "alias.py").symlink_to("impl/real.py")
    (submission / "folder_link").symlink_to("impl")
    notes = stage_submission(submission, tmp_path / "staged")
    staged = tmp_path / "staged"
    assert sorted(notes.files) == ["alias.py", "attention.py", "impl/real.py"]
    assert (staged / "alias.py").read_text() == "VALUE = 1\n" and not (staged / "alias.py").is_symlink()
    assert "links to folders are not followed" in notes.skipped["folder_link"]
    assert all(not p.is_symlink() for p in staged.rglob("*"))


def test_links_to_devices_and_to_the_graders_stdin_are_refused_without_reading(submission, tmp_path):
    (submission / "zero.py").symlink_to("/dev/zero")
    (submission / "stdin.py").symlink_to("/proc/self/fd/0")
    finished, notes = in_thread(stage_submission, submission, tmp_path / "staged")
    assert finished, "intake blocked on a link to a device or to stdin"
    assert notes.refused["zero.py"].startswith("refused: link outside your submission (zero.py -> /dev/zero)")
    assert notes.refused["stdin.py"].startswith("refused: link outside your submission (stdin.py -> /proc/self/fd/0)")
    assert notes.files == ["attention.py"]


# -- things that are not regular files ----------------------------------------------------------
def test_a_folder_named_like_a_file_is_skipped(submission, tmp_path):
    (submission / "notes.py").mkdir()
    (submission / "notes.py" / "inner.py").write_text("x = 1\n")
    notes = stage_submission(submission, tmp_path / "staged")
    assert notes.skipped["notes.py"] == "skipped: notes.py is a folder, not a file"
    assert notes.files == ["attention.py"]
    intake.fingerprint(submission)  # no crash
    with pytest.raises(IsADirectoryError):  # the protection off: the class run crashed here
        old_fingerprint(submission)


def test_a_fifo_is_skipped_without_blocking(submission, tmp_path):
    os.mkfifo(submission / "pipe.py")
    finished, notes = in_thread(stage_submission, submission, tmp_path / "staged")
    assert finished, "intake blocked on a FIFO"
    assert "is a FIFO (named pipe), not a regular file (not opened)" in notes.skipped["pipe.py"]
    finished, _ = in_thread(intake.fingerprint, submission)
    assert finished
    # the protection off: reading the FIFO blocks until someone writes to it
    finished, _ = in_thread(old_fingerprint, submission, seconds=1.0)
    assert not finished
    fd = os.open(submission / "pipe.py", os.O_WRONLY | os.O_NONBLOCK)  # unblock that reader
    os.close(fd)


def test_hidden_folders_and_caches_are_left_out(submission, tmp_path):
    for folder in (".git", "__pycache__", ".hidden"):
        (submission / folder).mkdir()
        (submission / folder / "attention.py").write_text("stale\n")
    (submission / "notes.md").write_text("not code\n")
    notes = stage_submission(submission, tmp_path / "staged")
    assert notes.files == ["attention.py"] and not notes.skipped and not notes.refused


def test_a_file_swapped_for_a_link_while_being_read_is_not_followed(submission, tmp_path, monkeypatch):
    """The race: between the walk's lstat and the open, attention.py becomes a link to the
    solutions. The open does not follow it."""
    real_open = os.open

    def swapping_open(path, flags, *args, **kwargs):
        if path == "attention.py" and not (submission / "attention.py").is_symlink():
            (submission / "attention.py").unlink()
            (submission / "attention.py").symlink_to(SOLUTION)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(intake.os, "open", swapping_open)
    notes = stage_submission(submission, tmp_path / "staged")
    assert not (tmp_path / "staged" / "attention.py").exists()
    assert "attention.py could not be opened" in notes.skipped["attention.py"]


# -- caps -----------------------------------------------------------------------------------
def test_a_file_over_1_mib_is_refused(submission, tmp_path):
    (submission / "big.py").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    notes = stage_submission(submission, tmp_path / "staged")
    assert "more than the 1 MiB a file may hold" in notes.refused["big.py"]
    assert notes.files == ["attention.py"]


def test_more_than_16_mib_in_all_is_refused_by_name(submission, tmp_path):
    for i in range(MAX_TOTAL_BYTES // MAX_FILE_BYTES + 2):
        (submission / f"part{i:02d}.py").write_bytes(b"#" * MAX_FILE_BYTES)
    notes = stage_submission(submission, tmp_path / "staged")
    total = sum(p.stat().st_size for p in (tmp_path / "staged").rglob("*.py"))
    assert total <= MAX_TOTAL_BYTES
    assert notes.refused and all("more than 16 MiB of .py files in all" in r for r in notes.refused.values())
    assert "part17.py" in notes.refused


def test_more_than_500_files_are_refused_and_counted(submission, tmp_path):
    for i in range(MAX_FILES + 30):
        (submission / f"m{i:04d}.py").write_text("")
    notes = stage_submission(submission, tmp_path / "staged")
    assert len(notes.files) == MAX_FILES
    assert len(list((tmp_path / "staged").glob("*.py"))) == MAX_FILES
    assert "more than 500 .py files" in next(iter(notes.refused.values()))
    assert any(key.startswith("(") and "more files" in key for key in notes.refused)  # the rest, counted


def test_the_fingerprint_changes_with_the_files_and_the_refusals(submission):
    before = intake.fingerprint(submission)
    (submission / "rope.py").symlink_to(ROOT / "solutions" / "rope.py")
    with_link = intake.fingerprint(submission)
    assert with_link != before
    (submission / "rope.py").unlink()
    assert intake.fingerprint(submission) == before
    (submission / "attention.py").write_text("changed\n")
    assert intake.fingerprint(submission) != before


def test_a_slow_walk_stops_at_its_deadline(submission):
    with pytest.raises(intake.IntakeTimeout):
        intake.read_submission(submission, deadline=time.monotonic() - 1)


# -- the worker imports the staged copy ---------------------------------------------------------
@pytest.mark.slow
def test_the_worker_fails_a_refused_module_with_the_reason(submission, tmp_path, monkeypatch):
    shutil.copy(SOLUTION, submission / "honest.py")
    (submission / "attention.py").unlink()
    (submission / "attention.py").symlink_to(SOLUTION)
    x = torch.randn(3, 5)
    with Worker(submission) as w:
        assert w.source_path("honest") is not None and w.source_path("honest").read_text() == SOLUTION.read_text()
        assert w.source_path("attention") is None and w.source_path("../x") is None
        with pytest.raises(SubmissionError) as err:
            w.call("attention.softmax", x)
        assert err.value.kind == "refused"
        assert str(err.value).startswith(f"refused: link outside your submission (attention.py -> {SOLUTION})")
        assert torch.allclose(w.call("honest.softmax", x), torch.softmax(x, -1))
        staging = w.staging
    assert not os.path.exists(staging)  # removed on close
    # the protection off: the link is followed and the reference's softmax is graded
    monkeypatch.setattr(worker_parent.submission_intake, "stage_submission", follow_links)
    with Worker(submission) as w:
        assert torch.allclose(w.call("attention.softmax", x), torch.softmax(x, -1))


# -- text from a submission -----------------------------------------------------------------
HOSTILE = "\x1b[31mred\x1b[0m\rhidden\x1b]0;owned\x07 \ud800 \x9b2J \u202egnp.exe\x00 [bold]markup[/bold]\r\nnext"


def test_clean_removes_control_characters_and_surrogates():
    cleaned = text.clean(HOSTILE)
    assert not any(c in cleaned for c in CONTROL) and "\ud800" not in cleaned and "\u202e" not in cleaned
    assert "red" in cleaned and "hidden" in cleaned and "\ufffd" in cleaned and "[bold]markup[/bold]" in cleaned
    assert "owned" not in cleaned  # a whole escape sequence goes, not just its ESC
    assert cleaned.endswith("\nnext") and "\t" in text.clean("a\tb")
    cleaned.encode("utf-8")  # no lone surrogate left
    cut = text.clean("x" * 100, limit=10)
    assert cut.startswith("x" * 10) and "90 more characters cut" in cut
    assert text.clean_name("a\nb\x1b[1mc") == "a?b?c"


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped():
    for cell in ('=HYPERLINK("x")', "+1", "-1", "@SUM(A1)", "\t=1", "\r=1"):
        assert escape_cell(cell).startswith("'"), cell
    assert escape_cell("alice") == "alice" and escape_cell(63.0) == "63.0"
    assert escape_cell("a\x1b[31mb") == "ab"


def hostile_report() -> Report:
    result = report_module.TestResult(exercise="attention", name="softmax_values[\x1b[2J]", description="softmax",
                        max_points=1.0, status="failed", message=f"RuntimeError in attention.softmax: {HOSTILE}")
    return Report(submission="/class/\x1b[31mmallory", results=[result], duration=1.0,
                  intake={"files": [], "refused": {"x.py": "refused: link outside your submission (x.py -> \x1b[2J)"},
                          "skipped": {}, "whole": ""})


def no_control(value: str) -> bool:
    return not any(c in value for c in CONTROL) and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)


def test_reports_carry_no_control_characters_or_surrogates(tmp_path, monkeypatch):
    report = hostile_report()
    for data in (report.to_json(), report.to_gradescope()):
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # no surrogate to trip on
        assert all(no_control(s.replace("\n", "")) for s in strings(data)), data
    out = StringIO()
    report.print(Console(file=out, width=200, force_terminal=False))
    assert no_control(out.getvalue().replace("\n", "")) and "Intake: refused: link outside" in out.getvalue()
    # the protection off: the escapes and the surrogate reach the JSON
    monkeypatch.setattr(report_module, "clean_data", lambda value, limit=None: value)
    raw = report.to_json()
    assert "\x1b" in raw["submission"] and "\ud800" in raw["exercises"][0]["tests"][0]["message"]


def test_printing_falls_back_to_ascii_when_the_terminal_refuses(capsys, monkeypatch):
    report = hostile_report()

    class Broken:
        is_terminal = False

        def print(self, *args, **kwargs):
            raise UnicodeEncodeError("ascii", "\u2500", 0, 1, "ordinal not in range(128)")

    monkeypatch.setattr(report_module, "Console", lambda *a, **k: Broken())
    report.print_safely()  # no exception
    printed = capsys.readouterr().out
    assert "plain text follows" in printed and "Total: 0 / 1 points" in printed and printed.isascii()
    assert no_control(printed.replace("\n", ""))
