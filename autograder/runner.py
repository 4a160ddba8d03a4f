"""The runner: pytest over the hidden suites, in this process, with points.

Each suite is a plain pytest file ``autograder/suites/test_<exercise>.py``. A test asks the
worker for the submission's values and compares them with ``solutions/`` itself. The plugin
below hands the tests their ``worker`` fixture, reads each test's ``points`` marker and
turns its outcome into a ``TestResult`` (the docstring is the line a student reads).
"""
from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

import pytest

from .report import Report, TestResult
from .sandbox import SubmissionError, Worker
from .text import clean

ROOT = Path(__file__).resolve().parent.parent
SUITES = Path(__file__).resolve().parent / "suites"


def available_exercises() -> list[str]:
    return sorted(p.stem[len("test_"):] for p in SUITES.glob("test_*.py"))


class GradingPlugin:
    def __init__(self, worker: Worker):
        self._worker = worker
        self.results: dict[str, TestResult] = {}

    @pytest.fixture(scope="session")
    def worker(self) -> Worker:
        return self._worker

    def pytest_configure(self, config):
        config.addinivalue_line("markers", "points(n): points a passing test earns")
        config.addinivalue_line("markers", "visibility(v): Gradescope visibility (default visible)")
        config.addinivalue_line("markers", "rules(*ids): the API rules (autograder/rules/<exercise>.toml) "
                                           "this test enforces")

    def pytest_collection_modifyitems(self, items):
        for item in items:
            marker = item.get_closest_marker("points")
            doc = (getattr(item, "function", None).__doc__ or item.name).strip().splitlines()[0]
            visibility = item.get_closest_marker("visibility")
            self.results[item.nodeid] = TestResult(
                exercise=Path(item.fspath).stem[len("test_"):], name=item.name.removeprefix("test_"), description=doc,
                max_points=float(marker.args[0]) if marker else 0.0, status="not run",
                visibility=visibility.args[0] if visibility else "visible")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        result = self.results[item.nodeid]
        if report.when == "call" or (report.when == "setup" and report.failed):
            result.duration += call.duration
            if report.passed:
                result.status, result.points, result.message = "passed", result.max_points, ""
            elif report.skipped:
                result.status, result.message = "skipped", clean(call.excinfo.value) if call.excinfo else ""
            else:
                result.status, result.message = _explain(call.excinfo)


def _explain(excinfo) -> tuple[str, str]:
    # messages carry the submission's own text (exception messages, printed output): cleaned
    # of terminal escapes and lone surrogates here, once, before any report sees them
    exc = excinfo.value
    if isinstance(exc, SubmissionError):
        # the sandbox says "grader error" when its own part failed (the worker could not start)
        return "error" if str(exc).startswith("grader error") else "failed", clean(str(exc))
    if isinstance(exc, (AssertionError, pytest.fail.Exception)):  # also pytest.fail, pytest.raises
        return "failed", clean(str(exc).split("\nassert ")[0])
    # anything else is the grader's own fault, not the student's: replies are validated before
    # a test sees them (autograder/replies.py), so an odd value from the submission is a
    # SubmissionError; say so plainly, and where in the grader's code (not inside torch)
    return "error", clean(f"grader error: {type(exc).__name__}: {str(exc)[:500]} at {_grader_frame(excinfo)}; "
                          f"please report it to the course staff")


def _grader_frame(excinfo) -> str:
    """file:line of the innermost traceback entry in the grader's own code (a suite,
    compare.py, ...), or of the innermost entry when none is."""
    entries = list(excinfo.traceback)
    ours = [e for e in entries if str(e.path).startswith(str(ROOT / "autograder") + "/")] or entries[-1:]
    return f"{Path(str(ours[-1].path)).name}:{ours[-1].lineno + 1}" if ours else "an unknown place"


