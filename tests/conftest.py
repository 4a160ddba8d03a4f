"""Helpers for the repository's tests: grade a folder end to end through the CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# With pytest-xdist (pytest.ini: -n 2 --dist loadgroup) a module's tests run in one worker, so
# its module- and session-scoped fixtures (a release, every mutant graded) are built once;
# these modules share nothing between their tests, so their tests spread over the workers.
SPREAD_MODULES = {"test_lectures", "test_lecture_editions"}
# these share the session's student release (building one records the reference: minutes)
RELEASE_MODULES = {"test_grading_paths", "test_instructor", "test_public_release", "test_site"}

# each xdist worker's graders lease uids from their own part of the pool: a test that looks for
# processes a hostile submission's uid left behind must not see another worker's grader
if os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    _index, _count = int(os.environ["PYTEST_XDIST_WORKER"][2:]), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _size = 64 // max(_count, 1)
    os.environ["COURSE_UID_POOL"] = f"{61000 + _index * _size}-{61000 + (_index + 1) * _size - 1}"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if module not in SPREAD_MODULES:
            item.add_marker(pytest.mark.xdist_group("release" if module in RELEASE_MODULES else module))


class _GroupsTakeEffect:
    """pytest-xdist's ``--dist loadgroup`` keeps a group's tests in one worker by writing the
    group into each node id (``...::test[x]@group``). Where that write has no effect (pytest 9
    with xdist 3.8) the groups silently vanish and every module- or session-scoped fixture is
    built once per worker: the suite takes twice the time and still passes. Fail instead."""

    @pytest.hookimpl(trylast=True)  # after xdist's own hook has written the groups
    def pytest_collection_modifyitems(self, config, items):
        if not getattr(config.option, "loadgroup", False):
            return  # not an xdist worker with --dist loadgroup
        lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(f"pytest-xdist's loadgroup did not take effect (e.g. {lost[0]}): this pytest "
                                    f"and pytest-xdist do not work together; use the versions in requirements.txt")


def pytest_configure(config):
    config.pluginmanager.register(_GroupsTakeEffect(), "course-groups-take-effect")


def run_grader(submission, *args, timeout=600, course=ROOT, report=None, env=None):
    """``python -m autograder grade`` in a fresh process; returns (completed process, report).
    ``course``: the course folder whose grader runs (a copy, for the hostile tests)."""
    out = report or Path(tempfile.mkdtemp(prefix="course-report-")) / "report.json"  # never inside the repository
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "--submission", str(submission),
                           "--json", str(out), *args], cwd=course, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "LC_ALL": "C.UTF-8", **(env or {})})  # English messages, whatever the locale
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, report


def run_drivers(root: Path, module: str, halves, *args, timeout=3600) -> dict:
    """``python -m MODULE SPEC OUT ARGS...`` once per list of jobs, side by side (one process
    per core), each grading its jobs in turn; returns the processes' JSON outputs merged."""
    procs = []
    for index, half in enumerate(halves):
        spec = root / f"jobs{index}.json"
        spec.write_text(json.dumps(half))
        procs.append(subprocess.Popen([sys.executable, "-m", module, str(spec), str(root / f"out{index}.json"), *args],
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env={**os.environ, "LC_ALL": "C.UTF-8"}))  # English messages
    merged = {}
    for index, proc in enumerate(procs):
        output, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, output[-3000:]
        merged.update(json.loads((root / f"out{index}.json").read_text()))
    return merged


def results(report) -> dict:
    """Test name -> result dict, over every exercise of a JSON report."""
    return {t["name"]: t for ex in report["exercises"] for t in ex["tests"]}


def strings(value):
    """Every string in a JSON value, keys too."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def materialize(tmp_path: Path, name: str, replacements: dict[str, list[tuple[str, str]]]) -> Path:
    """A submission folder: solutions/ copied, with each (old, new) applied to the code it
    names, exactly once (tests/fixtures/mutants/_edits.py: by syntax, not by text)."""
    from tests.fixtures.mutants._edits import EditError, apply_edits

    folder = tmp_path / name
    folder.mkdir()
    for path in (ROOT / "solutions").glob("*.py"):
        shutil.copy(path, folder / path.name)
    for filename, edits in replacements.items():
        try:
            text = apply_edits((folder / filename).read_text(), edits)
        except EditError as exc:
            raise AssertionError(f"mutant {name}, {filename}: {exc}") from None
        (folder / filename).write_text(text)
    return folder


@pytest.fixture(scope="session")
def solutions_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("solutions-report")
    shutil.copytree(ROOT / "solutions", folder / "solutions")
    proc, report = run_grader(folder / "solutions")
    assert proc.returncode == 0, proc.stderr
    return proc, report


def cli(*args, cwd=ROOT, timeout=600, env=None):
    """``python -m autograder ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "autograder", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def student_release(tmp_path_factory):
    """One student release for every test that needs it (tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("release") / "course"
    proc = cli("release", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out
