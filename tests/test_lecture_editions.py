"""The English and Korean editions of the lectures (issue 18).

- every English lecture has a Korean twin in lectures/ko/ with the same cells (paired by cell
  id), identical code cells (source and metadata, nbgrader's included), Korean markdown written
  from the current English text (autograder/lectures.py records a hash per cell);
- the English markdown is plain: no sentence over 35 words, no idiom from a short list;
- the sync tool itself puts English code into the Korean notebook and reports drift.
Execution of both editions is tests/test_lectures.py.
"""
import copy
import re

import nbformat
import pytest
from markdown_it import MarkdownIt  # CommonMark, as JupyterLab and the website (MyST) render it
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from autograder import lectures as editions

ENGLISH = editions.english_lectures()
MAX_WORDS = 35  # issue 18: "no sentence over 35 words"
# Hangul syllables / (Hangul + Latin letters) in a cell's prose. Measured on lectures 01-04 and 08:
# Korean cells 0.39 (a list of English paper titles) to 1.0, most above 0.55; English cells 0.0
# to 0.07 (a glossary table with a Korean column). The bound sits between the two, so a cell left
# in English, or one that is mostly English sentences, fails.
MIN_HANGUL = 0.25
MIN_LETTERS = 12  # a cell with fewer letters (a lone formula, "**Q1.**") carries no language
# Idioms a non-native reader trips on (issue 18 names the first four; the rest were found in
# the lectures and rewritten). Phrases, matched case-insensitively on word boundaries.
IDIOMS = ["hit a wall", "hits a wall", "cheap insurance", "knock it onto", "rule of thumb",
          "in a nutshell", "under the hood", "out of the box", "boils down to", "ballpark",
          "sweet spot", "low-hanging fruit", "silver bullet", "at the end of the day",
          "a sliver of", "the whole point", "easy to feel", "trust the picture", "for free",
          "buys its", "kills its", "is gone after"]


def _ids(paths):
    return [p.stem for p in paths]


def _read(path):
    return nbformat.read(path, as_version=4)


def _markdown(nb):
    return [c for c in nb.cells if c.cell_type == "markdown"]


@pytest.mark.parametrize("en_path", ENGLISH, ids=_ids(ENGLISH))
def test_korean_edition_exists(en_path):
    ko_path = editions.korean_path(en_path)
    assert ko_path.exists(), (f"{ko_path.relative_to(editions.ROOT)} is missing: "
                              "run `python -m autograder.lectures sync` and write its markdown in Korean")


def _pair(en_path):
    ko_path = editions.korean_path(en_path)
    if not ko_path.exists():
        pytest.fail(f"no Korean edition of {en_path.name}")
    return _read(en_path), _read(ko_path)


@pytest.mark.parametrize("en_path", ENGLISH, ids=_ids(ENGLISH))
def test_same_cells_and_identical_code(en_path):
    en_nb, ko_nb = _pair(en_path)
    problems = [p for p in editions.differences(en_nb, ko_nb) if "markdown cell" not in p]
    assert not problems, ("the Korean code drifted from English; the English notebook is the "
                          "source: run `python -m autograder.lectures sync`\n" + "\n".join(problems))


@pytest.mark.parametrize("en_path", ENGLISH, ids=_ids(ENGLISH))
def test_korean_markdown_is_current(en_path):
    en_nb, ko_nb = _pair(en_path)
    problems = [p for p in editions.differences(en_nb, ko_nb) if "markdown cell" in p]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("en_path", ENGLISH, ids=_ids(ENGLISH))
def test_korean_markdown_is_korean(en_path):
    _, ko_nb = _pair(en_path)
    english_left = []
    for cell in _markdown(ko_nb):
        ratio, letters = editions.hangul_ratio(cell.source)
        if letters >= MIN_LETTERS and ratio < MIN_HANGUL:
            english_left.append(f"{cell.id} (Hangul {ratio:.2f}): {cell.source[:80]!r}")
    assert not english_left, "markdown cells still (mostly) English:\n" + "\n".join(english_left)
    text = " ".join(c.source for c in _markdown(ko_nb))
    assert "자가 점검" in text, "the Korean edition's Self-check heading is 자가 점검"


@pytest.mark.parametrize("en_path", ENGLISH, ids=_ids(ENGLISH))
def test_english_sentences_are_short(en_path):
    long = [f"{cell.id} [{editions.word_count(s)} words] {s}"
            for cell in _markdown(_read(en_path)) for s in editions.sentences(cell.source)
            if editions.word_count(s) > MAX_WORDS]
    assert not long, f"sentences over {MAX_WORDS} words:\n" + "\n\n".join(long)


@pytest.mark.parametrize("en_path", ENGLISH, ids=_ids(ENGLISH))
def test_english_has_no_idioms(en_path):
    found = [f"{cell.id}: {idiom!r}" for cell in _markdown(_read(en_path)) for idiom in IDIOMS
             if re.search(rf"\b{re.escape(idiom)}\b", editions.prose(cell.source), re.I)]
    assert not found, "idioms a non-native reader trips on:\n" + "\n".join(found)


KOREAN = [editions.korean_path(p) for p in ENGLISH if editions.korean_path(p).exists()]


