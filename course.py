#!/usr/bin/env python3
"""The course's commands, runnable with nothing but Python 3.10+:

    python3 course.py grade [grader options]   grade exercises/ (or --submission DIR)
    python3 course.py lab                      JupyterLab on the lectures (as root too)
    python3 course.py test  [pytest options]   run the repository's own tests (staff checkout)

Each creates the virtual environment ``.venv`` from requirements.txt when it is missing
(or when requirements.txt changed since it was made), then runs inside it; pip shows its
progress. PyTorch comes from its CPU index (https://download.pytorch.org/whl/cpu) when that
index is reachable, else from your default index or local wheels (COURSE_TORCH_INDEX=none
skips the CPU index, COURSE_TORCH_INDEX=URL names another). Other subcommands are passed
to the grader (``python3 course.py bench``, ``python3 course.py skeletons --check`` on the
staff's checkout).
"""
import hashlib
import os
import socket
import subprocess
import sys
import venv
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".requirements.sha256"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# the student release has no solutions/: there the staff's commands say what they are instead
RELEASE = not (ROOT / "solutions").is_dir()
STAFF_ONLY = {
    "test": "runs the repository's own tests, which are not part of the student release",
    "bench": "times the hidden suites, which stay with the course staff",
    "skeletons": "regenerates exercises/ from the reference solutions, which stay with the course staff",
    "release": "builds this student release from the staff's checkout",
    "gradescope": "builds the staff's Gradescope autograder",
    "grade-class": "grades a whole class against the hidden suites (staff only)",
    "adequacy": "measures the hidden suites against known-wrong implementations (staff only)",
    "nbgrader-setup": "sets up the staff's nbgrader course directory",
    "nbgrader-import": "imports class scores into the staff's gradebook",
    "quiz-grade": "grades the class's quizzes (staff only); the Validate button checks yours",
}


def requirements_hash() -> str:
    return hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()


def torch_index() -> str | None:
    """PyTorch's CPU index, when it answers within a few seconds (a machine without internet
    beyond its own package mirror takes torch from there instead)."""
    chosen = os.environ.get("COURSE_TORCH_INDEX", TORCH_CPU_INDEX)
    if chosen.lower() in ("", "none", "off"):
        return None
    parsed = urlparse(chosen)
    if parsed.scheme == "file":
        return chosen
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=3).close()
    except OSError:
        print(f"({chosen} is not reachable: torch comes from your default index or local wheels)", flush=True)
        return None
    return chosen


def pip(*args: str) -> None:
    # no --quiet: pip's progress (downloads, builds) shows while it works
    result = subprocess.run([str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", *args])
    if result.returncode != 0:
        sys.exit(f"pip install failed (exit {result.returncode}); see the messages above")


def pins() -> dict[str, str]:
    """Package -> its exact requirement (``torch==2.13.0``) in requirements.txt, the one place
    a version is pinned (the release, Gradescope and Classroom take theirs from it)."""
    found = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if "==" in requirement:
            found[requirement.split("==")[0].strip()] = requirement
    return found


def torch_pin() -> str | None:
    return pins().get("torch")


def ensure_venv() -> None:
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text().strip() == requirements_hash():
        return
    if not PYTHON.exists():
        print(f"creating the virtual environment {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing requirements.txt into it (a few minutes the first time) ...", flush=True)
    pin, index = torch_pin(), torch_index()
    if pin and index:  # the CPU build first, from the CPU index only; the rest from the default index
        pip(pin, "--index-url", index)
    pip("-r", str(ROOT / "requirements.txt"))
    STAMP.write_text(requirements_hash())


def lab(rest: list[str]) -> list[str]:
    """JupyterLab on the lectures; --allow-root when run as root (a container), and in the
    release the student's Jupyter configuration directory (.jupyter: no instructor tools;
    JupyterLab keeps its settings there too)."""
    args = [str(VENV / "bin" / "jupyter"), "lab", f"--notebook-dir={ROOT}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")
    if (ROOT / ".jupyter").is_dir():  # the release's own Jupyter configuration directory
        os.environ["JUPYTER_CONFIG_DIR"] = str(ROOT / ".jupyter")
    return args + rest


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if RELEASE and (command in STAFF_ONLY or (command == "skeletons" and "--check" in rest)):
        print(f"`{command}` {STAFF_ONLY[command]}. In this release: `python3 course.py grade` "
              f"[--exercise NAME] [-k NAME] [-v] grades your exercises with the public checks, and "
              f"`python3 course.py lab` opens the lectures.", file=sys.stderr)
        return 2
    ensure_venv()
    if command == "test":
        args = [str(PYTHON), "-m", "pytest", *rest]
    elif command == "lab":
        args = lab(rest)
    else:
        args = [str(PYTHON), "-m", "autograder", command, *rest]
    os.chdir(ROOT)
    return subprocess.call(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
