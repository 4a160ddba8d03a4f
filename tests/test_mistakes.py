"""Every known-wrong implementation loses points in the tests meant to catch it, and the
feedback names its mistake; nothing else about it passes by accident."""
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import materialize, results, run_grader
from tests.fixtures.mutants import MUTANTS

TEST = "test_mutant_loses_points_and_is_named"


@pytest.fixture(scope="module")
def graded(request, tmp_path_factory):
    """The mutants this session selected, graded two at a time (each grading is one grader
    process with one single-threaded worker: two fill this machine's two cores), so the
    tests below only read their reports."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", "") == TEST and hasattr(item, "callspec")]
    root = tmp_path_factory.mktemp("mutants")

    def grade(name):
        mutant = MUTANTS[name]
        folder = materialize(root, name, mutant["edits"])
        exercise_args = [arg for ex in mutant.get("exercises", ["attention"]) for arg in ("--exercise", ex)]
        return name, run_grader(folder, *exercise_args)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(grade, names))


@pytest.mark.slow
@pytest.mark.parametrize("name", MUTANTS)
def test_mutant_loses_points_and_is_named(name, graded, solutions_report):
    mutant = MUTANTS[name]
    proc, report = graded[name]
    assert proc.returncode == 0, proc.stderr
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


def test_every_hidden_test_has_a_wrong_implementation_it_catches():
    """Each test function of the hidden suites is listed in some mutant's `fails`: a test that
    no known-wrong implementation fails could be one that cannot fail."""
    import re

    from tests.conftest import ROOT

    covered = {prefix.split("[")[0] for mutant in MUTANTS.values() for prefix in mutant["fails"]}
    names = [name for path in (ROOT / "autograder" / "suites").glob("test_*.py")
             for name in re.findall(r"^def test_(\w+)", path.read_text(), flags=re.M)]
    assert names and not [n for n in names if n not in covered]
