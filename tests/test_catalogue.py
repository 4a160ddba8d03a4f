"""The grader's Korean feedback (autograder/catalogue.py, autograder/catalogue_ko.toml): every
known-mistake sentence and every message template has Korean with the same placeholders, the
messages the grader really builds come out Korean, and ``grade --lang ko`` reports a
known-wrong submission in Korean from end to end."""
from __future__ import annotations

import ast
import importlib
import re
import string
from pathlib import Path

import pytest
import torch

from autograder import catalogue as cat
from autograder import compare
from autograder.catalogue import hangul_ratio, placeholders, translate

ROOT = Path(__file__).resolve().parent.parent
MISTAKES = ROOT / "autograder" / "mistakes"
SUITES = ROOT / "autograder" / "suites"
# module-level strings of autograder/mistakes/*.py that no student reads as a sentence
NOT_SENTENCES = {("tokenizer", "PRETOKENIZE"): "the GPT-2 pre-tokenizer regex"}
# a translated message reads as Korean: at least this share of its letters Hangul (a Hangul
# syllable against a Latin letter). Code names stay Latin, so a good Korean line sits near
# 0.3-0.8 before they are set aside (``prose``), an untranslated one at 0.
MIN_HANGUL = 0.25


def prose(text: str) -> str:
    """``text`` without its code-like tokens (names with _ . / ( or digits: softmax(x),
    flash_attention.flash_attention_forward, 6.0), the part of a message a translator writes."""
    return " ".join(token for token in text.split() if not re.search(r"[_./()\[\]\d']", token))


def mistake_constants():
    """(module, NAME, sentence) of every module-level string constant of the mistakes modules."""
    found = []
    for path in sorted(MISTAKES.glob("*.py")):
        if path.stem == "__init__":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                name = node.targets[0].id
                value = getattr(importlib.import_module(f"autograder.mistakes.{path.stem}"), name, None)
                if isinstance(value, str) and (path.stem, name) not in NOT_SENTENCES:
                    found.append((path.stem, name, value))
                elif isinstance(value, dict) and value and all(isinstance(v, str) for v in value.values()):
                    # a sentence per case ({prenorm: sentence}): keyed NAME.case
                    found += [(path.stem, f"{name}.{key}", sentence) for key, sentence in value.items()]
    found.append(("compare", "FLOAT32_PART", compare.FLOAT32_PART))
    return found


CONSTANTS = mistake_constants()
DATA = cat.catalogue().data


def test_the_catalogue_covers_every_exercise_with_mistakes():
    modules = {p.stem for p in MISTAKES.glob("*.py")} - {"__init__"}
    assert modules <= set(DATA["mistakes"]), f"no Korean for the mistakes of {sorted(modules - set(DATA['mistakes']))}"
    assert len(CONSTANTS) >= 110  # the count the catalogue was written for (118 sentences + FLOAT32_PART)


@pytest.mark.parametrize("module,name,english", CONSTANTS, ids=[f"{m}.{n}" for m, n, _ in CONSTANTS])
def test_every_mistake_sentence_has_korean(module, name, english):
    entry = DATA["mistakes"].get(module, {}).get(name)
    assert entry, f"autograder/catalogue_ko.toml has no [mistakes.{module}.{name}]: add its Korean"
    # the copy of the English is the key a message is looked up by: a sentence edited in the
    # mistakes module without its Korean would silently stay English in every report
    assert entry["en"] == english, (f"[mistakes.{module}.{name}] translates an older sentence; the constant is now\n"
                                    f"  {english!r}\nupdate en and ko")
    assert hangul_ratio(entry["ko"]) >= MIN_HANGUL, f"[mistakes.{module}.{name}].ko does not read as Korean"
    assert placeholders(entry["ko"]) == placeholders(english) == []
    assert translate(english, "ko") == entry["ko"]
    assert translate(english, "en") == english


def test_no_stale_mistake_entries():
    known = {(m, n) for m, n, _ in CONSTANTS}
    stale = [f"{m}.{n}" for m, names in DATA["mistakes"].items() for n in names if (m, n) not in known]
    assert not stale, f"the catalogue translates constants that no longer exist: {stale}"


