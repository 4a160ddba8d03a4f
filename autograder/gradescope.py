"""Gradescope packaging: ``python -m autograder gradescope OUT.zip``.

Gradescope unpacks the zip into ``/autograder/source``, runs ``setup.sh`` once when the
image is built, and ``run_autograder`` for every submission (files in
``/autograder/submission``); the results go to ``/autograder/results/results.json``. Both
scripts take the root from ``AUTOGRADER_ROOT`` (default ``/autograder``), so the tests run
them in a temporary tree.

``run_autograder`` hands the choice of files to ``python -m autograder.gradescope run``
(``run`` below): the upload is read by the intake rules (``autograder/intake.py``: regular
``.py`` files only, never through a link), names with control characters are refused, and
the shallowest real ``exercises`` folder (else the loose files at the top) is graded from a
private copy. The always-visible top-level output names visible tests only.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .intake import read_submission
from .isolation import LIMITS
from .text import clean, clean_data, clean_name

ROOT = Path(__file__).resolve().parent.parent

SETUP_SH = """#!/usr/bin/env bash
# Gradescope image setup: Python, CPU-only PyTorch (the default PyPI wheel is a multi-GB CUDA
# build), then the course's requirements.
set -euo pipefail
apt-get update
apt-get install -y python3 python3-pip python3-venv
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install --upgrade pip
# the pin is the course's own (requirements.txt), read here rather than written twice
/autograder/venv/bin/pip install "$(grep -E '^torch==' /autograder/source/course/requirements.txt | cut -d'#' -f1 | tr -d ' ')" \\
    --index-url https://download.pytorch.org/whl/cpu
/autograder/venv/bin/pip install -r /autograder/source/course/requirements.txt
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Grade /autograder/submission with the hidden suites; write results/results.json. Which of the
# uploaded files are graded is decided in Python (python -m autograder.gradescope run): no link
# is followed, no name with a control character is taken, nothing outside the upload is read.
set -uo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
PYTHON="${AUTOGRADER_PYTHON:-$ROOT/venv/bin/python}"
RESULTS="$ROOT/results"
mkdir -p "$RESULTS"
rm -f "$RESULTS/results.json"
cd "$ROOT/source/course"
"$PYTHON" -m autograder.gradescope run --root "$ROOT" > "$RESULTS/grader-output.txt" 2>&1
if [ ! -s "$RESULTS/results.json" ]; then
  # the grader could not even start: still leave Gradescope a valid results.json that says so
  # (the details stay in the output, which only the course staff see)
  printf '%s\\n' '{"score": 0, "output": "The autograder failed; your course staff have been told.", "stdout_visibility": "hidden", "tests": []}' \\
    > "$RESULTS/results.json"
