"""The API rule lists (autograder/rules/<exercise>.toml) and the adequacy report agree with
the tables they are built from: every rule names a mutant that exists and is caught, or
says why it cannot be tested; the report's numbers are the tables' numbers. Static and fast
(no grading): tests/test_mistakes.py proves the mutants' `fails`."""
import re
import tomllib

import pytest

from autograder import adequacy
from tests.conftest import ROOT
from tests.fixtures.mutants import MUTANTS

# the course's exercises (autograder/exercises.py) that have a hidden suite: one being
# written joins every test below as soon as its suite file exists
EXERCISES = adequacy.exercises()

# Rules the suites do not enforce yet, each with its `gap` reason in the rule file. A ratchet:
# a new rule without a catching mutant fails below, and so does closing one of these without
# removing it here (then the report's "open" column shrinks).
KNOWN_GAPS: set[tuple[str, str]] = set()  # (exercise, rule id): none left open


@pytest.fixture(scope="module")
def report():
    return {r.exercise: r for r in adequacy.analyse_all()}


def test_the_exercise_list_has_one_owner():
    """Every hidden suite is an exercise of autograder/exercises.py, listed in its order."""
    from autograder.exercises import NAMES

    suites = sorted(p.stem[len("test_"):] for p in (ROOT / "autograder" / "suites").glob("test_*.py"))
    assert sorted(EXERCISES) == suites and set(EXERCISES) <= set(NAMES)
    assert EXERCISES == [n for n in NAMES if n in EXERCISES]


@pytest.mark.parametrize("exercise", EXERCISES)
def test_every_exercise_has_a_rule_file(exercise):
    data = tomllib.loads((ROOT / "autograder" / "rules" / f"{exercise}.toml").read_text())
    assert data["exercise"] == exercise and data["rule"], exercise


@pytest.mark.parametrize("exercise", EXERCISES)
def test_rules_are_well_formed(exercise):
    """Unique ids, a sentence each, and exactly one of: mutants, untestable, gap."""
    rules = adequacy.load_rules(exercise)
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids)), f"duplicate rule ids in {exercise}"
    for rule in rules:
        assert rule.get("text"), rule["id"]
        kinds = [k for k in ("mutants", "untestable", "gap") if rule.get(k)]
        assert len(kinds) == 1, f"{exercise}:{rule['id']} needs exactly one of mutants/untestable/gap, has {kinds}"
        assert set(rule) <= {"id", "text", "mutants", "untestable", "gap"}, rule["id"]


@pytest.mark.parametrize("exercise", EXERCISES)
def test_rule_mutants_exist(exercise):
    unknown = {r["id"]: [m for m in r.get("mutants", []) if m not in MUTANTS]
               for r in adequacy.load_rules(exercise)}
    assert not {k: v for k, v in unknown.items() if v}


@pytest.mark.parametrize("exercise", EXERCISES)
def test_every_rule_has_a_catching_mutant_or_a_reason(exercise, report):
    """A rule is enforced when a mutant breaking it must fail some hidden test; otherwise it
    is untestable (with the reason) or a known gap."""
    r = report[exercise]
    for rule in r.rules:
        if rule.get("mutants"):
            assert r.rule_mutants(rule), f"{exercise}:{rule['id']}: its mutants fail no hidden test"
    open_rules = {(exercise, rule_id) for rule_id in r.unenforced_rules}
    assert open_rules <= KNOWN_GAPS, f"rules no test enforces: {sorted(open_rules - KNOWN_GAPS)}"
    assert {g for g in KNOWN_GAPS if g[0] == exercise} <= open_rules, "a known gap was closed: update KNOWN_GAPS"


def test_rule_mutants_are_graded_by_test_mistakes():
    """The rules' mutants are part of MUTANTS, so tests/test_mistakes.py grades each one."""
    named = {m for ex in EXERCISES for r in adequacy.load_rules(ex) for m in r.get("mutants", [])}
    assert named and named <= set(MUTANTS)


def _declared(exercise):
    """(test, (rule file's exercise, rule id)) for every rule a test of the suite declares."""
    return [(t.name, adequacy.rule_key(exercise, d)) for t in adequacy.suite_tests(exercise) for d in t.rules]


@pytest.mark.parametrize("exercise", EXERCISES)
def test_every_hidden_test_declares_the_rules_it_enforces(exercise):
    """@pytest.mark.rules(...) on every test function, naming rules that exist."""
    undeclared = [t.name for t in adequacy.suite_tests(exercise) if not t.rules]
    assert not undeclared, f"{exercise}: tests without @pytest.mark.rules(...): {undeclared}"
    known = {}
    for test, (owner, rule_id) in _declared(exercise):
        ids = known.setdefault(owner, {r["id"] for r in adequacy.load_rules(owner)})
        assert rule_id in ids, f"{exercise}: test_{test} declares {owner}:{rule_id}, which " \
                               f"autograder/rules/{owner}.toml does not have"


