"""The public checks students see: they pass on the reference and fail on the skeleton,
and they run without the hidden suite."""
import os
import subprocess
import sys

from tests.conftest import ROOT


def run_checks(impl):
    env = dict(os.environ, COURSE_IMPL=impl)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "exercises/checks"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_public_checks_pass_on_the_solutions():
    proc = run_checks("solutions")
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_public_checks_fail_on_the_skeletons():
    proc = run_checks("exercises")
    assert proc.returncode == 1 and "NotImplementedError" in proc.stdout


def test_public_checks_do_not_touch_the_hidden_suite():
    text = "".join(p.read_text() for p in (ROOT / "exercises" / "checks").glob("*.py"))
    for forbidden in ("import autograder", "from autograder", "import solutions", "from solutions"):
        assert forbidden not in text
