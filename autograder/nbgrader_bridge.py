"""nbgrader for the course: a course directory for the lecture quizzes, and the exercise
scores of ``grade-class`` imported into the same gradebook, so one ``nbgrader export``
holds the whole course grade.

``python -m autograder nbgrader-setup COURSE_DIR``   source/lectureNN/<lecture>.ipynb + config
``python -m autograder nbgrader-import REPORTS_DIR --db sqlite:///COURSE_DIR/gradebook.db``
    one assignment "exercises" with one notebook "exercises" whose grade cells are the
    exercises; each student's score goes in as that cell's manual score.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_course(course_dir: Path) -> list[str]:
    """A fresh nbgrader course directory with one assignment per lecture."""
    course_dir = Path(course_dir)
    course_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "nbgrader_config.py", course_dir / "nbgrader_config.py")
    assignments = []
    for notebook in sorted((ROOT / "lectures").glob("[0-9][0-9]_*.ipynb")):
        name = f"lecture{notebook.name[:2]}"
        (course_dir / "source" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(notebook, course_dir / "source" / name / notebook.name)
        assignments.append(name)
    return assignments


def import_exercise_scores(reports_dir: Path, db_url: str, assignment: str = "exercises") -> int:
    """Put every ``<student>.json`` report of ``reports_dir`` into the gradebook; returns how many."""
    import warnings

    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning

    warnings.simplefilter("ignore", SAWarning)  # nbgrader's own ORM chatter on new submissions
    reports = {p.stem: json.loads(p.read_text()) for p in sorted(Path(reports_dir).glob("*.json"))}
    maxima: dict[str, float] = {}
    for report in reports.values():
        for ex in report["exercises"]:
            maxima[ex["name"]] = max(maxima.get(ex["name"], 0.0), ex["max_score"])
    with Gradebook(db_url) as gb:
        gb.update_or_create_assignment(assignment)
        gb.update_or_create_notebook(assignment, assignment)
        for exercise, max_score in maxima.items():
            gb.update_or_create_grade_cell(exercise, assignment, assignment, max_score=max_score, cell_type="code")
        for student, report in reports.items():
            gb.update_or_create_student(student)
            gb.update_or_create_submission(assignment, student)
            for ex in report["exercises"]:
                grade = gb.find_grade(ex["name"], assignment, assignment, student)
                grade.manual_score = float(ex["score"])
            gb.db.commit()
    return len(reports)
