"""The adequacy report: how much the hidden suites would notice, per exercise.

``python -m autograder adequacy`` prints, per exercise, the hidden tests and their points,
the known-wrong implementations (mutants) caught out of those kept, the correct variants
accepted, the tests no mutant exercises, and the coverage of the API's rules
(``autograder/rules/<exercise>.toml``): rules, rules with a catching mutant, mutants per
rule, and the rules no test enforces.

By default nothing is graded (grading every mutant takes 10+ minutes): "caught" comes from
each mutant's declared ``fails`` list, which ``tests/test_mistakes.py`` proves on every CI
run, and the tests and points are read from the suites' source with ``ast``. ``--run``
grades them for real through those same repository tests.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "autograder" / "suites"
RULES = ROOT / "autograder" / "rules"


# ---------------------------------------------------------------------------------------
# the hidden tests, read statically
# ---------------------------------------------------------------------------------------
@dataclass
class SuiteTest:
    name: str  # without the test_ prefix, as reports and mutants name it
    points: float  # per case
    cases: int  # parametrized cases (1 without parametrize)
    # @pytest.mark.rules(...): the API rules it enforces, "id" of the suite's own exercise's
    # rule file or "exercise:id" of another's (kv_cache's suite grades MultiHeadAttention's cache)
    rules: tuple[str, ...] = ()

    @property
    def max_points(self) -> float:
        return self.points * self.cases


def _module_values(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level NAME = <expr>, so parametrize(..., CONFIGS) can be counted."""
    return {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def _count_cases(arg: ast.expr, names: dict[str, ast.expr]) -> int:
    if isinstance(arg, ast.Name) and arg.id in names:
        arg = names[arg.id]
    if isinstance(arg, (ast.List, ast.Tuple, ast.Set)):
        return len(arg.elts)
    if isinstance(arg, ast.Dict):
        return len(arg.keys)
    if isinstance(arg, ast.Call) and getattr(arg.func, "id", "") in ("list", "sorted") and arg.args:
        return _count_cases(arg.args[0], names)  # list(CASES): the dict's keys
    raise ValueError(f"cannot count the cases of {ast.unparse(arg)!r} statically")


def _marker(decorator: ast.expr, name: str) -> ast.Call | None:
    """The call node of @pytest.mark.<name>(...), else None."""
    if isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute) \
            and decorator.func.attr == name:
        return decorator
    return None


def suite_tests(exercise: str) -> list[SuiteTest]:
    """The test functions of autograder/suites/test_<exercise>.py with points and cases."""
    tree = ast.parse((SUITES / f"test_{exercise}.py").read_text())
    names = _module_values(tree)
    tests = []
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
            continue
        points, cases, rules = 0.0, 1, ()
        for decorator in node.decorator_list:
            if (call := _marker(decorator, "points")) is not None:
                points = float(ast.literal_eval(call.args[0]))
            if (call := _marker(decorator, "parametrize")) is not None:
                cases *= _count_cases(call.args[1], names)  # stacked parametrize multiplies
            if (call := _marker(decorator, "rules")) is not None:
                rules += tuple(ast.literal_eval(arg) for arg in call.args)
        tests.append(SuiteTest(node.name[len("test_"):], points, cases, rules))
    return tests


def exercises() -> list[str]:
    """The course's exercises (autograder/exercises.py, in course order) that have a hidden
    suite: one being written appears as soon as its suite file does."""
    from .exercises import course_order

    return course_order(p.stem[len("test_"):] for p in SUITES.glob("test_*.py"))


def rule_key(exercise: str, declared: str) -> tuple[str, str]:
    """A declared rule of ``exercise``'s suite -> (rule file's exercise, rule id)."""
    owner, _, rule_id = declared.rpartition(":")
    return (owner or exercise, rule_id)