TEMPLATES = sorted(DATA["templates"].items())


@pytest.mark.parametrize("key,entry", TEMPLATES, ids=[k for k, _ in TEMPLATES])
def test_every_template_has_korean_with_the_same_placeholders(key, entry):
    assert entry.get("ko"), f"[templates.{key}] has no Korean"
    assert sorted(placeholders(entry["ko"])) == sorted(placeholders(entry["en"])), (
        f"[templates.{key}]: the Korean's placeholders {placeholders(entry['ko'])} are not the English "
        f"{placeholders(entry['en'])}")
    literal = "".join(text for text, *_ in string.Formatter().parse(entry["ko"]))
    if re.search(r"[A-Za-z]{3}", "".join(t for t, *_ in string.Formatter().parse(entry["en"]))):
        assert hangul_ratio(literal) >= MIN_HANGUL or not literal.strip(), f"[templates.{key}].ko is not Korean"


def test_inline_suite_sentences_are_still_in_their_suites():
    """A sentence a suite writes inline is looked up by its English: it must still be there."""
    for key, entry in DATA["inline"].items():
        source = (ROOT / entry["suite"]).read_text()
        literals = " ".join(_literals(ast.parse(source)))
        assert entry["en"].split(": ")[-1] in literals, f"[inline.{key}]: {entry['suite']} no longer says {entry['en']!r}"