def grade(submission: str | Path, exercises: list[str] | None = None, *,
          timeout: float = 20.0, memory_gib: float = 6.0, verbose: bool = False) -> Report:
    """Grade one submission folder on the chosen exercises (default: all)."""
    # absolute, not resolved: a submission folder that is a link must reach intake as a link
    submission = Path(submission).absolute()
    exercises = exercises or available_exercises()
    unknown = sorted(set(exercises) - set(available_exercises()))
    if unknown:
        raise ValueError(f"no hidden suite for {', '.join(unknown)}; "
                         f"known exercises: {', '.join(available_exercises())}")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the suites import solutions/ and autograder/
    started = time.monotonic()
    with Worker(submission, timeout=timeout, memory_bytes=int(memory_gib * (1 << 30))) as worker:
        plugin = GradingPlugin(worker)
        args = [str(SUITES / f"test_{name}.py") for name in exercises]
        args += ["-q", "--no-header", "--tb=no", "-p", "no:cacheprovider", "--import-mode=importlib",
                 f"--rootdir={SUITES}", "-c", str(SUITES / "pytest.ini"), "-W", "ignore"]
        output = io.StringIO()
        with contextlib.redirect_stdout(output) if not verbose else contextlib.nullcontext():
            code = pytest.main(args, plugins=[plugin])
        if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            raise RuntimeError(f"the hidden suites did not run (pytest exit code {int(code)}):\n"
                               + output.getvalue()[-3000:])
        restarts = worker.restarts
        isolation = worker.isolation()
        intake = worker.intake.to_json()
    return Report(submission=str(submission), results=list(plugin.results.values()),
                  duration=time.monotonic() - started, worker_restarts=restarts,
                  isolation=isolation, intake=intake)


def grade_public(submission: str | Path, timeout: float = 600.0) -> Report:
    """Grade the public checks (exercises/checks), for the student release, which ships no
    hidden suites; one point per check.

    The checks call the student's code in their own process, so whatever that process
    reports could be forged by the code under test. What keeps the count honest against
    the submission's own files (not against a student who edits the grader or the
    workflow, which the student's repository holds too):
    - the submission is staged by the intake rules (regular ``.py`` files, no links) into a
      private folder and imported by that path, whatever its folder is called;
    - each check file runs in a pytest process of its own, in its own session (a crash, an
      exit or a forgery costs that file only; the whole group is killed afterwards);
    - its JUnit file lies in a new private folder under a random name handed over through
      an inherited pipe (in neither the command line nor the environment), and the process
      ends right after writing it, before any atexit handler of the submission runs;
    - the file read back must be a regular file holding exactly the checks that a separate
      collection (which imports no student code) found, each once, and must agree with the
      process's exit status; anything else scores that file zero, saying why."""
    import concurrent.futures
    import os
    import shutil
    import tempfile

    from . import intake as submission_intake

    started = time.monotonic()
    checks = ROOT / "exercises" / "checks"
    expected = public_check_ids(checks)
    staging = tempfile.mkdtemp(prefix="course-public-")  # mode 700
    try:
        staged = os.path.join(staging, "submission")
        notes = submission_intake.stage_submission(submission, staged)
        deadline = time.monotonic() + timeout
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            runs = [pool.submit(_run_public_file, checks / name, names, staged, deadline)
                    for name, names in sorted(expected.items())]
            results = [r for run in runs for r in run.result()]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Report(submission=str(submission), results=results, duration=time.monotonic() - started,
                  intake=notes.to_json())


def public_check_ids(checks: Path | None = None) -> dict[str, list[str]]:
    """check file name -> its test ids (``test_forward_small[True]``), collected by pytest in
    a separate process that imports no student code (fixtures import it, and none runs)."""
    import os
    import subprocess

    checks = Path(checks or ROOT / "exercises" / "checks")
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_RESULTS_FD", "COURSE_SUBMISSION")}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(checks), "--collect-only", "-q", "-p",
                           "no:cacheprovider", f"--rootdir={checks}", "-c", os.devnull],
                          env=env, cwd=checks, capture_output=True, text=True, timeout=300)
    found: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        path, sep, name = line.strip().partition("::")
        if sep and path.endswith(".py"):
            found.setdefault(Path(path).name, []).append(name)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"the public checks in {checks} could not be collected (pytest exit code "
                           f"{proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return found


