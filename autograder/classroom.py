"""Grading a whole class: one grader process per student, a progress bar, reports and a CSV.

``python -m autograder grade-class SUBMISSIONS_DIR --out grades.csv [--jobs N] [--force]``

SUBMISSIONS_DIR holds one folder per student (its ``exercises/`` subfolder if it has one,
else the folder itself, is graded). Each student is graded by its own grader process (what
``python -m autograder grade`` runs, forked from a server that has imported torch, pytest and
the grader once for the class), so a broken or hostile submission can cost only its own
report. Next to the CSV, ``reports/<student>.json`` and ``reports/<student>.txt`` hold the
full report and the feedback table. A student whose files have not changed since their
report was written is skipped unless ``--force``.

Every student folder is hostile: nothing here follows a link in it or opens what is not a
regular file (``intake``), whatever goes wrong with one student (an exception, a timeout, a
report that cannot be read) becomes that student's row and never stops the class, and the
CSV is written row by row as students finish, its cells escaped so that a spreadsheet reads
none of them as a formula.
"""
from __future__ import annotations

import csv
import json
import os
import queue
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from . import intake
from .isolation import make_private, running_as_root, site_dirs
from .text import clean, clean_name

ROOT = Path(__file__).resolve().parent.parent
MAX_REPORT_BYTES = 64 << 20
WATCHDOG_GRACE_S = 60.0  # past a student's timeout, the class stops waiting for its thread
TERM_GRACE_S = 10.0  # a timed-out grader gets this long to end its worker before SIGKILL
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# graders running now: each has a session of its own (so that a timeout can end its whole
# group), which also keeps a Ctrl-C from reaching it; grade_class ends them when it stops early
_LIVE: set = set()  # multiprocessing Process objects
_LIVE_LOCK = threading.Lock()


def submission_folder(student_dir: Path) -> Path:
    """The student's ``exercises/`` if there is one, else the student's folder. Decided from
    lstat, never through a link: an ``exercises`` that is a link is returned as the link,
    which intake then refuses (it would otherwise hand in ``solutions/`` or a classmate)."""
    candidate = Path(student_dir) / "exercises"
    try:
        mode = os.lstat(candidate).st_mode
    except OSError:
        return Path(student_dir)
    return candidate if stat.S_ISDIR(mode) or stat.S_ISLNK(mode) else Path(student_dir)


def fingerprint(folder: Path, deadline: float | None = None) -> str:
    """A hash of what intake takes from the submission: a re-run skips students whose files
    are unchanged. Reads only regular files, never through a link (``intake.fingerprint``)."""
    return intake.fingerprint(folder, deadline)


def escape_cell(value) -> str:
    """A CSV cell a spreadsheet shows as text: no control characters, and a leading quote
    before ``= + - @``, tab or CR, which would make it a formula (``=HYPERLINK(...)``)."""
    text = "" if value is None else clean(str(value), limit=2000).replace("\n", " ")
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def list_students(submissions: Path, exclude: list[Path] = ()) -> list[tuple[Path, str]]:
    """(folder, name to show) for each student: every entry that is a folder or a link to one
    (the link is then refused at intake, with a row that says so); hidden entries and
    ``exclude`` (the reports folder, if it lies inside) are left out. Names are cleaned of
    control characters and made unique, for the CSV, the terminal and the report files."""
    excluded = {os.path.realpath(p) for p in exclude}
    students, seen = [], set()
    with os.scandir(submissions) as entries:
        found = sorted(entries, key=lambda e: e.name)
    for entry in found:
        if entry.name.startswith("."):
            continue
        try:
            is_link = entry.is_symlink()
            if not (entry.is_dir(follow_symlinks=False) or (is_link and os.path.isdir(entry.path))):
                continue
        except OSError:
            continue
        if not is_link and os.path.realpath(entry.path) in excluded:
            continue
        label = base = clean_name(entry.name)
        number = 2
        while label in seen:
            label, number = f"{base}~{number}", number + 1
        seen.add(label)
        students.append((Path(entry.path), label))
    return students


