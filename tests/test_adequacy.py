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

EXERCISES = ["attention", "rope", "positional", "layers", "decoder_block", "gpt", "kv_cache",
             "flash_attention", "flash_attention_triton", "seq2seq"]

# Rules the suites do not enforce yet, each with its `gap` reason in the rule file. A ratchet:
# a new rule without a catching mutant fails below, and so does closing one of these without
# removing it here (then the report's "open" column shrinks).
KNOWN_GAPS = {
    ("flash_attention", "forward.lse-dtype"),
    ("flash_attention_triton", "forward.lse"),
    ("flash_attention_triton", "backward.triton-kernels"),
}


@pytest.fixture(scope="module")
def report():
    return {r.exercise: r for r in adequacy.analyse_all()}


def test_every_exercise_has_a_rule_file():
    assert sorted(adequacy.exercises()) == sorted(EXERCISES)
    for name in EXERCISES:
        data = tomllib.loads((ROOT / "autograder" / "rules" / f"{name}.toml").read_text())
        assert data["exercise"] == name and data["rule"], name


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
    """The rule mutants are part of MUTANTS, so tests/test_mistakes.py grades each one."""
    from tests.fixtures.rule_mutants import RULE_MUTANTS

    assert RULE_MUTANTS and all(MUTANTS[name] is spec for name, spec in RULE_MUTANTS.items())


def _functions(exercise):
    text = (ROOT / "autograder" / "suites" / f"test_{exercise}.py").read_text()
    return re.findall(r"^def test_(\w+)", text, flags=re.M)


@pytest.mark.parametrize("exercise", EXERCISES)
def test_report_numbers_agree_with_the_tables(exercise, report):
    r = report[exercise]
    # tests: the suite's functions, found by a regex independent of the ast reader
    assert [t.name for t in r.tests] == _functions(exercise)
    assert all(t.points > 0 and t.cases >= 1 for t in r.tests)
    # mutants: those of MUTANTS that list this exercise (test_mistakes.py's default: attention)
    own = {n for n, m in MUTANTS.items() if exercise in m.get("exercises", ["attention"])}
    assert set(r.mutants) == own
    functions = set(_functions(exercise))
    caught = {n for n in own if {p.split("[")[0] for p in MUTANTS[n]["fails"]} & functions}
    assert set(r.caught) == caught
    hit = {p.split("[")[0] for n in own for p in MUTANTS[n]["fails"]}
    assert set(r.unexercised_tests) == functions - hit
    # variants: VARIANTS of tests/test_grading.py
    from tests.test_grading import VARIANTS

    assert r.variants == sorted(v for v, ex in VARIANTS.items() if exercise in ex)
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
    assert "NOT ENFORCED" in out  # the known gaps are listed, with their reasons
