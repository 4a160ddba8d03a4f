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
from .isolation import LIMITS
from .worker_parent import SubmissionError, Worker
from .text import clean

ROOT = Path(__file__).resolve().parent.parent
SUITES = Path(__file__).resolve().parent / "suites"
CHECKS = ROOT / "exercises" / "checks"  # the public suites, graded by the same engine


def available_exercises(public: bool = False) -> list[str]:
    """The exercises with a hidden suite (``public``: with a public suite), in course order."""
    from .exercises import course_order

    folder = CHECKS if public else SUITES
    return course_order(p.stem[len("test_"):] for p in folder.glob("test_*.py"))


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
        config.addinivalue_line("markers", "mirrors(*names): the hidden tests a public test mirrors "
                                           "(for 'public checks cover N of the M points')")

    def pytest_collection_finish(self, session):
        # after -k and other deselection: only the tests that run are in the report
        for item in session.items:
            marker = item.get_closest_marker("points")
            doc = (getattr(item, "function", None).__doc__ or item.name).strip().splitlines()[0]
            visibility = item.get_closest_marker("visibility")
            self.results[item.nodeid] = TestResult(
                exercise=Path(item.fspath).stem[len("test_"):], name=_report_name(item.name), description=doc,
                max_points=float(marker.args[0]) if marker else 0.0, status="not run",
                visibility=visibility.args[0] if visibility else "visible")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        result = self.results.get(item.nodeid)
        if result is None:
            return
        if report.when == "call" or (report.when == "setup" and report.failed):
            result.duration += call.duration
            if report.passed:
                result.status, result.points, result.message = "passed", result.max_points, ""
            elif report.skipped:
                result.status, result.message = "skipped", clean(call.excinfo.value) if call.excinfo else ""
            else:
                result.status, result.message = _explain(call.excinfo)


def _report_name(test: str) -> str:
    """The name a report shows: without ``test_`` (hidden suites) or ``test_public_`` (public
    suites, whose functions never share a name with a hidden test: the release's leak check
    looks for hidden test names)."""
    return test.removeprefix("test_").removeprefix("public_")


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
          timeout: float = LIMITS.timeout_s, memory_gib: float = LIMITS.memory_gib, verbose: bool = False,
          public: bool = False, keyword: str | None = None) -> Report:
    """Grade one submission folder on the chosen exercises (default: all).

    ``public``: the public suites (exercises/checks/test_<exercise>.py) instead of the
    hidden ones, by the same engine (the student release has only those).
    ``keyword``: pytest's ``-k`` expression, to run some tests only (``-k softmax``)."""
    # absolute, not resolved: a submission folder that is a link must reach intake as a link
    submission = Path(submission).absolute()
    known = available_exercises(public)
    exercises = list(dict.fromkeys(exercises or known))
    unknown = [name for name in exercises if name not in known]
    if unknown:
        kind = "public suite" if public else "hidden suite"
        raise ValueError(f"no {kind} for {', '.join(unknown)}; the exercises are: {', '.join(known)}")
    from .exercises import course_order

    exercises = course_order(exercises)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the suites import solutions/ and autograder/
    folder = CHECKS if public else SUITES
    started = time.monotonic()
    with Worker(submission, timeout=timeout, memory_bytes=int(memory_gib * (1 << 30))) as worker:
        plugin = GradingPlugin(worker)
        args = [str(folder / f"test_{name}.py") for name in exercises]
        # no:unraisableexception: its five gc.collect() at the end cost 0.6 s of every grading
        args += ["-q", "--no-header", "--tb=no", "-p", "no:cacheprovider", "-p", "no:unraisableexception",
                 "--import-mode=importlib",
                 f"--rootdir={folder}", "-c", str(folder / "pytest.ini"), "-W", "ignore"]
        if keyword:
            args += ["-k", keyword]
        output = io.StringIO()
        with contextlib.redirect_stdout(output) if not verbose else contextlib.nullcontext():
            code = pytest.main(args, plugins=[plugin])
        if code == pytest.ExitCode.NO_TESTS_COLLECTED and keyword:
            raise ValueError(f"-k {keyword!r} selects no test of {', '.join(exercises)}")
        if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            raise RuntimeError(f"the {'public' if public else 'hidden'} suites did not run (pytest exit code "
                               f"{int(code)}):\n" + output.getvalue()[-3000:])
        restarts = worker.restarts
        isolation = worker.isolation()
        intake = worker.intake.to_json()
    coverage = {}
    if public:
        from .public import coverage as public_coverage

        coverage = {name: found for name in exercises if (found := public_coverage(name))}
    return Report(submission=str(submission), results=list(plugin.results.values()),
                  duration=time.monotonic() - started, worker_restarts=restarts,
                  isolation=isolation, intake=intake, exercises=exercises, public=public,
                  coverage=coverage)


def grade_public(submission: str | Path, exercises: list[str] | None = None, **kwargs) -> Report:
    """The public suites, graded like the hidden ones (what the student release runs)."""
    return grade(submission, exercises, public=True, **kwargs)


def public_check_ids() -> dict[str, list[tuple[str, float]]]:
    """exercise -> its public tests (name without ``test_``, points), collected in this
    process without a worker (collection runs no student code)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    plugin = GradingPlugin(None)
    args = [str(CHECKS / f"test_{name}.py") for name in available_exercises(public=True)]
    args += ["-q", "--collect-only", "-p", "no:cacheprovider", "--import-mode=importlib", f"--rootdir={CHECKS}",
             "-c", str(CHECKS / "pytest.ini"), "-W", "ignore"]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = pytest.main(args, plugins=[plugin])
    if code != pytest.ExitCode.OK:
        raise RuntimeError(f"the public suites could not be collected (pytest exit code {int(code)}):\n"
                           + output.getvalue()[-3000:])
    found: dict[str, list[tuple[str, float]]] = {}
    for result in plugin.results.values():
        found.setdefault(result.exercise, []).append((result.name, result.max_points))
    return found