def _literals(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def _suite_mistake_sentences():
    """The sentences suites pass inline as ``mistakes=lambda: [("sentence", value), ...]`` and
    the reasons they give ``static.assert_source_avoids``."""
    found = []
    for path in sorted(SUITES.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "mistakes" and isinstance(node.value, ast.Lambda) \
                    and isinstance(node.value.body, ast.List):
                for item in node.value.body.elts:
                    if isinstance(item, ast.Tuple) and isinstance(item.elts[0], ast.Constant):
                        found.append((path.name, item.elts[0].value))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "assert_source_avoids" \
                    and len(node.args) == 5 and isinstance(node.args[4], ast.Constant):
                found.append((path.name, f"x.y uses torch.z: {node.args[4].value} (x.py line 1)"))
        for node in tree.body:  # ACTIVATION_BANS = {name: (patterns, "what to write")}
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "").endswith("_BANS"):
                for value in node.value.values:
                    found.append((path.name, f"x.y uses torch.z: the exercise asks you to {value.elts[1].value} "
                                             f"(x.py line 1)"))
    return found


def _formatted_mistakes():
    """The sentences the mistakes modules build with values (``yield f"...", value``), each
    with its values replaced by a number."""
    found = []
    for path in sorted(MISTAKES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Yield) and isinstance(node.value, ast.Tuple) \
                    and isinstance(node.value.elts[0], ast.JoinedStr):
                found.append((path.name, "".join(part.value if isinstance(part, ast.Constant) else "1"
                                                 for part in node.value.elts[0].values)))
    return found


SUITE_SENTENCES = _suite_mistake_sentences() + _formatted_mistakes()


@pytest.mark.parametrize("suite,english", SUITE_SENTENCES, ids=[f"{s}:{e[:40]}" for s, e in SUITE_SENTENCES])
def test_suite_inline_sentences_have_korean(suite, english):
    korean = translate(english, "ko")
    assert korean != english and hangul_ratio(korean) >= MIN_HANGUL, f"{suite}: no Korean for {english!r}"


# -- the messages the grader really builds ----------------------------------------------------
def _mismatch(*args, **kwargs) -> str:
    with pytest.raises(compare.Mismatch) as caught:
        compare.check_tensor(*args, **kwargs)
    return str(caught.value)


def _compare_messages():
    from autograder.mistakes import attention as m

    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nan = x.clone()
    nan[1, 2] = float("nan")
    allowed = torch.ones(3, 3, dtype=torch.bool).tril()
    strict = allowed.logical_not()
    return {
        "values differ": _mismatch(x + 1, x, "softmax(x)"),
        "dtype": _mismatch(x.float(), x, "softmax(x)"),
        "shape": _mismatch(x[:2], x, "softmax(x)"),
        "not a tensor": _mismatch("text", x, "softmax(x)"),
        "a list": _mismatch([1, 2], x, "softmax(x)"),
        "NaN": _mismatch(nan, x, "attention(q, k, v)"),
        "entries differ, one mistake": _mismatch(strict, allowed, "causal_mask(3)",
                                                 mistakes=lambda: [(m.CAUSAL_STRICT, strict)]),
        "entries differ, two mistakes": _mismatch(strict, allowed, "causal_mask(3)", mistakes=lambda: [
            (m.CAUSAL_STRICT, strict), (m.CAUSAL_REVERSED, strict)]),
        "float32 part": _mismatch(x.float().double(), x, "softmax(x, dim=-1)"),
    }


GRADER_MESSAGES = [
    # worker_parent.py and worker.py, as they build them (the phases, crashes and strikes included)
    "not implemented: NotImplementedError",
    "not implemented: MultiHeadAttention.__init__: write this part (see the docstring)",  # a skeleton
    "ValueError in attention.softmax: bad dims",
    "ZeroDivisionError while importing attention.py: division by zero",
    "timed out after 20 s in attention.softmax (an endless loop, or far too slow?); it was at attention.py "
    "line 12, in softmax",
    "the worker process was killed (SIGKILL): most likely it ran out of memory (limit 6.0 GiB) in the "
    "grader's kv_cache.run helper",
    "the worker process exited with status 3 (does the code call os._exit() or exit()?) before "
    "attention.softmax ran",
    "the worker process crashed with a segmentation fault in attention.softmax",
    "not run: attention.softmax already timed out 2 times in earlier tests; last time: timed out after 20 s "
    "in attention.softmax (an endless loop, or far too slow?)",
    "missing: attention.py has no 'softmax'",
    "missing: the submission has no file rope.py",
    "in attention.softmax left 1 thread (Thread-1) running after the call returned; the grader stopped "
    "everything and restarted the worker. Exercise code may not leave processes or threads running",
    "ran out of memory in flash_attention.flash_attention_forward (the limit is 6.0 GiB): out of memory",
    "TypeError in attention.softmax: result is a complex64 tensor; return a real float, integer or bool tensor",
    # runner.py
    "grader error: KeyError: 'x' at test_attention.py:12; please report it to the course staff",
    # the parameter table's one wording (adapters.parameter_mismatch)
    "MultiHeadAttention's parameters are not the API's: missing ['q_proj.weight']; not in the API "
    "['qkv.weight']; shapes: o_proj.weight is (4, 3), expected (4, 4)",
    # report.py
    "Total: 12 / 64 points (3.2 s)",
    "Hint: attention/causal_mask[3]: the causal mask excludes the diagonal: a token must be able to attend "
    "to itself (key position <= query position)",
]


@pytest.mark.parametrize("message", [*_compare_messages().values(), *GRADER_MESSAGES])
def test_the_grader_s_messages_come_out_korean(message):
    korean = translate(message, "ko")
    for line in korean.splitlines():
        assert hangul_ratio(prose(line)) >= MIN_HANGUL, f"not Korean:\n  {line}\n(from {message!r})"
    for english in cat.catalogue().sentences:
        assert english not in korean, f"an English sentence survived: {english!r}"
    assert translate(message, "en") == message


def test_the_report_s_headings_and_words():
    assert translate("attention: 10 / 64 points", "ko") == "attention: 10 / 64점"
    assert translate("attention: 10 / 64 public points", "ko") == "attention: 공개 점검 10 / 64점"
    for english in ["test", "points", "status", "message", "passed", "failed", "error", "skipped", "not run"]:
        assert hangul_ratio(cat.word(english, "ko")) == 1.0, english
        assert cat.word(english, "en") == english


def test_unknown_text_stays_as_it_is():
    for text in ["my own error message", "softmax(x)", "", "Traceback (most recent call last):"]:
        assert translate(text, "ko") == text


def test_a_hostile_message_costs_the_report_no_time():
    """The submission writes the text inside a message: lines built to make the templates'
    regexes backtrack still translate (or stay) at once."""
    import time

    hostile = ["a: values differ from the reference by up to 1 (allowed 1 + 1*|expected| for x); at index " * 20,
               "ValueError in attention.softmax: " + "a: b, got c " * 150, "Hint: a/b: " * 150,
               "the worker process " + "was killed by X in a " * 80, "x" * 100_000]
    started = time.perf_counter()
    for text in hostile:
        translate(text, "ko")
    assert time.perf_counter() - started < 2.0


def test_the_student_s_text_inside_a_message_is_kept():
    korean = translate("ValueError in attention.softmax: my shapes are wrong (2, 3)", "ko")
    assert "my shapes are wrong (2, 3)" in korean and "attention.softmax" in korean


def test_language_follows_the_locale():
    assert cat.language({"LANG": "ko_KR.UTF-8"}) == "ko"
    assert cat.language({"LC_ALL": "ko_KR.UTF-8", "LANG": "en_US.UTF-8"}) == "ko"
    assert cat.language({"LC_ALL": "en_US.UTF-8", "LANG": "ko_KR.UTF-8"}) == "en"  # LC_ALL wins (POSIX)
    assert cat.language({"LC_MESSAGES": "ko_KR", "LANG": "C"}) == "ko"
    assert cat.language({"LANG": "C.UTF-8"}) == "en"
    assert cat.language({}) == "en"


# -- end to end: a known-wrong submission graded with --lang ko -------------------------------
@pytest.mark.slow
def test_grade_lang_ko_reports_a_known_mistake_in_korean(tmp_path):
    from autograder.mistakes import attention as m
    from tests.conftest import materialize, results, run_grader
    from tests.fixtures.mutants import MUTANTS

    mutant = MUTANTS["causal_excludes_diagonal"]
    folder = materialize(tmp_path, "causal_excludes_diagonal", mutant["edits"])
    proc, report = run_grader(folder, "--exercise", "attention", "--lang", "ko", env={"LANG": "C.UTF-8"})
    assert proc.returncode == 0, proc.stderr
    failed = [t for t in results(report).values() if t["status"] != "passed"]
    assert failed, "the mutant lost no points"
    english = list(cat.catalogue().sentences)
    for t in failed:
        assert t["message_en"], t
        for line in t["message"].splitlines():
            assert hangul_ratio(prose(line)) >= MIN_HANGUL, f"{t['name']}: not Korean: {line!r}"
        assert not [s for s in english if s in t["message"]], f"{t['name']}: an English sentence in {t['message']!r}"
        assert translate(t["message_en"], "ko") == t["message"]
    assert any(m.CAUSAL_STRICT in t["message_en"] for t in failed)  # the diagnosis itself is unchanged
    assert any(translate(m.CAUSAL_STRICT, "ko") in t["message"] for t in failed)
    assert report["lang"] == "ko"
    # the terminal report: headings, the total and the hint in Korean; the hint names the mistake
    out = proc.stdout
    hint = [line for line in out.splitlines() if line.startswith("힌트: ")]
    assert hint and translate(m.CAUSAL_STRICT, "ko") in hint[0], out[-2000:]
    assert "합계: " in out and "Total:" not in out and "This looks like" not in out
    assert not [s for s in english if s in out]


@pytest.mark.slow
def test_grade_follows_a_korean_locale_and_lang_en_overrides_it(tmp_path):
    from tests.conftest import materialize, run_grader
    from tests.fixtures.mutants import MUTANTS

    folder = materialize(tmp_path, "m", MUTANTS["causal_excludes_diagonal"]["edits"])
    proc, report = run_grader(folder, "--exercise", "attention", "-k", "causal_mask_square",
                              env={"LANG": "ko_KR.UTF-8", "LC_ALL": ""})
    assert proc.returncode == 0, proc.stderr
    assert report["lang"] == "ko" and "합계: " in proc.stdout
    proc, report = run_grader(folder, "--exercise", "attention", "-k", "causal_mask_square", "--lang", "en",
                              env={"LANG": "ko_KR.UTF-8", "LC_ALL": ""})
    assert report["lang"] == "en" and "Total: " in proc.stdout
    assert all(t["message"] == t["message_en"] for ex in report["exercises"] for t in ex["tests"])


# -- the Korean task statements and README ---------------------------------------------------
def _api_names(exercise: str) -> list[str]:
    """The names docs/API.md gives the exercise (its section's top-level defs in solutions/)."""
    api = (ROOT / "docs" / "API.md").read_text()
    section = api.split(f"## exercises/{exercise}.py", 1)[1].split("\n## ", 1)[0]
    tree = ast.parse((ROOT / "solutions" / f"{exercise}.py").read_text())
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    names += [n.targets[0].id for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)]
    return [name for name in names if not name.startswith("_") and (f"`{name}" in section or f" {name}(" in section)]


