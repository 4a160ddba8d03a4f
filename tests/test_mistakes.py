"""Every known-wrong implementation loses points in the tests meant to catch it, and the
feedback names its mistake; nothing else about it passes by accident.

Grading ~250 mutants one grader process each would spend most of the time importing torch
for the grader, so two driver processes (this machine's two cores) each grade half of them in
turn with ``runner.grade`` (each mutant still in a fresh worker of its own, as the CLI does);
the tests below only read the reports. tests/test_grading_paths.py and the CLI tests cover
the command line itself.
"""
import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, materialize, results, run_drivers
from tests.fixtures.mutants import MUTANTS

TEST = "test_mutant_loses_points_and_is_named"


@pytest.fixture(scope="module")
def graded(request, tmp_path_factory):
    """name -> (driver's status, JSON report) for the mutants this session selected."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", "") == TEST and hasattr(item, "callspec")]
    root = tmp_path_factory.mktemp("mutants")
    jobs = [{"name": name, "folder": str(materialize(root, name, MUTANTS[name]["edits"])),
             "exercises": MUTANTS[name]["exercises"]} for name in names]
    # flash attention's gradings are the long ones: spread them over both drivers
    jobs.sort(key=lambda job: (not any(ex.startswith("flash") for ex in job["exercises"]), job["name"]))
    return run_drivers(root, "tests.test_mistakes", [jobs[0::2], jobs[1::2]])


def _drive(spec: Path, out: Path) -> None:
    """Grade each job of ``spec`` with the hidden suites, in this one process, as ``grade``
    does: a fresh worker per job; a grader error is that job's result, not the driver's end."""
    sys.path.insert(0, str(ROOT))
    from autograder.runner import grade

    reports = {}
    for job in json.loads(spec.read_text()):
        try:
            reports[job["name"]] = [True, grade(job["folder"], job["exercises"]).to_json()]
        except Exception as exc:  # noqa: BLE001 - reported by the test of that mutant
            reports[job["name"]] = [False, f"{type(exc).__name__}: {exc}"]
    out.write_text(json.dumps(reports))


@pytest.mark.slow
@pytest.mark.parametrize("name", MUTANTS)
def test_mutant_loses_points_and_is_named(name, graded, solutions_report):
    mutant = MUTANTS[name]
    ok, report = graded[name]
    assert ok, f"{name}: the grader failed: {report}"
    assert report["score"] < report["max_score"]
    by_name = results(report)
    for prefix in mutant["fails"]:
        matching = [t for n, t in by_name.items() if n.startswith(prefix)]
        assert matching, f"no test named {prefix}*"
        passed = [t["name"] for t in matching if t["status"] == "passed"]
        assert not passed, f"{name}: expected {prefix}* to fail, but {passed} passed"
    if mutant["names"]:
        messages = [t["message"] for n, t in by_name.items()
                    if any(n.startswith(p) for p in mutant["fails"])]
        assert any(mutant["names"] in msg for msg in messages), (
            f"{name}: no failure message names the mistake; messages were:\n" + "\n".join(messages))
    # no wrong diagnosis: every known mistake the feedback names is one this mutant makes
    # (``names``, or ``also_names``: the same mistake seen from another test); where several
    # mistakes fit the numbers the feedback lists them all, and one of them must be its own
    acceptable = [n for n in [mutant["names"], *mutant.get("also_names", [])] if n]
    named = [re.split(r"known mistakes?: ", t["message"], maxsplit=1)[1].splitlines()[0]
             for t in by_name.values() if re.search(r"known mistakes?: ", t["message"])]
    wrong = [n for n in named if not any(a in n for a in acceptable)]
    assert not wrong, f"{name}: the feedback names a mistake this mutant does not make: {wrong[:2]}"
    # the mutant changes one thing: tests that exercise none of it still pass (unless the
    # exercise's every test uses that one thing)
    if not mutant.get("all_fail"):
        assert any(t["status"] == "passed" for t in by_name.values())


def test_every_hidden_test_declares_rules_and_has_a_wrong_implementation_it_catches():
    """Each test function of the hidden suites declares the API rules it enforces
    (@pytest.mark.rules, read by autograder/adequacy.py) and is listed in some mutant's
    `fails`: a test that no known-wrong implementation fails could be one that cannot fail.
    (tests/test_adequacy.py checks the declared rules exist and that each rule's mutants fail
    a test declaring it.)"""
    from autograder import adequacy

    covered = {(ex, prefix.split("[")[0]) for mutant in MUTANTS.values() for ex in mutant["exercises"]
               for prefix in mutant["fails"]}
    tests = [(ex, t) for ex in adequacy.exercises() for t in adequacy.suite_tests(ex)]
    assert tests
    assert not [f"{ex}:{t.name}" for ex, t in tests if not t.rules], "tests that declare no rule"
    assert not [f"{ex}:{t.name}" for ex, t in tests if (ex, t.name) not in covered], "tests no mutant fails"


def _references():
    from tests.conftest import ROOT

    return {path.name: path.read_text() for path in (ROOT / "solutions").glob("*.py")}


@pytest.mark.parametrize("name", MUTANTS)
def test_mutant_survives_tidying_the_reference(name):
    """A mutant names code, not text: with every comment (markers included) of the reference
    removed, blank lines indented and blank lines added after block headers, each of its
    edits still matches exactly once and gives the same code as on the reference itself."""
    from tests.fixtures.mutants._edits import apply_edits, normalise, strip_formatting

    references = _references()
    for filename, edits in MUTANTS[name]["edits"].items():
        reference = references[filename]
        edited = apply_edits(reference, edits)
        assert normalise(edited) != normalise(reference), f"{name}: the edits of {filename} change nothing"
        assert normalise(apply_edits(strip_formatting(reference), edits)) == normalise(edited)


def test_edits_match_code_not_text():
    """The edit rules themselves: a statement, a header and an expression are found by their
    code whatever the formatting; a comment or a marker is not code; ambiguity is an error."""
    from tests.fixtures.mutants._edits import EditError, apply_edit

    source = ("def f(x):\n    ### BEGIN SOLUTION\n    if x > 0:  # positive\n        y = (x *\n             2)\n"
              "    else:\n        y = x\n    return y + abs(x)\n    ### END SOLUTION\n")
    assert "y = x * 3" in apply_edit(source, "y = x * 2", "y = x * 3")  # a statement across lines
    assert "if x >= 0:  \n" not in apply_edit(source, "if x > 0:", "if x >= 0:")
    assert "    if x >= 0:\n" in apply_edit(source, "if (x > 0):", "if x >= 0:")  # a header, re-formatted
    assert "return y + x" in apply_edit(source, "abs(x)", "x")  # an expression
    assert "### END SOLUTION" in apply_edit(source, "return y + abs(x)", "return y")  # the rest kept
    chain = "if x > 1:\n    y = 1\nelif x > 0:\n    y = 2\n"
    assert "elif x >= 0:" in apply_edit(chain, "if x > 0:", "if x >= 0:")  # an elif stays an elif
    for old in ("# positive", "### END SOLUTION", "y", "x"):  # comments; names that occur often
        with pytest.raises(EditError):
            apply_edit(source, old, "pass")


def test_an_all_masked_row_is_not_diagnosed_as_overflow():
    """Issue 16: a softmax that subtracts the max but leaves all -inf rows NaN was told "exp
    overflows ... subtract the row maximum" (both mistakes give that row the same NaN). The
    diagnosis is the one the numbers show: overflow only where exp really overflowed."""
    import torch

    from autograder.compare import Mismatch, check_tensor
    from autograder.inputs import randn
    from autograder.mistakes import attention as mistakes

    def unguarded(x):  # the max subtracted, nothing guarded: all -inf rows give 0 / 0
        e = torch.exp(x - x.amax(dim=-1, keepdim=True))
        return e / e.sum(dim=-1, keepdim=True)

    def without_max(x):
        e = torch.exp(x)
        return e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)

    masked = randn(4, 6, seed=4, dtype=torch.float32)
    masked[1] = float("-inf")
    large = randn(4, 9, seed=3, dtype=torch.float32, scale=300.0)
    for x, wrong, named, not_named in [(masked, unguarded, mistakes.NAN_ROWS, mistakes.SOFTMAX_NO_MAX),
                                       (large, without_max, mistakes.SOFTMAX_NO_MAX, mistakes.NAN_ROWS)]:
        with pytest.raises(Mismatch) as caught:
            check_tensor(wrong(x), torch.softmax(x.double(), -1).nan_to_num(0.0), "softmax", dtype=torch.float32,
                         n_terms=x.shape[-1], magnitude=x[x.isfinite()].abs().max().item(),
                         mistakes=lambda: mistakes.softmax_mistakes(x, -1))
        assert named in str(caught.value) and not_named not in str(caught.value)
    q, k, v = (randn(1, 4, 6, seed=s, dtype=torch.float32) for s in (28, 29, 30))
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[0, 2] = False
    scores = (q @ k.transpose(-2, -1) / 6 ** 0.5).masked_fill(~mask, float("-inf"))
    wrong = unguarded(scores) @ v
    named = [text for text, value in mistakes.sdpa_mistakes(q, k, v, mask=mask)]
    assert mistakes.SOFTMAX_NO_MAX not in named and mistakes.NAN_ROWS in named and torch.isnan(wrong).any()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    _drive(Path(sys.argv[1]), Path(sys.argv[2]))