@pytest.mark.parametrize("exercise", EXERCISES)
def test_a_rules_mutant_fails_a_test_that_declares_it(exercise):
    """The declarations are what the mutants prove: each rule with mutants has one that must
    fail (its `fails`, proven by tests/test_mistakes.py) a hidden test declaring that rule."""
    declaring = {}
    for suite in EXERCISES:
        for test, key in _declared(suite):
            declaring.setdefault(key, set()).add((suite, test))
    for rule in adequacy.load_rules(exercise):
        if not rule.get("mutants"):
            continue
        failed = {(suite, p.split("[")[0]) for m in rule["mutants"] if m in MUTANTS
                  for suite in MUTANTS[m]["exercises"] for p in MUTANTS[m]["fails"]}
        assert failed & declaring.get((exercise, rule["id"]), set()), (
            f"{exercise}:{rule['id']}: no test that its mutants fail declares it "
            f"(declared by {sorted(declaring.get((exercise, rule['id']), []))})")


def _functions(exercise):
    text = (ROOT / "autograder" / "suites" / f"test_{exercise}.py").read_text()
    return re.findall(r"^def test_(\w+)", text, flags=re.M)


@pytest.mark.parametrize("exercise", EXERCISES)
def test_report_numbers_agree_with_the_tables(exercise, report):
    r = report[exercise]
    # tests: the suite's functions, found by a regex independent of the ast reader
    assert [t.name for t in r.tests] == _functions(exercise)
    assert all(t.points > 0 and t.cases >= 1 for t in r.tests)
    # mutants: those of MUTANTS that list this exercise (a mutant module's name, unless it says)
    own = {n for n, m in MUTANTS.items() if exercise in m["exercises"]}
    assert set(r.mutants) == own
    functions = set(_functions(exercise))
    caught = {n for n in own if {p.split("[")[0] for p in MUTANTS[n]["fails"]} & functions}
    assert set(r.caught) == caught
    hit = {p.split("[")[0] for n in own for p in MUTANTS[n]["fails"]}
    assert set(r.unexercised_tests) == functions - hit
    # variants: the folders of tests/fixtures/variants, by their files and grades.txt
    def graded(folder):
        extra = folder / "grades.txt"
        return (folder / f"{exercise}.py").exists() or (extra.exists() and exercise in re.findall(
            r"^\s*(\w+)", extra.read_text(), flags=re.M))

    folders = [p for p in (ROOT / "tests" / "fixtures" / "variants").iterdir() if p.is_dir()]
    assert r.variants == sorted(p.name for p in folders if graded(p))
    # rules: the rule file's counts
    rules = tomllib.loads((ROOT / "autograder" / "rules" / f"{exercise}.toml").read_text())["rule"]
    assert len(r.rules) == len(rules)
    assert len(r.enforced_rules) + len(r.untestable_rules) + len(r.unenforced_rules) == len(rules)
    assert len(r.untestable_rules) == sum(1 for x in rules if x.get("untestable"))


def test_points_agree_with_the_parametrize_ids():
    """Cases counted statically: the rope suite's ROPE_CASES dict and a stacked parametrize."""
    tests = {t.name: t for t in adequacy.suite_tests("rope")}
    assert tests["apply_rope_half_split"].cases == 4 and tests["apply_rope_half_split"].points == 2
    layers = {t.name: t for t in adequacy.suite_tests("layers")}
    assert layers["norm_half_precision"].cases == 4  # 2 classes x 2 dtypes


def test_the_printed_report_shows_the_tables(report, capsys):
    from autograder.cli import main

    assert main(["adequacy"]) == 0
    out = capsys.readouterr().out
    for r in report.values():
        row = next(line for line in out.splitlines() if line.startswith(r.exercise + " "))
        numbers = row.split()[1:]
        assert numbers == [str(len(r.tests)), str(sum(t.cases for t in r.tests)), f"{r.max_points:g}",
                           f"{len(r.caught)}/{len(r.mutants)}", str(len(r.variants)), str(len(r.rules)),
                           str(len(r.enforced_rules)), str(len(r.untestable_rules)), str(len(r.unenforced_rules))]
    assert ("NOT ENFORCED" in out) == bool(KNOWN_GAPS)  # the known gaps are listed, with their reasons