def test_every_exercise_has_a_korean_task_statement():
    from autograder.exercises import COURSE

    folder = ROOT / "docs" / "ko" / "exercises"
    index = (folder / "README.md").read_text()
    for exercise in COURSE:
        page = (folder / f"{exercise.name}.md").read_text()
        assert f"({exercise.name}.md)" in index, f"docs/ko/exercises/README.md does not list {exercise.name}"
        assert f"lectures/ko/{exercise.lecture}.ipynb" in page, f"{exercise.name}: not the lecture of exercises.py"
        missing = [name for name in _api_names(exercise.name) if name not in page]
        assert not missing, f"docs/ko/exercises/{exercise.name}.md does not describe {missing}"
        assert hangul_ratio(prose(page)) >= 0.5, f"docs/ko/exercises/{exercise.name}.md is not Korean"


def test_the_korean_student_readme_follows_the_english_one():
    templates = ROOT / "autograder" / "templates"
    english, korean = (templates / "STUDENT_README.md").read_text(), (templates / "STUDENT_README.ko.md").read_text()
    assert "<!-- COURSE ORDER -->" in korean  # release.py fills the course table in
    assert korean.count("\n## ") == english.count("\n## "), "the Korean README has other sections"
    commands = lambda text: set(re.findall(r"`(python3? [^`]+|--[a-z-]+)`", text))  # noqa: E731
    assert commands(english) <= commands(korean), f"commands the Korean README lacks: {commands(english) - commands(korean)}"
    assert hangul_ratio(prose(korean)) >= 0.5