def read_report(path: Path) -> dict | None:
    """The JSON report at ``path`` if it is a regular file (never through a link), else None.
    Raises ValueError when it is there but cannot be read as a report."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{Path(path).name} cannot be opened ({exc.strerror or exc}; a link?)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{Path(path).name} is not a regular file")
        data = f.read(MAX_REPORT_BYTES + 1)
    if len(data) > MAX_REPORT_BYTES:
        raise ValueError(f"{Path(path).name} is larger than {MAX_REPORT_BYTES >> 20} MiB")
    try:
        report = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{Path(path).name} is not valid JSON ({exc})") from None
    summary(report)  # raises ValueError when a field the CSV needs is missing or malformed
    return report


def summary(report) -> tuple[float, float, dict[str, float]]:
    """(score, max score, exercise -> score) of a report, or ValueError saying what is wrong."""
    def number(value, what):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"the report's {what} is {type(value).__name__}, expected a number")
        return value

    if not isinstance(report, dict):
        raise ValueError(f"the report is a JSON {type(report).__name__}, expected an object")
    exercises = report.get("exercises")
    if not isinstance(exercises, list):
        raise ValueError("the report has no list of exercises")
    scores = {}
    for ex in exercises:
        if not isinstance(ex, dict) or not isinstance(ex.get("name"), str):
            raise ValueError("an exercise in the report has no name")
        scores[ex["name"]] = number(ex.get("score"), f"score of {ex['name']}")
    return number(report.get("score"), "score"), number(report.get("max_score"), "max_score"), scores


def write_replacing(path: Path, text: str) -> None:
    """Write ``path`` by renaming a new file over it: a link planted at ``path`` is replaced,
    never written through."""
    fd, part = tempfile.mkstemp(dir=Path(path).parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(part, path)
    except BaseException:
        _remove(part)
        raise


def grade_student(student_dir: Path, reports: Path, force: bool, extra_args: list[str],
                  timeout: float, label: str | None = None, threads: int = 1) -> tuple[str, dict | None, str]:
    """Grade one student: (name, report or None, status). Everything here, the reading of the
    student's files included, runs within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    name = label or clean_name(Path(student_dir).name)
    folder = submission_folder(student_dir)
    report_path, text_path = reports / f"{name}.json", reports / f"{name}.txt"
    try:
        stamp = fingerprint(folder, deadline)
    except intake.IntakeTimeout as exc:
        status = f"timed out: {exc}"
        write_replacing(text_path, status + "\n")
        return name, None, status
    if not force:
        try:
            old = read_report(report_path)
        except ValueError:
            old = None  # unreadable: graded afresh, and the new report replaces it
        if old is not None and old.get("fingerprint") == stamp:
            return name, old, "skipped (unchanged)"
    # the grader writes to a new file of ours, not to reports/<name>.json: whatever is there
    # (a link, say) is replaced afterwards, never followed
    fd, fresh = tempfile.mkstemp(dir=reports, prefix=".grading-", suffix=".json.part")
    os.close(fd)
    try:
        status, output = _run_grader(folder, fresh, extra_args, deadline - time.monotonic(), threads)
        report = None
        if status == "graded":
            try:
                report = read_report(Path(fresh))
            except ValueError as exc:
                status = f"grader failed: its report could not be read ({clean(exc, 300)})"
            if report is None and status == "graded":
                status = "grader failed: it wrote no report"
        write_replacing(text_path, clean(output, limit=2_000_000) + ("" if output.endswith("\n") else "\n"))
        if report is None:
            return name, None, status
        report["fingerprint"] = stamp
        write_replacing(report_path, json.dumps(report, indent=2))
        return name, report, _status_of(report)
    finally:
        _remove(fresh)


# what every grader imports, imported once per class by a fork server: each student's grader
# is then a fork of it (its own process and session as before) and skips 2-3 s of CPU of
# imports, torch._dynamo's (which torch.optim pulls in on first use) among them
PRELOAD = ["torch", "torch._dynamo", "torch.optim", "pytest", "rich.console", "autograder.cli",
           "autograder.runner", "autograder.compare", "autograder.static", "autograder.report",
           "autograder.catalogue", "solutions"]
_FORKSERVER = None
_FORKSERVER_LOCK = threading.Lock()


def _graders():
    """The multiprocessing context whose fork server holds ``PRELOAD`` (the server starts
    with the first grader; POSIX systems have it, and the worker needs POSIX anyway)."""
    global _FORKSERVER
    with _FORKSERVER_LOCK:
        if _FORKSERVER is None:
            import multiprocessing

            _FORKSERVER = multiprocessing.get_context("forkserver")
            _FORKSERVER.set_forkserver_preload(PRELOAD)
        return _FORKSERVER


