"""Grading a whole class: one grader process per student, a progress bar, reports and a CSV.

``python -m autograder grade-class SUBMISSIONS_DIR --out grades.csv [--jobs N] [--force]``

SUBMISSIONS_DIR holds one folder per student (its ``exercises/`` subfolder if it has one,
else the folder itself, is graded). Each student is graded by its own
``python -m autograder grade`` process, so a broken or hostile submission can cost only its
own report. Next to the CSV, ``reports/<student>.json`` and ``reports/<student>.txt`` hold the
full report and the feedback table. A student whose files have not changed since their
report was written is skipped unless ``--force``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .isolation import make_private, running_as_root, site_dirs

ROOT = Path(__file__).resolve().parent.parent


def submission_folder(student_dir: Path) -> Path:
    return student_dir / "exercises" if (student_dir / "exercises").is_dir() else student_dir


def fingerprint(folder: Path) -> str:
    """A hash of the submission's .py files: a re-run skips students whose files are unchanged."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def grade_student(student_dir: Path, reports: Path, force: bool, extra_args: list[str],
                  timeout: float) -> tuple[str, dict | None, str]:
    name = student_dir.name
    folder = submission_folder(student_dir)
    report_path, text_path = reports / f"{name}.json", reports / f"{name}.txt"
    stamp = fingerprint(folder)
    if report_path.exists() and not force:
        old = json.loads(report_path.read_text())
        if old.get("fingerprint") == stamp:
            return name, old, "skipped (unchanged)"
    try:
        proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "--submission", str(folder),
                               "--json", str(report_path), *extra_args],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        status = "graded" if proc.returncode == 0 and report_path.exists() else f"grader failed ({proc.returncode})"
        text_path.write_text(proc.stdout + (proc.stderr if proc.returncode else ""))
    except subprocess.TimeoutExpired:
        status = f"grader timed out after {timeout:.0f} s"
        text_path.write_text(status + "\n")
    if not report_path.exists() or status != "graded":
        return name, None, status
    report = json.loads(report_path.read_text())
    report["fingerprint"] = stamp
    report_path.write_text(json.dumps(report, indent=2))
    return name, report, status


def grade_class(submissions: Path, out_csv: Path, jobs: int = 1, force: bool = False,
                extra_args: list[str] | None = None, timeout: float = 1800.0,
                console: Console | None = None) -> list[dict]:
    console = console or Console(stderr=True)
    students = sorted(p for p in Path(submissions).iterdir() if p.is_dir() and not p.name.startswith("."))
    reports = Path(out_csv).resolve().parent / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    if running_as_root():
        # each worker runs as an unprivileged uid: keep the other students' files and the
        # reports out of its reach (chmod o-rwx; owner and group are unchanged)
        failed = make_private([Path(submissions).resolve(), reports],
                              keep=[sys.executable, os.path.realpath(sys.executable), *site_dirs()])
        if failed:
            console.print(f"[bold red]warning:[/] could not make these private, so other students' "
                          f"workers may read them: {'; '.join(failed[:5])}")
    rows, exercises = [], []
    with Progress(TextColumn("[bold]grading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console) as progress:
        task = progress.add_task("", total=len(students))
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(grade_student, s, reports, force, extra_args or [], timeout) for s in students]
            for future in futures:
                name, report, status = future.result()
                progress.update(task, advance=1, description=f"{name}: {status}")
                row = {"student": name, "status": status}
                if report is not None:
                    row.update(score=report["score"], max_score=report["max_score"])
                    for ex in report["exercises"]:
                        row[ex["name"]] = ex["score"]
                        if ex["name"] not in exercises:
                            exercises.append(ex["name"])
                rows.append(row)
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["student", "score", "max_score", *exercises, "status"])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in writer.fieldnames})
    return rows


def classroom_score(report_path: Path) -> int:
    """For GitHub Classroom's command grader: print the score as a percentage; exit 0."""
    report = json.loads(Path(report_path).read_text())
    percent = round(100 * report["score"] / report["max_score"]) if report["max_score"] else 0
    print(f"score: {report['score']:g} / {report['max_score']:g} ({percent}%)")
    return 0
