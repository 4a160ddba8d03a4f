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
    hidden suites. They run in a separate pytest process (a crash or an exit in student code
    ends that process, not the grader), one point per check, read back from JUnit XML."""
    import os
    import subprocess
    import tempfile
    import xml.etree.ElementTree as ElementTree

    submission = Path(submission).resolve()
    checks = ROOT / "exercises" / "checks"
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        env = dict(os.environ, COURSE_IMPL=submission.name,
                   PYTHONPATH=os.pathsep.join([str(submission.parent), str(ROOT)]))
        try:
            subprocess.run([sys.executable, "-m", "pytest", str(checks), "-q", "-p", "no:cacheprovider",
                            f"--junitxml={junit}", f"--rootdir={checks}", "-c", os.devnull],
                           env=env, cwd=tmp, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pass  # whatever finished is in the XML; the rest is reported as not run
        results = []
        if junit.exists():
            for case in ElementTree.parse(junit).getroot().iter("testcase"):
                exercise = case.get("classname", "").rsplit(".", 1)[-1].removeprefix("test_")
                failure = case.find("failure")  # Elements without children are falsy: no `or`
                if failure is None:
                    failure = case.find("error")
                skipped = case.find("skipped")
                message = "" if failure is None else (failure.get("message") or "failed").splitlines()[0][:500]
                status = "passed" if failure is None and skipped is None else ("skipped" if skipped is not None else "failed")
                results.append(TestResult(exercise=exercise, name=case.get("name", ""),
                                          description="public check", max_points=1.0,
                                          points=1.0 if status == "passed" else 0.0, status=status,
                                          message=message, duration=float(case.get("time", 0))))
    if not results:
        results.append(TestResult(exercise="public checks", name="run", description="the public checks ran",
                                  max_points=1.0, status="error",
                                  message=f"the public checks did not run (timeout {timeout:.0f} s or a crash)"))
    return Report(submission=str(submission), results=results, duration=time.monotonic() - started)