def grader_threads(jobs: int) -> int:
    """Torch threads of each grader: the cores shared among the jobs (OpenMP threads that
    spin waiting for work cost a parallel class a sixth of its CPU otherwise)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def _grader_main(argv: list[str], out_path: str, err_path: str, threads: int) -> None:
    """A student's grader, in a process forked from the fork server: a session of its own (a
    timeout ends it and its workers by process group), its output to files of ours."""
    os.setsid()
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(ROOT)
    import torch

    torch.set_num_threads(threads)
    from .cli import main

    raise SystemExit(main(argv))


def _run_grader(folder: Path, report_file: str, extra_args: list[str], remaining: float,
                threads: int = 1) -> tuple[str, str]:
    """Run the grader (``python -m autograder grade``) on one submission: (status, its output)."""
    if remaining <= 0:
        return "grader timed out before it started (reading the files took the whole timeout)", ""
    argv = ["grade", "--submission", str(folder), "--json", report_file, *extra_args]
    context = _graders()
    scratch = tempfile.mkdtemp(prefix="course-grader-")  # mode 700: the output is ours alone
    out_path, err_path = os.path.join(scratch, "out"), os.path.join(scratch, "err")
    for path in (out_path, err_path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    proc = context.Process(target=_grader_main, args=(argv, out_path, err_path, threads), daemon=False)
    try:
        with _LIVE_LOCK:
            proc.start()
            _LIVE.add(proc)
        proc.join(remaining)
        timed_out = proc.exitcode is None
        if timed_out:
            _end(proc)
        out, err = (_read_tail(path) for path in (out_path, err_path))
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)
        shutil.rmtree(scratch, ignore_errors=True)
    text = out + (err if proc.exitcode else "")
    if timed_out:
        return f"grader timed out after {remaining:.0f} s", out + err + f"\ngrader timed out after {remaining:.0f} s\n"
    return ("graded" if proc.exitcode == 0 else f"grader failed ({proc.exitcode})"), text


def _read_tail(path: str, limit: int = 4 << 20) -> str:
    """The last ``limit`` bytes of a grader's output file, decoded."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - limit))
        return _decode(f.read())


