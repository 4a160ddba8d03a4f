"""The public suites students run: one per exercise, named after the exercise file, graded by
the same engine as the hidden ones; the reference passes them, the skeleton scores nothing;
they never import the reference or the known-mistake computations; their inputs are not
the hidden ones; every test has points and names the hidden tests whose property it checks."""
import ast
import re

import pytest

from autograder import adequacy, public
from autograder.runner import available_exercises, grade
from tests.conftest import ROOT

CHECKS = ROOT / "exercises" / "checks"


def public_suites():
    return sorted(CHECKS.glob("test_*.py"))


def test_one_public_suite_per_exercise_named_after_its_file():
    hidden = set(available_exercises())
    assert {p.stem[len("test_"):] for p in public_suites()} == hidden
    assert not (CHECKS / "test_blocks.py").exists() and not (CHECKS / "test_rope_positional.py").exists()


@pytest.mark.parametrize("path", public_suites(), ids=lambda p: p.stem)
def test_public_suites_never_import_the_reference_or_the_mistakes(path):
    # module level: what the release imports (staff-side code inside a reference function runs
    # only where solutions/ exists, and the release's own grading of the reference proves the rest)
    tree = ast.parse(path.read_text()).body
    imported = {alias.name for node in tree if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in tree if isinstance(node, ast.ImportFrom)}
    imported |= {f"{node.module}.{alias.name}" for node in tree if isinstance(node, ast.ImportFrom)
                 for alias in node.names}
    forbidden = [name for name in imported
                 if name.startswith(("solutions", "autograder.mistakes", "autograder.suites", "tests"))]
    assert not forbidden, f"{path.name} imports {forbidden}: the release has none of them (use the reference fixture)"


@pytest.mark.parametrize("path", public_suites(), ids=lambda p: p.stem)
def test_every_public_test_has_points_and_mirrors_real_hidden_tests(path):
    exercise = path.stem[len("test_"):]
    hidden = {t.name for t in adequacy.suite_tests(exercise)}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            # never a hidden test's name (the release's leak check looks for those)
            assert node.name.startswith("test_public_"), f"{path.name}::{node.name}: name it test_public_..."
            markers = {d.func.attr: d for d in node.decorator_list
                       if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute)}
            assert "points" in markers, f"{path.name}::{node.name} has no points marker"
            assert "mirrors" in markers, f"{path.name}::{node.name} names no hidden test it mirrors"
            mirrored = {ast.literal_eval(a) for a in markers["mirrors"].args}
            assert mirrored <= hidden, f"{path.name}::{node.name} mirrors unknown tests {mirrored - hidden}"


def _seeds(path):
    return {int(s) for s in re.findall(r"seed=(\d+)", path.read_text())} | {
        int(s) for s in re.findall(r"manual_seed\((\d+)\)", path.read_text())}


@pytest.mark.parametrize("exercise", available_exercises())
def test_public_inputs_are_not_the_hidden_inputs(exercise):
    """The public suites draw their random inputs from other seeds than the hidden suite of
    the same exercise (the hidden inputs stay unknown to students)."""
    shared = _seeds(CHECKS / f"test_{exercise}.py") & _seeds(ROOT / "autograder" / "suites" / f"test_{exercise}.py")
    assert not shared, f"public and hidden {exercise} suites share the seeds {sorted(shared)}"


def test_coverage_counts_only_mirrored_hidden_points():
    found = public.compute_coverage()
    for exercise, (covered, total) in found.items():
        assert 0 < covered <= total == sum(t.max_points for t in adequacy.suite_tests(exercise))


@pytest.mark.slow
def test_the_reference_passes_and_the_skeleton_scores_nothing():
    solved = grade(ROOT / "solutions", public=True)
    assert solved.score == solved.max_score > 0, [(r.exercise, r.name, r.message) for r in solved.results
                                                  if r.status != "passed"]
    skeleton = grade(ROOT / "exercises", ["attention", "rope"], public=True)
    assert skeleton.score == 0 and all("not implemented" in r.message or "NotImplementedError" in r.message
                                       for r in skeleton.results)
