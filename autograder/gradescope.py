"""Gradescope packaging: ``python -m autograder gradescope OUT.zip``.

Gradescope unpacks the zip into ``/autograder/source``, runs ``setup.sh`` once when the
image is built, and ``run_autograder`` for every submission (files in
``/autograder/submission``); the results go to ``/autograder/results/results.json``. Both
scripts take the root from ``AUTOGRADER_ROOT`` (default ``/autograder``), so the tests run
them in a temporary tree.
"""
from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETUP_SH = """#!/usr/bin/env bash
# Gradescope image setup: Python, CPU-only PyTorch (the default PyPI wheel is a multi-GB CUDA
# build), then the course's requirements.
set -euo pipefail
apt-get update
apt-get install -y python3 python3-pip python3-venv
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install --upgrade pip
/autograder/venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
/autograder/venv/bin/pip install -r /autograder/source/course/requirements.txt
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Grade /autograder/submission with the hidden suites; write results/results.json.
set -uo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
PYTHON="${AUTOGRADER_PYTHON:-$ROOT/venv/bin/python}"
COURSE="$ROOT/source/course"
RESULTS="$ROOT/results"
mkdir -p "$RESULTS"
# the student's files: an exercises/ folder anywhere in the upload, else the .py files at its top
WORK="$(mktemp -d)"
FOUND="$(find "$ROOT/submission" -type d -name exercises -not -path '*/.*' | head -n 1)"
# -P: a symbolic link stays a link (root following it could copy the solutions in)
if [ -n "$FOUND" ]; then
  cp -RP "$FOUND"/. "$WORK"/
else
  find "$ROOT/submission" -maxdepth 1 -name '*.py' -exec cp -P {} "$WORK"/ \\;
fi
cd "$COURSE"
if ! "$PYTHON" -m autograder grade --submission "$WORK" --gradescope "$RESULTS/results.json" \\
     > "$RESULTS/grader-output.txt" 2>&1; then
  # the grader itself failed: still leave Gradescope a valid results.json that says so
  printf '{"score": 0, "output": "The autograder failed; your course staff have been told. %s", "tests": []}\\n' \\
    "$(tail -c 300 "$RESULTS/grader-output.txt" | tr -d '"\\\\\\n')" > "$RESULTS/results.json"
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