# ---------------------------------------------------------------------------------------
# the mutants, variants and rules
# ---------------------------------------------------------------------------------------
def load_mutants() -> dict[str, dict]:
    """tests/fixtures/mutants.py's MUTANTS (rule_mutants merged in): a repository file, not
    part of the student release, so it is imported only here."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.fixtures.mutants import MUTANTS

    return MUTANTS


VARIANTS = ROOT / "tests" / "fixtures" / "variants"
ALSO_GRADED = "grades.txt"  # in a variant folder: exercises to grade beyond its files' stems


def load_variants() -> dict[str, list[str]]:
    """Correct variants (tests/fixtures/variants/<variant>/) -> the exercises they are graded
    on, in course order: the stems of the folder's .py files (the exercises it replaces),
    plus those ``grades.txt`` names (one per line, ``#`` comments), for a variant whose code
    other exercises' suites run (RoPE written inside attention.py is graded by rope's)."""
    from .exercises import course_order

    found = {}
    for folder in sorted(p for p in VARIANTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        names = {p.stem for p in folder.glob("*.py")}
        extra = folder / ALSO_GRADED
        if extra.exists():
            names |= {line.split("#")[0].strip() for line in extra.read_text().splitlines()} - {""}
        if names:
            found[folder.name] = course_order(names)
    return found


def load_rules(exercise: str) -> list[dict]:
    path = RULES / f"{exercise}.toml"
    if not path.exists():
        return []
    return tomllib.loads(path.read_text())["rule"]


def mutant_exercises(mutant: dict) -> list[str]:
    return mutant["exercises"]  # tests/fixtures/mutants: the module's name unless it says otherwise


def caught_tests(mutant: dict, tests: list[SuiteTest]) -> list[str]:
    """Test functions of the suite that the mutant's `fails` prefixes name."""
    functions = {t.name for t in tests}
    return sorted({p.split("[")[0] for p in mutant["fails"]} & functions)


# ---------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------
@dataclass
class ExerciseAdequacy:
    exercise: str
    tests: list[SuiteTest]
    mutants: dict[str, list[str]]  # mutant id -> suite tests it must fail
    variants: list[str]
    rules: list[dict]
    # every mutant id -> the tests it must fail in its own exercises' suites: a rule of this
    # exercise may be enforced by another suite (the cache rules of MultiHeadAttention are
    # graded by kv_cache's)
    catching: dict[str, list[str]] = field(default_factory=dict)
    missing_mutants: dict[str, list[str]] = field(default_factory=dict)  # rule id -> unknown ids

    @property
    def max_points(self) -> float:
        return sum(t.max_points for t in self.tests)

    @property
    def caught(self) -> list[str]:
        return sorted(m for m, fails in self.mutants.items() if fails)

    @property
    def unexercised_tests(self) -> list[str]:
        hit = {name for fails in self.mutants.values() for name in fails}
        return [t.name for t in self.tests if t.name not in hit]

    def rule_mutants(self, rule: dict) -> list[str]:
        """The rule's mutants that exist and fail some test of this exercise."""
        return [m for m in rule.get("mutants", []) if self.catching.get(m)]

    @property
    def enforced_rules(self) -> list[str]:
        return [r["id"] for r in self.rules if self.rule_mutants(r)]

    @property
    def untestable_rules(self) -> list[str]:
        return [r["id"] for r in self.rules if not self.rule_mutants(r) and r.get("untestable")]

    @property
    def unenforced_rules(self) -> list[str]:
        """No catching mutant and no untestable reason: what the suites do not check (goal: none)."""
        return [r["id"] for r in self.rules if not self.rule_mutants(r) and not r.get("untestable")]

    def as_dict(self) -> dict:
        return {"exercise": self.exercise, "tests": len(self.tests),
                "cases": sum(t.cases for t in self.tests), "points": self.max_points,
                "mutants": len(self.mutants), "mutants_caught": len(self.caught),
                "variants": self.variants, "unexercised_tests": self.unexercised_tests,
                "rules": len(self.rules), "rules_enforced": len(self.enforced_rules),
                "mutants_per_rule": {r["id"]: len(self.rule_mutants(r)) for r in self.rules},
                "rules_untestable": self.untestable_rules, "rules_unenforced": self.unenforced_rules,
                "missing_mutants": self.missing_mutants}


def catching_tests(mutants: dict[str, dict]) -> dict[str, list[str]]:
    """Mutant id -> the suite tests (of its own exercises) that its `fails` names."""
    suites = {name: suite_tests(name) for name in exercises()}
    return {name: sorted({t for ex in mutant_exercises(m) if ex in suites for t in caught_tests(m, suites[ex])})
            for name, m in mutants.items()}


def analyse(exercise: str, mutants: dict[str, dict] | None = None,
            variants: dict[str, list[str]] | None = None,
            catching: dict[str, list[str]] | None = None) -> ExerciseAdequacy:
    mutants = load_mutants() if mutants is None else mutants
    variants = load_variants() if variants is None else variants
    catching = catching_tests(mutants) if catching is None else catching
    tests = suite_tests(exercise)
    own = {name: caught_tests(m, tests) for name, m in mutants.items() if exercise in mutant_exercises(m)}
    rules = load_rules(exercise)
    missing = {r["id"]: [m for m in r.get("mutants", []) if m not in mutants] for r in rules}
    return ExerciseAdequacy(exercise, tests, own, sorted(v for v, ex in variants.items() if exercise in ex),
                            rules, catching, {k: v for k, v in missing.items() if v})


