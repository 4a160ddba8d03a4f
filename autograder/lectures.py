"""The two editions of the lectures: English in lectures/, Korean in lectures/ko/ (same names).

The English notebook is the one source of truth for code. Its Korean twin has the same cells,
in the same order, with the same cell ids: every code cell is a copy of the English one
(source and metadata, nbgrader's included), and every markdown cell holds the Korean text of
the English cell with that id.

Cells are paired by **cell id**, not by position. Ids (nbformat 4.5) are unique per notebook
and survive edits, so inserting, deleting or moving an English cell cannot shift the pairing
and put a Korean explanation beside the wrong code: a new English cell is an id the Korean
notebook lacks (it is added, its markdown still English, which a test rejects), a deleted one
is an id it no longer needs (it is dropped, and the tool says so).

Each Korean markdown cell records in its metadata (`edition.en_sha`) a hash of the English
text it was written from, so an English edit that was not carried into Korean is found.

    python -m autograder.lectures sync [NN ...]   # write lectures/ko/ code cells from English
    python -m autograder.lectures check [NN ...]  # list what differs; exit 1 if anything does
    python -m autograder.lectures stale NN        # print English cells changed since translated
    python -m autograder.lectures accept NN ID..  # after updating those Korean cells: record the
                                                  # English text they now render
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
EN_DIR = ROOT / "lectures"
KO_DIR = EN_DIR / "ko"
EDITION_KEY = "edition"  # metadata key of a Korean markdown cell: {"en_sha": ...}


def english_lectures(en_dir: Path = EN_DIR) -> list[Path]:
    return sorted(en_dir.glob("[0-9][0-9]_*.ipynb"))


def korean_path(en_path: Path, ko_dir: Path | None = None) -> Path:
    return (ko_dir or en_path.parent / "ko") / en_path.name


def text_sha(text: str) -> str:
    # 12 hex digits: enough to tell two versions of one cell apart.
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _strip_edition(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k != EDITION_KEY}


def _code_cell(en_cell) -> nbformat.NotebookNode:
    cell = copy.deepcopy(en_cell)
    cell.outputs, cell.execution_count = [], None  # lectures are committed without outputs
    return cell


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)      # English cells new to Korean
    updated: list[str] = field(default_factory=list)    # code cells rewritten from English
    dropped: list[str] = field(default_factory=list)    # Korean cells whose id left English

    def changed(self) -> bool:
        return bool(self.added or self.updated or self.dropped)


def synced(en_nb, ko_nb=None) -> tuple[nbformat.NotebookNode, SyncReport]:
    """The Korean notebook that en_nb implies: English code, Korean markdown kept by id.

    An English markdown cell without a Korean twin is copied in English (a placeholder the
    edition test rejects until someone writes it in Korean); its en_sha is left out, so it
    also counts as untranslated.
    """
    report = SyncReport()
    ko_cells = {c.get("id"): c for c in (ko_nb.cells if ko_nb is not None else [])}
    cells = []
    for en_cell in en_nb.cells:
        ko_cell = ko_cells.pop(en_cell.get("id"), None)
        if en_cell.cell_type == "code":
            new = _code_cell(en_cell)
            if ko_cell is None:
                report.added.append(en_cell.id)
            elif (ko_cell.cell_type != "code" or ko_cell.source != new.source
                  or ko_cell.metadata != new.metadata):
                report.updated.append(en_cell.id)
        elif ko_cell is not None and ko_cell.cell_type == en_cell.cell_type:
            new = copy.deepcopy(ko_cell)
            # nbgrader's markdown metadata comes from English; the translation's record stays
            new.metadata = {**_strip_edition(en_cell.metadata),
                            **({EDITION_KEY: ko_cell.metadata[EDITION_KEY]}
                               if EDITION_KEY in ko_cell.metadata else {})}
            if new.metadata != ko_cell.metadata:
                report.updated.append(en_cell.id)
        else:
            new = copy.deepcopy(en_cell)
            report.added.append(en_cell.id)
        cells.append(new)
    report.dropped = [cid for cid in ko_cells]
    out = copy.deepcopy(ko_nb if ko_nb is not None else en_nb)
    out.cells = cells
    out.metadata = copy.deepcopy(en_nb.metadata)
    out.metadata["language_info"] = dict(out.metadata.get("language_info", {}))
    out.metadata["edition"] = "ko"
    out.nbformat, out.nbformat_minor = en_nb.nbformat, max(en_nb.nbformat_minor, 5)
    return out, report


def set_korean_markdown(ko_nb, en_nb, texts: dict[str, str]) -> None:
    """Write Korean texts (cell id -> markdown) into ko_nb, recording the English each renders."""
    en_cells = {c.id: c for c in en_nb.cells}
    for cell in ko_nb.cells:
        if cell.id in texts:
            en_cell = en_cells[cell.id]
            if en_cell.cell_type != "markdown":
                raise ValueError(f"cell {cell.id} is {en_cell.cell_type} in English, expected markdown")
            cell.source = texts[cell.id].strip("\n")
            cell.metadata[EDITION_KEY] = {"en_sha": text_sha(en_cell.source)}
    unknown = set(texts) - set(en_cells)
    if unknown:
        raise KeyError(f"no English cell with id {sorted(unknown)}")


def differences(en_nb, ko_nb) -> list[str]:
    """Every way ko_nb is not the Korean twin of en_nb (empty when in step)."""
    problems = []
    en_ids = [(c.get("id"), c.cell_type) for c in en_nb.cells]
    ko_ids = [(c.get("id"), c.cell_type) for c in ko_nb.cells]
    if en_ids != ko_ids:
        missing = [i for i, _ in en_ids if (i, _) not in ko_ids]
        extra = [i for i, _ in ko_ids if (i, _) not in en_ids]
        problems.append(f"cells differ: missing in Korean {missing}, only in Korean {extra}"
                        + ("" if missing or extra else ", or in another order"))
    ko_by_id = {c.get("id"): c for c in ko_nb.cells}
    for en_cell in en_nb.cells:
        ko_cell = ko_by_id.get(en_cell.get("id"))
        if ko_cell is None or ko_cell.cell_type != en_cell.cell_type:
            continue
        if en_cell.cell_type == "code":
            if ko_cell.source != en_cell.source:
                problems.append(f"code cell {en_cell.id}: source differs from English")
            if ko_cell.metadata != en_cell.metadata:
                problems.append(f"code cell {en_cell.id}: metadata differs from English")
            if ko_cell.get("outputs"):
                problems.append(f"code cell {en_cell.id}: has outputs (commit without outputs)")
        else:
            if _strip_edition(ko_cell.metadata) != _strip_edition(en_cell.metadata):
                problems.append(f"markdown cell {en_cell.id}: metadata differs from English")
            recorded = ko_cell.metadata.get(EDITION_KEY, {}).get("en_sha")
            if recorded is None:
                problems.append(f"markdown cell {en_cell.id}: not translated yet")
            elif recorded != text_sha(en_cell.source):
                problems.append(f"markdown cell {en_cell.id}: English changed since the Korean "
                                "was written (update the Korean, then its en_sha)")
    return problems


# ---------------------------------------------------------------- text measurements

_FENCE = re.compile(r"```.*?```", re.S)
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.S)
_INLINE_MATH = re.compile(r"\$[^$\n]+\$")
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_HTML = re.compile(r"<[^>\n]+>")
_URL = re.compile(r"https?://\S+")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def prose(markdown: str) -> str:
    """The markdown's running text: no code, formulas, tags, URLs or link targets."""
    text = _FENCE.sub(" ", markdown)
    text = _DISPLAY_MATH.sub(" ", text)
    text = _INLINE_MATH.sub(" 0 ", text)  # a formula reads as one word, a letter of no language
    text = _CODE_SPAN.sub(" 0 ", text)
    text = _URL.sub(" ", text)
    text = _LINK.sub(r"\1", text)
    return _HTML.sub(" ", text)