def test_the_release_catalogue_keeps_only_the_sentences_asked_for(tmp_path, monkeypatch):
    from autograder.mistakes import attention as m

    text = cat.release_text(lambda en: en == m.CAUSAL_STRICT)
    data = __import__("tomllib").loads(text)
    kept = [e["en"] for module in data["mistakes"].values() for e in module.values()]
    assert kept == [m.CAUSAL_STRICT] and not data.get("inline")
    assert data["templates"] == DATA["templates"] and data["words"] == DATA["words"]
    # the release's copy translates as the whole one does
    (tmp_path / "catalogue_ko.toml").write_text(text, encoding="utf-8")
    monkeypatch.setattr(cat, "DATA", tmp_path / "catalogue_ko.toml")
    cat.catalogue.cache_clear()
    try:
        message = f"causal_mask(3): 9 of 9 entries differ, first at index (0, 0): expected True, got False\n" \
                  f"  This looks like a known mistake: {m.CAUSAL_STRICT}"
        korean = translate(message, "ko")
        assert all(hangul_ratio(prose(line)) >= MIN_HANGUL for line in korean.splitlines()), korean
        assert translate(m.CAUSAL_STRICT, "ko") in korean
        assert translate(m.NO_SCALE, "ko") == m.NO_SCALE  # not shipped: stays English
    finally:
        cat.catalogue.cache_clear()


def test_suite_templates_still_match_their_suites():
    """A template copied from a suite's own message (``suite = ...``) is matched by its English:
    each of its literal pieces must still be written in that suite."""
    for key, entry in DATA["templates"].items():
        if "suite" not in entry:
            continue
        literals = " ".join(_literals(ast.parse((ROOT / entry["suite"]).read_text())))
        for piece, *_ in string.Formatter().parse(entry["en"]):
            assert piece.strip() == "" or piece in literals, (
                f"[templates.{key}]: {entry['suite']} no longer writes {piece!r}; update the template")