def analyse_all(names: list[str] | None = None) -> list[ExerciseAdequacy]:
    mutants, variants = load_mutants(), load_variants()
    catching = catching_tests(mutants)
    return [analyse(name, mutants, variants, catching) for name in (names or exercises())]


def _points(value: float) -> str:
    return f"{value:g}"


def format_report(results: list[ExerciseAdequacy]) -> str:
    """Plain text (no colour codes) so that it can be pasted and diffed."""
    lines = ["Adequacy of the hidden suites (static: mutants' declared fails, proven by "
             "tests/test_mistakes.py; --run grades them)", ""]
    header = f"{'exercise':<24}{'tests':>6}{'cases':>7}{'points':>8}{'caught':>10}{'variants':>10}" \
             f"{'rules':>7}{'enforced':>10}{'untestable':>12}{'open':>6}"
    lines += [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.exercise:<24}{len(r.tests):>6}{sum(t.cases for t in r.tests):>7}"
                     f"{_points(r.max_points):>8}{f'{len(r.caught)}/{len(r.mutants)}':>10}"
                     f"{len(r.variants):>10}{len(r.rules):>7}{len(r.enforced_rules):>10}"
                     f"{len(r.untestable_rules):>12}{len(r.unenforced_rules):>6}")
    total = lambda f: sum(f(r) for r in results)  # noqa: E731
    lines.append("-" * len(header))
    lines.append(f"{'total':<24}{total(lambda r: len(r.tests)):>6}{total(lambda r: sum(t.cases for t in r.tests)):>7}"
                 f"{_points(total(lambda r: r.max_points)):>8}"
                 f"{f'{total(lambda r: len(r.caught))}/{total(lambda r: len(r.mutants))}':>10}"
                 f"{len({v for r in results for v in r.variants}):>10}{total(lambda r: len(r.rules)):>7}"
                 f"{total(lambda r: len(r.enforced_rules)):>10}{total(lambda r: len(r.untestable_rules)):>12}"
                 f"{total(lambda r: len(r.unenforced_rules)):>6}")
    for r in results:
        lines += ["", f"== {r.exercise}: {len(r.tests)} tests, {_points(r.max_points)} points; "
                  f"mutants caught {len(r.caught)} of {len(r.mutants)}; "
                  f"variants accepted: {', '.join(r.variants) or 'none'}"]
        for t in r.tests:
            lines.append(f"   {_points(t.points):>3} x {t.cases:<2} {t.name}")
        lines.append("   tests no mutant exercises: " + (", ".join(r.unexercised_tests) or "none"))
        if r.rules:
            counts = [len(r.rule_mutants(rule)) for rule in r.rules]
            lines.append(f"   rules: {len(r.rules)}, with a catching mutant {len(r.enforced_rules)}, "
                         f"mutants per rule {min(counts)}-{max(counts)} "
                         f"(mean {sum(counts) / len(counts):.1f}), untestable {len(r.untestable_rules)}")
        else:
            lines.append("   rules: none listed (autograder/rules/%s.toml missing)" % r.exercise)
        for rule in r.rules:
            if rule["id"] in r.untestable_rules:
                lines.append(f"   untestable {rule['id']}: {rule['untestable']}")
        for rule in r.rules:
            if rule["id"] in r.unenforced_rules:
                why = rule.get("gap") or ("unknown mutant ids " + ", ".join(r.missing_mutants.get(rule["id"], []))
                                          if r.missing_mutants.get(rule["id"]) else "no mutant listed")
                lines.append(f"   NOT ENFORCED {rule['id']}: {rule['text']} -- {why}")
    return "\n".join(lines)


def run_graded(names: list[str]) -> int:
    """--run: grade the exercises' mutants and variants for real, through the repository's
    own tests (minutes per exercise), so that the declared `fails` are re-proven now."""
    mutants = load_mutants()
    chosen = [m for m, spec in mutants.items() if set(mutant_exercises(spec)) & set(names)]
    variants = [v for v, ex in load_variants().items() if set(ex) & set(names)]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "tests/test_mistakes.py::test_mutant_loses_points_and_is_named",
           "tests/test_grading.py::test_correct_variants_score_full_marks",
           "-k", " or ".join(f"[{n}]" for n in chosen + variants) or "nothing"]
    return subprocess.run(cmd, cwd=ROOT).returncode


def main(names: list[str] | None, run: bool = False, json_path: str | None = None) -> int:
    results = analyse_all(names)
    print(format_report(results))
    if json_path:
        import json

        Path(json_path).write_text(json.dumps([r.as_dict() for r in results], indent=2))
    if run:
        return run_graded([r.exercise for r in results])
    return 0
