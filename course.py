#!/usr/bin/env python3
"""The course's two commands, runnable with nothing but Python 3.10+:

    python3 course.py grade [grader options]   grade exercises/ (or --submission DIR)
    python3 course.py test  [pytest options]   run the repository's own tests

Each creates the virtual environment ``.venv`` from requirements.txt when it is missing
(or when requirements.txt changed since it was made), then runs inside it. Other
subcommands are passed to the grader: ``python3 course.py bench``,
``python3 course.py skeletons --check``.
"""
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".requirements.sha256"


def requirements_hash() -> str:
    return hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()


def ensure_venv() -> None:
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text().strip() == requirements_hash():
        return
    if not PYTHON.exists():
        print(f"creating the virtual environment {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing requirements.txt into it (a few minutes the first time) ...", flush=True)
    result = subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet",
                             "--disable-pip-version-check", "-r", str(ROOT / "requirements.txt")],
                            stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        sys.exit(f"pip install failed (exit {result.returncode}); see the messages above")
    STAMP.write_text(requirements_hash())


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    ensure_venv()
    if command == "test":
        args = [str(PYTHON), "-m", "pytest", *rest]
    else:
        args = [str(PYTHON), "-m", "autograder", command, *rest]
    os.chdir(ROOT)
    return subprocess.call(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