def _end(proc) -> None:
    """SIGTERM first (the grader then ends its worker), SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            # not yet in a session of its own (it had just started): the process alone
            try:
                os.kill(proc.pid, sig)
            except OSError:
                pass
        proc.join(wait)
        if proc.exitcode is not None:
            return


def _decode(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")


def _status_of(report: dict) -> str:
    """"graded", or what intake refused: the instructor sees an attempt in the CSV."""
    notes = report.get("intake") if isinstance(report.get("intake"), dict) else {}
    if notes.get("whole"):
        return clean(notes["whole"], 500)
    refused = [str(v) for v in (notes.get("refused") or {}).values()]
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        return "graded; " + clean(refused[0], 300) + more
    return "graded"


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _row(name: str, report: dict | None, status: str) -> dict:
    row = {"student": name, "status": status}
    if report is not None:
        score, max_score, scores = summary(report)
        row.update(score=score, max_score=max_score, **{f"ex:{k}": v for k, v in scores.items()})
    return row


class _Csv:
    """The CSV, written as students finish (a header first, flushed after each row), then
    rewritten complete and in name order when the class is done."""

    def __init__(self, path: Path, exercises: list[str]):
        self.path, self.exercises = Path(path), list(exercises)
        self.file = open(self.path, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow(self.header())
        self.file.flush()

    def header(self) -> list[str]:
        return [escape_cell(c) for c in ("student", "score", "max_score", *self.exercises, "status")]

    def cells(self, row: dict) -> list[str]:
        values = [row.get("student"), row.get("score", ""), row.get("max_score", ""),
                  *(row.get(f"ex:{ex}", "") for ex in self.exercises), row.get("status")]
        return [escape_cell(v) for v in values]

    def add(self, row: dict) -> None:
        self.writer.writerow(self.cells(row))
        self.file.flush()

    def finish(self, rows: list[dict]) -> None:
        self.file.close()
        for row in rows:  # an exercise no header named (none is expected): a column at the end
            self.exercises += [k[3:] for k in row if k.startswith("ex:") and k[3:] not in self.exercises]
        fd, part = tempfile.mkstemp(dir=self.path.parent, prefix=".grades-", suffix=".csv.part")
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(self.header())
            for row in rows:
                writer.writerow(self.cells(row))
        os.replace(part, self.path)


def _run_all(students, grade_one, jobs: int, timeout: float, on_done) -> None:
    """``grade_one(student)`` for each student on ``jobs`` threads; ``on_done(student, result)``
    in this thread as each finishes. The threads are daemons and watched: one stuck past its
    student's timeout (a system call that never returns) is given up on, its student gets a
    row that says so, a new thread takes its place, and the class goes on."""
    pending: queue.Queue = queue.Queue()
    for student in students:
        pending.put(student)
    done: queue.Queue = queue.Queue()
    started: dict[int, float] = {}

    def loop():
        while True:
            try:
                index = pending.get_nowait()
            except queue.Empty:
                return
            started[index] = time.monotonic()
            done.put((index, grade_one(index)))

    def spawn():
        threading.Thread(target=loop, daemon=True, name="grade-class").start()

    for _ in range(max(1, min(jobs, len(students)))):
        spawn()
    finished: set[int] = set()
    while len(finished) < len(students):
        try:
            index, result = done.get(timeout=1.0)
        except queue.Empty:
            now = time.monotonic()
            for index, since in list(started.items()):
                if index not in finished and now - since > timeout + WATCHDOG_GRACE_S:
                    finished.add(index)
                    on_done(index, None)
                    spawn()
            continue
        if index not in finished:  # else: given up on earlier, its late result is dropped
            finished.add(index)
            on_done(index, result)


def grade_class(submissions: Path, out_csv: Path, jobs: int = 1, force: bool = False,
                extra_args: list[str] | None = None, timeout: float = 1800.0,
                console: Console | None = None, exercises: list[str] | None = None) -> list[dict]:
    """Grade every student of ``submissions``; returns one row per student (also in the CSV).
    ``exercises``: only these (default: all); ``timeout``: the most one student may take.
    The graders are multiprocessing fork-server children: a script that calls this must do so
    under ``if __name__ == "__main__":`` (each grader re-imports the main script, as with any
    multiprocessing start method other than fork; ``python -m autograder`` and pytest are fine)."""
    console = console or Console(stderr=True)
    submissions = Path(submissions)
    reports = Path(out_csv).resolve().parent / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    extra_args = [*(extra_args or []), *(a for name in (exercises or []) for a in ("--exercise", name))]
    if running_as_root():
        # each worker runs as an unprivileged uid: keep the other students' files and the
        # reports out of its reach (chmod o-rwx; owner and group are unchanged)
        failed = make_private([submissions.resolve(), reports],
                              keep=[sys.executable, os.path.realpath(sys.executable), *site_dirs()])
        if failed:
            console.print(Text(f"warning: could not make these private, so other students' workers may read "
                               f"them: {clean('; '.join(failed[:5]), 2000)}", style="bold red"))
    students = list_students(submissions, exclude=[reports])
    if not exercises:
        from .runner import available_exercises  # the columns, known before any student is graded
        exercises = available_exercises()
    table = _Csv(Path(out_csv), exercises)
    rows: dict[int, dict] = {}
    threads = grader_threads(jobs)

    def grade_one(index: int):
        folder, name = students[index]
        try:
            return grade_student(folder, reports, force, extra_args, timeout, label=name, threads=threads)
        except Exception as exc:  # noqa: BLE001 - one student's failure is that student's row
            return name, None, f"grader error: {type(exc).__name__}: {clean(exc, 300)}"

    # markup=False: a student named "[bold]..." is shown as written, not as rich markup
    with Progress(TextColumn("[bold]grading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}", markup=False), console=console) as progress:
        task = progress.add_task("", total=len(students))

        def on_done(index: int, result) -> None:
            name = students[index][1]
            if result is None:
                result = (name, None, f"timed out: still running {timeout + WATCHDOG_GRACE_S:.0f} s after "
                                      f"it started; given up")
            _, report, status = result
            try:
                row = _row(name, report, clean(status, 1000))
            except ValueError as exc:
                row = _row(name, None, f"grader failed: its report could not be read ({clean(exc, 300)})")
            rows[index] = row
            table.add(row)
            progress.update(task, advance=1, description=clean_name(f"{name}: {row['status']}", 100))

        try:
            _run_all(list(range(len(students))), grade_one, jobs, timeout, on_done)
        except BaseException:  # Ctrl-C, or a full disk: end the graders still running
            with _LIVE_LOCK:
                running = list(_LIVE)
            for proc in running:
                _end(proc)
            raise
    ordered = [rows[i] for i in range(len(students))]
    table.finish(ordered)
    # the rows as callers read them: exercise columns by their own names
    return [{(k[3:] if k.startswith("ex:") else k): v for k, v in row.items()} for row in ordered]


def classroom_score(report_path: Path, check: str | None = None) -> int:
    """For GitHub Classroom's command grader, which gives a step its whole max-score when the
    command exits 0 and nothing otherwise: print the score and exit 0 only at full marks.
    ``check`` ("attention/test_softmax_small_example"): exit 0 only if that check passed, so
    one grader step per check (worth its points) makes Classroom's points the public grade."""
    report = json.loads(Path(report_path).read_text())
    percent = round(100 * report["score"] / report["max_score"]) if report["max_score"] else 0
    print(f"score: {report['score']:g} / {report['max_score']:g} ({percent}%)")
    if check is None:
        return 0 if report["max_score"] and report["score"] >= report["max_score"] else 1
    tests = {f"{ex['name']}/{t['name']}": t for ex in report.get("exercises", []) for t in ex.get("tests", [])}
    if check not in tests:
        print(f"no check named {check} in {report_path}; its checks: {', '.join(sorted(tests)) or 'none'}")
        return 1
    test = tests[check]
    print(f"{check}: {test['status']}" + (f" ({test['message']})" if test.get("message") else ""))
    return 0 if test["status"] == "passed" else 1