fi
cat "$RESULTS/grader-output.txt"
"""


def _add_tree(archive: zipfile.ZipFile, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            archive.write(path, f"{prefix}/{path.relative_to(folder)}")


def _add_script(archive: zipfile.ZipFile, name: str, text: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFREG | 0o755) << 16  # executable when unpacked
    archive.writestr(info, text)


def build(out: Path) -> Path:
    out = Path(out)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        _add_script(archive, "setup.sh", SETUP_SH)
        _add_script(archive, "run_autograder", RUN_AUTOGRADER)
        for folder in ("autograder", "solutions"):
            _add_tree(archive, ROOT / folder, f"course/{folder}")
        archive.write(ROOT / "requirements.txt", "course/requirements.txt")
    return out


def unpack(zip_path: Path, root: Path) -> Path:
    """Unpack as Gradescope does (into ROOT/source), keeping the executable bits."""
    source = Path(root) / "source"
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            target = archive.extract(info, source)
            mode = info.external_attr >> 16
            if mode:
                os.chmod(target, mode & 0o777)
    return source


# -- run_autograder's Python side -------------------------------------------------------------
# A name with a control character (a newline above all) reads differently in a listing, a
# shell pipeline or a report than what it is: `find | head -n 1` once took the first line of
# "sol\nx/exercises", which was a link to the solutions. Such names are refused outright.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


@dataclass
class Choice:
    """What run_autograder grades from an upload, and what it refused, and why."""
    files: dict[str, bytes] = field(default_factory=dict)  # path inside the chosen folder -> contents
    chosen: str = ""  # the folder graded, relative to the upload ("" for the loose files at its top)
    refused: dict[str, str] = field(default_factory=dict)  # path in the upload -> why not taken
    whole: str = ""  # the whole upload was refused: why

    def describe(self) -> str:
        where = f"the folder {clean_name(self.chosen)}" if self.chosen else "the .py files at the top"
        return f"Graded: {where} of your upload ({len(self.files)} files)."


def choose_submission(upload: str | os.PathLike) -> Choice:
    """Read the upload by the intake rules (regular files only, no link followed, caps) and
    choose what to grade: the shallowest real folder named ``exercises`` (ties: the first by
    sorted path), else the loose ``.py`` files at the top. Files whose path holds a control
    character, or that resolve outside the upload, are refused."""
    upload = os.fspath(upload)
    notes, taken = read_submission(upload)
    choice = Choice(whole=notes.whole, refused={**notes.refused, **notes.skipped})
    if notes.whole:
        return choice
    top = os.path.realpath(upload)
    usable = {}
    for rel, data in taken.items():
        if _CONTROL.search(rel):
            choice.refused[rel] = (f"refused: {clean_name(rel)} has a control character (a newline, say) in its "
                                   f"name or in a folder's name; rename it")
        elif not _inside(os.path.realpath(os.path.join(upload, rel)), top):
            choice.refused[rel] = f"refused: {clean_name(rel)} resolves to a place outside your upload"
        else:
            usable[rel] = data
    # the intake walk enters real folders only, so every folder on these paths is a real one
    folders = {"/".join(parts[:i + 1]) for parts in (rel.split("/") for rel in usable)
               for i, part in enumerate(parts[:-1]) if part == "exercises"}
    if folders:
        choice.chosen = min(folders, key=lambda f: (f.count("/"), f))
        prefix = choice.chosen + "/"
        choice.files = {rel[len(prefix):]: data for rel, data in usable.items() if rel.startswith(prefix)}
    else:
        choice.files = {rel: data for rel, data in usable.items() if "/" not in rel}
    return choice


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top + os.sep)


def stage_choice(choice: Choice, dst: str) -> None:
    """Write the chosen files into the new folder ``dst``, private to the grader."""
    os.mkdir(dst, 0o700)
    for rel, data in sorted(choice.files.items()):
        path = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def _write_results(path: Path, results: dict) -> None:
    part = path.with_name(f".{path.name}.part")
    part.unlink(missing_ok=True)
    part.write_text(json.dumps(clean_data(results), indent=2))
    os.replace(part, path)


def run(root: str | os.PathLike, timeout: float = LIMITS.timeout_s) -> dict:
    """Grade ROOT/submission as run_autograder does; write ROOT/results/results.json and
    return it. Whatever fails, a valid results file is written, and it says what was refused."""
    from .runner import grade

    root = Path(root)
    results_path = root / "results" / "results.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    choice = Choice()
    try:
        choice = choose_submission(root / "submission")
        notes = [choice.whole] if choice.whole else list(choice.refused.values())
        staging = tempfile.mkdtemp(prefix="gradescope-")
        try:
            staged = os.path.join(staging, "submission")
            stage_choice(choice, staged)
            report = grade(staged, timeout=timeout)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        report.print_safely()  # to the output, which only the course staff see
        results = report.to_gradescope()
        results["output"] += "\n" + choice.describe() + "".join(f"\nIntake: {clean(n, 500)}" for n in notes)
    except Exception:  # noqa: BLE001 - the grader's own failure: still a results.json
        traceback.print_exc(file=sys.stdout)
        notes = [choice.whole] if choice.whole else list(choice.refused.values())
        results = {"score": 0, "output": "The autograder failed; your course staff have been told."
                                         + "".join(f"\nIntake: {clean(n, 500)}" for n in notes),
                   "stdout_visibility": "hidden", "tests": []}
    _write_results(results_path, results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.gradescope")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--root", default=os.environ.get("AUTOGRADER_ROOT", "/autograder"))
    parser.add_argument("--timeout", type=float, default=LIMITS.timeout_s,
                        help=f"seconds per call (default {LIMITS.timeout_s:g})")
    args = parser.parse_args(argv)
    run(args.root, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