def _run_public_file(check_file: Path, names: list[str], staged: str, deadline: float) -> list[TestResult]:
    """Run one check file in its own pytest process; its results, validated."""
    import os
    import secrets
    import shutil
    import signal
    import subprocess
    import tempfile

    exercise = check_file.stem.removeprefix("test_")
    private = tempfile.mkdtemp(prefix="course-results-")  # mode 700, a new random name
    workdir = tempfile.mkdtemp(prefix="course-checks-")
    junit = os.path.join(private, secrets.token_hex(16) + ".xml")
    read_fd, write_fd = os.pipe()
    os.write(write_fd, junit.encode())  # a path fits in the pipe's buffer: no deadlock
    os.close(write_fd)
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_IMPL", "PYTHONPATH")}
    env.update(COURSE_SUBMISSION=staged, COURSE_RESULTS_FD=str(read_fd))
    status = None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", str(check_file), "-q", "-p", "no:cacheprovider",
                                 f"--rootdir={check_file.parent}", "-c", os.devnull],
                                env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, pass_fds=(read_fd,), start_new_session=True)
        os.close(read_fd)
        try:
            status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = None
        finally:
            try:  # whatever the submission left running in the group must not outlive the run
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        return _public_results(exercise, names, junit, status)
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def _public_results(exercise: str, names: list[str], junit: str, status: int | None) -> list[TestResult]:
    """The checks of one file from its JUnit file, or all failed with the reason it cannot
    be used (missing, not a regular file, other checks than collected, disagreeing with the
    exit status)."""
    import os
    import stat as stat_module
    import xml.etree.ElementTree as ElementTree

    def all_failed(why: str) -> list[TestResult]:
        return [TestResult(exercise=exercise, name=name, description="public check", max_points=1.0,
                           status="error", message=why) for name in names]

    if status is None:
        return all_failed(f"the checks of test_{exercise}.py did not finish in time")
    try:
        fd = os.open(junit, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return all_failed(f"the checks of test_{exercise}.py wrote no results (the process exited with "
                          f"status {status} before the end)")
    with os.fdopen(fd, "rb") as f:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            return all_failed(f"the results of test_{exercise}.py are not a regular file")
        data = f.read(4 << 20)
    try:
        cases = list(ElementTree.fromstring(data).iter("testcase"))
    except ElementTree.ParseError as exc:
        return all_failed(f"the results of test_{exercise}.py cannot be read ({exc})")
    found = sorted(case.get("name", "") for case in cases)
    if found != sorted(names):
        return all_failed(f"the results of test_{exercise}.py were changed: expected the checks "
                          f"{', '.join(sorted(names))}; found {', '.join(found) or 'none'}")
    results = []
    for case in cases:
        failure = case.find("failure")  # Elements without children are falsy: no `or`
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        message = "" if failure is None else (failure.get("message") or "failed").splitlines()[0][:500]
        state = "failed" if failure is not None else ("skipped" if skipped is not None else "passed")
        results.append(TestResult(exercise=exercise, name=case.get("name", ""), description="public check",
                                  max_points=1.0, points=1.0 if state == "passed" else 0.0, status=state,
                                  message=clean(message), duration=float(case.get("time", 0) or 0)))
    # pytest exits 0 when nothing failed, 1 when a check failed: results that say otherwise
    # were not the ones pytest wrote
    if (status == 0) != all(r.status != "failed" for r in results) or status not in (0, 1):
        return all_failed(f"the results of test_{exercise}.py disagree with how its checks ended "
                          f"(exit status {status}); they were changed or the run was cut short")
    return results