def _is_hangul(ch: str) -> bool:
    return "\uac00" <= ch <= "\ud7a3" or "\u3131" <= ch <= "\u318e"


def hangul_ratio(markdown: str) -> tuple[float, int]:
    """(Hangul syllables / (Hangul + Latin letters), number of such letters) in the prose.

    One Hangul syllable carries about what two or three Latin letters do, so Korean text that
    keeps English terms in parentheses still scores well above 0.3; English text scores 0.
    """
    text = prose(markdown)
    hangul = sum(map(_is_hangul, text))
    latin = sum(ch.isascii() and ch.isalpha() for ch in text)
    total = hangul + latin
    return (hangul / total if total else 1.0), total


def sentences(markdown: str) -> list[str]:
    """Sentences of the markdown's prose; tables and short list items of terms are skipped."""
    kept = []
    for line in prose(markdown).splitlines():
        stripped = re.sub(r"^(\s*>)+", "", line).strip()  # a quote's ">" is no word
        if stripped.startswith("|"):  # a table row: cells, not sentences
            continue
        kept.append(stripped)
    text = "\n".join(kept)
    # a blank line, a heading or a list item ends a sentence too
    blocks = re.split(r"\n\s*\n|\n(?=#)|\n(?=\s*(?:[-*]|\d+\.)\s)", text)
    out = []
    for block in blocks:
        block = " ".join(block.split())
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z0*(\"'_])", block):
            if sentence:
                out.append(sentence)
    return out


