"""A crash, hang, exit or hostile value in one function fails that function's tests with a
message naming what happened; the other tests are still scored, in bounded time."""
import time

import pytest

from tests.conftest import FIXTURES, results, run_grader
from autograder.sandbox import network_namespace_available
from tests.fixtures.hostile import HOSTILE, PREPEND

CALL_TIMEOUT = 3  # seconds per call: the correct functions here take milliseconds


def build(tmp_path, name):
    where, code = HOSTILE[name]["edit"]
    base = (FIXTURES / "variants" / "einsum" / "attention.py").read_text()
    text = code + base if where == PREPEND else base + "\n\n" + code
    folder = tmp_path / name
    folder.mkdir()
    (folder / "attention.py").write_text(text)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_submission_is_graded_safely(tmp_path, name):
    case = HOSTILE[name]
    folder = build(tmp_path, name)
    started = time.monotonic()
    proc, report = run_grader(folder, "--exercise", "attention", "--timeout", str(CALL_TIMEOUT),
                              "--memory-gib", "3", timeout=300)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    by_name = results(report)
    failed = []
    for prefix, needle in case["fail"].items():
        hit = [t for n, t in by_name.items() if n.startswith(prefix)]
        assert hit and all(t["status"] == "failed" for t in hit), [t["name"] for t in hit if t["status"] != "failed"]
        assert all(needle in t["message"] for t in hit), [t["message"] for t in hit if needle not in t["message"]][:2]
        failed += hit
    if failed:
        assert any(case["where"] in t["message"] for t in failed)  # says where it happened
    if name == "opens_a_network_connection" and network_namespace_available():
        assert all("Network is unreachable" in t["message"] for t in failed)
    if name == "rewrites_its_own_files":
        assert (folder / "attention.py").read_text().startswith('"""A correct attention')  # not overwritten
    for prefix in case["pass_"]:
        hit = [t for n, t in by_name.items() if n.startswith(prefix)]
        assert hit and all(t["status"] == "passed" for t in hit), [t["message"] for t in hit if t["status"] != "passed"]
    # bounded: a hanging function costs at most two timeouts, a broken import one start
    assert elapsed < 60, f"grading took {elapsed:.0f} s"