def _unrendered_emphasis(markdown):
    """Text pieces where a `*`/`**` stayed literal under CommonMark's flanking rules.

    Korean glues particles to words: `**포화(saturation)**되기` cannot close (a closing run after
    punctuation must be followed by space or punctuation), so the asterisks show. Math is swapped
    for a placeholder first, as JupyterLab's renderer does; the website's MyST parser is this one.
    """
    text = re.sub(r"\$\$.*?\$\$", "@@0@@", markdown, flags=re.S)
    text = re.sub(r"\$[^$\n]+\$", "@@0@@", text)
    return [child.content for token in _MARKDOWN.parse(text) if token.type == "inline"
            for child in token.children if child.type == "text" and "*" in child.content]


_MARKDOWN = MarkdownIt("commonmark").enable("table")


@pytest.mark.parametrize("path", ENGLISH + KOREAN,
                         ids=lambda p: str(p.relative_to(editions.EN_DIR).with_suffix("")))
def test_emphasis_renders(path):
    literal = [f"{cell.id}: {piece[:70]!r}" for cell in _markdown(_read(path))
               for piece in _unrendered_emphasis(cell.source)]
    assert not literal, ("emphasis that renders as literal asterisks (move the punctuation out of "
                         "the **...**, or follow it with a space):\n" + "\n".join(literal))


# ---------------------------------------------------------------- the tool and the measures

def _tiny_pair():
    en = new_notebook(cells=[
        new_markdown_cell("# Title\n\nThe first cell explains the code below it.", id="m1"),
        new_code_cell("x = 1", id="c1"),
        new_markdown_cell("Then we add one.", id="m2"),
        new_code_cell("x += 1", id="c2",
                      metadata={"nbgrader": {"grade": True, "grade_id": "c2", "points": 1}}),
    ])
    ko, report = editions.synced(en)
    assert report.added == ["m1", "c1", "m2", "c2"]
    editions.set_korean_markdown(ko, en, {"m1": "# 제목\n\n첫 셀은 아래 코드를 설명합니다.",
                                          "m2": "그다음 1을 더합니다."})
    return en, ko


def test_sync_writes_english_code_and_keeps_korean_markdown():
    en, ko = _tiny_pair()
    assert editions.differences(en, ko) == []
    assert ko.cells[3].metadata == en.cells[3].metadata  # nbgrader metadata travels

    drifted = copy.deepcopy(ko)
    drifted.cells[1].source = "x = 2"  # edited in Korean only
    assert editions.differences(en, drifted) == ["code cell c1: source differs from English"]
    repaired, report = editions.synced(en, drifted)
    assert report.updated == ["c1"] and editions.differences(en, repaired) == []

    en.cells[3].source = "x += 10"  # edited in English only: sync carries it over
    assert editions.differences(en, ko) == ["code cell c2: source differs from English"]
    ko, _ = editions.synced(en, ko)
    assert ko.cells[3].source == "x += 10" and ko.cells[2].source == "그다음 1을 더합니다."


def test_pairing_by_id_survives_an_inserted_cell():
    en, ko = _tiny_pair()
    en.cells.insert(1, new_code_cell("import math", id="c0"))  # a new first code cell
    ko, report = editions.synced(en, ko)
    assert report.added == ["c0"] and report.updated == [] and report.dropped == []
    # by position, c1's Korean neighbour would now sit beside "import math"; by id it does not
    assert [c.id for c in ko.cells] == ["m1", "c0", "c1", "m2", "c2"]
    assert ko.cells[2].source == "x = 1" and editions.differences(en, ko) == []

    del en.cells[3]  # m2 removed from English
    ko, report = editions.synced(en, ko)
    assert report.dropped == ["m2"] and [c.id for c in ko.cells] == ["m1", "c0", "c1", "c2"]


def test_stale_and_untranslated_markdown_are_reported():
    en, ko = _tiny_pair()
    en.cells[2].source = "Then we add two."
    assert editions.differences(en, ko) == [
        "markdown cell m2: English changed since the Korean was written "
        "(update the Korean, then its en_sha)"]
    en.cells.append(new_markdown_cell("A new English paragraph about the result.", id="m3"))
    ko, report = editions.synced(en, ko)
    assert report.added == ["m3"]
    assert "markdown cell m3: not translated yet" in editions.differences(en, ko)
    assert editions.hangul_ratio(ko.cells[-1].source)[0] < MIN_HANGUL  # the placeholder is English


def test_measures():
    ratio, _ = editions.hangul_ratio("셀프 어텐션(self-attention)은 모든 토큰 쌍을 `Q @ K.T`로 비교합니다.")
    assert ratio > MIN_HANGUL
    assert editions.hangul_ratio("Self-attention compares every pair of tokens.")[0] == 0.0
    assert editions.hangul_ratio("$$x^2$$ `code`")[1] == 0  # formulas and code are no language
    text = ("A short sentence. " + " ".join(["Word"] * 40) + ".\n\n| a | table | row |\n"
            "- a list item\n\n> A quoted sentence with $x = 1$ inside.")
    counts = [editions.word_count(s) for s in editions.sentences(text)]
    assert counts == [3, 40, 3, 6]
    assert _unrendered_emphasis("소프트맥스가 **포화(saturation)**되기 때문입니다.")  # cannot close
    assert not _unrendered_emphasis("소프트맥스가 **포화**(saturation)되기 때문입니다.")
    assert not _unrendered_emphasis("**columns $i$ to $j$** of *Q*, and $a * b$.")