def word_count(sentence: str) -> int:
    return len([w for w in sentence.split() if any(ch.isalnum() for ch in w)])


# ---------------------------------------------------------------- command line

def _select(numbers: list[str]) -> list[Path]:
    paths = english_lectures()
    if numbers:
        paths = [p for p in paths if p.name[:2] in {n.zfill(2) for n in numbers}]
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.lectures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["sync", "check", "stale", "accept"])
    parser.add_argument("lectures", nargs="*",
                        help="lecture numbers (default: all); for accept: one number, then cell ids")
    args = parser.parse_args(argv)
    if args.command == "accept":
        return _accept(args.lectures)
    failed = False
    for en_path in _select(args.lectures):
        ko_path = korean_path(en_path)
        en_nb = nbformat.read(en_path, as_version=4)
        ko_nb = nbformat.read(ko_path, as_version=4) if ko_path.exists() else None
        if args.command == "sync":
            new, report = synced(en_nb, ko_nb)
            if ko_nb is None or report.changed():
                ko_path.parent.mkdir(exist_ok=True)
                nbformat.write(new, ko_path)
            print(f"{ko_path.relative_to(ROOT)}: {len(report.updated)} updated, "
                  f"{len(report.added)} added (markdown added is still English), "
                  f"dropped {report.dropped or 'none'}")
        elif args.command == "check":
            problems = ["Korean edition missing"] if ko_nb is None else differences(en_nb, ko_nb)
            for problem in problems:
                print(f"{ko_path.relative_to(ROOT)}: {problem}")
            failed |= bool(problems)
        else:
            if ko_nb is None:
                print(f"{ko_path.relative_to(ROOT)}: missing")
                failed = True
                continue
            ko_by_id = {c.id: c for c in ko_nb.cells}
            for cell in en_nb.cells:
                ko_cell = ko_by_id.get(cell.id)
                if cell.cell_type == "markdown" and (
                        ko_cell is None or ko_cell.metadata.get(EDITION_KEY, {}).get("en_sha")
                        != text_sha(cell.source)):
                    print(f"--- {cell.id}\n{cell.source}\n")
                    failed = True
    return 1 if failed else 0


def _accept(words: list[str]) -> int:
    # Record, for Korean markdown cells a person has just brought up to date, the English they render.
    if len(words) < 2:
        print("accept takes a lecture number and at least one cell id, e.g. `accept 03 2688483e`")
        return 2
    (en_path,) = _select(words[:1]) or [None]
    ko_path = korean_path(en_path) if en_path else None
    if ko_path is None or not ko_path.exists():
        print(f"no Korean edition of lecture {words[0]}")
        return 1
    en_nb, ko_nb = nbformat.read(en_path, as_version=4), nbformat.read(ko_path, as_version=4)
    ko_cells = {c.id: c for c in ko_nb.cells if c.cell_type == "markdown"}
    unknown = [cid for cid in words[1:] if cid not in ko_cells]
    if unknown:
        print(f"not markdown cells of {ko_path.name}: {unknown}")
        return 1
    set_korean_markdown(ko_nb, en_nb, {cid: ko_cells[cid].source for cid in words[1:]})
    nbformat.write(ko_nb, ko_path)
    print(f"{ko_path.relative_to(ROOT)}: recorded the current English of {words[1:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
