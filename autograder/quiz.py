"""Lecture quizzes graded by the exercises' trust model; nbgrader stays the gradebook, the
release tool (``generate_assignment``) and the feedback generator.

``python -m autograder quiz-grade lecture01 --course COURSE_DIR`` replaces
``nbgrader autograde``, which runs every student's notebook as the instructor (root in a
container) with the quiz's asserts in the same kernel as the student's code. Here:

collect (this process, root)
    each ``submitted/<student>/<assignment>/<notebook>.ipynb`` the source has: a regular
    file (no link, FIFO or device), at most ``MAX_NOTEBOOK_BYTES``, parsed as JSON; only the
    answer cells (solution cells whose grade id the *source* has) are taken, whatever the
    student did to the other cells or their metadata (duplicated or empty ``nbgrader``
    metadata, an unknown ``schema_version``); outputs are never read further.
grade (a child grader process per student, killed at ``--student-timeout``)
    the answer cells run in the exercise worker (``autograder.worker_parent.Worker``: a pool uid
    as root, rlimits, its own network namespace, every process of the uid killed at the
    end) through ``quiz_runner.py``, which returns the values each question's test cell
    uses as plain data (``weights_only`` frames); functions stay in the worker and are
    called with plain arguments. The test cell's code, taken from the *source* notebook
    (hidden tests included), then runs in the child grader on those values: no transformer,
    subclass or monkeypatch in the student's process reaches it.
record (this process)
    scores into nbgrader's gradebook (``auto_score`` per grade cell) and
    ``autograded/<student>/<assignment>/<notebook>.ipynb`` built from the *release* version
    (no hidden tests): the student's answer cells (markdown sanitised), and per test cell
    one line saying passed or why not. ``nbgrader generate_feedback`` renders that.

A test cell may use, besides builtins, ``math``, ``torch`` and ``F``, any name that it does
not assign itself: those are the values (or functions) the answer cells must define.
"""
from __future__ import annotations

import ast
import builtins
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
MAX_NOTEBOOK_BYTES = 32 * MiB  # a lecture with its outputs is < 2 MiB; a flood is refused here
SCHEMA_VERSION = 3  # nbgrader 0.9's cell metadata
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")
PRELUDE_NAMES = {"math", "torch", "F"}  # available to answer cells and test cells alike
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class Refused(Exception):
    """A submission (or one notebook of it) that is not graded; the message says why."""


# -- the quiz, from the source notebook (trusted) ----------------------------------------------
@dataclass
class Question:
    grade_id: str
    points: float
    test: str  # the source's test cell: public and hidden tests
    names: list[str] = field(default_factory=list)  # what the answers must define


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else str(source)


def free_names(code: str) -> list[str]:
    """Names the code reads but never binds, other than builtins and the prelude: the values
    the question asks for."""
    tree = ast.parse(code)
    bound, read = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (bound.add if isinstance(node.ctx, (ast.Store, ast.Del)) else read.append)(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    skip = bound | PRELUDE_NAMES | set(dir(builtins))
    return list(dict.fromkeys(n for n in read if n not in skip))


def _nbgrader(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader")
    return meta if isinstance(meta, dict) else {}


def source_quiz(nb) -> tuple[dict[str, str], list[Question]]:
    """(answer grade id -> cell type, questions) of a source notebook."""
    answers, questions = {}, []
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if meta.get("solution"):  # a markdown answer is also a (manually graded) grade cell
            answers[meta["grade_id"]] = cell.cell_type
        elif meta.get("grade") and cell.cell_type == "code":
            test = _text(cell.source)
            questions.append(Question(meta["grade_id"], float(meta.get("points", 0)), test, free_names(test)))
    return answers, questions


# -- collection: what is taken from a student's notebook ----------------------------------------
def read_regular_file(path: Path, cap: int = MAX_NOTEBOOK_BYTES) -> bytes:
    """The bytes of a regular file, never through a link, never more than ``cap``."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise Refused(f"{path.name} was not handed in ({exc.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        raise Refused(f"{path.name} is a symbolic link, which the grader does not follow; hand in the notebook itself")
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"{path.name} is not a regular file")
    fd = os.open(path, _FILE_FLAGS)  # O_NOFOLLOW: swapped for a link since the lstat fails here
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or opened.st_ino != info.st_ino:
            raise Refused(f"{path.name} changed while it was being read")
        if opened.st_size > cap:
            raise Refused(f"{path.name} is {opened.st_size / MiB:.0f} MiB, more than the {cap / MiB:.0f} MiB a "
                          f"notebook may have; clear its outputs (Kernel > Restart & Clear Output) and hand it in again")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(cap + 1)
    finally:
        os.close(fd)
    if len(data) > cap:
        raise Refused(f"{path.name} grew past {cap / MiB:.0f} MiB while it was being read")
    return data


def checked_answers(data: bytes, answer_ids: dict[str, str]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The answer cells of a student's notebook, as (grade id, cell type, source), in notebook
    order, and notes on what was repaired. Only cells that carry solution metadata with a
    grade id the source has are answers; test cells and everything else the student changed
    are ignored (tests come from the source), so no metadata of theirs can stop grading."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Refused(f"the notebook is not valid JSON ({str(exc)[:200]})") from None
    cells = raw.get("cells") if isinstance(raw, dict) else None
    if not isinstance(cells, list):
        raise Refused("the notebook has no list of cells (is it a Jupyter notebook of format 4?)")
    taken, notes, seen = [], [], set()
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict) or not isinstance(cell.get("metadata", {}), dict):
            notes.append(f"cell {index} is malformed and was ignored")
            continue
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta is None:
            continue
        if not isinstance(meta, dict) or not meta:
            notes.append(f"cell {index} has empty nbgrader metadata; treated as an ordinary cell")
            continue
        grade_id = meta.get("grade_id")
        if not (isinstance(grade_id, str) and grade_id in answer_ids and meta.get("solution")):
            continue  # a test cell, a pasted copy of one, or an unknown cell: the source decides
        if meta.get("schema_version") != SCHEMA_VERSION:
            notes.append(f"answer cell {grade_id} has schema_version {str(meta.get('schema_version'))[:20]!r}; "
                         f"read as version {SCHEMA_VERSION}")
        if grade_id in seen:
            notes.append(f"answer cell {grade_id} appears more than once; all copies run, in order")
        seen.add(grade_id)
        source = cell.get("source", "")
        if not isinstance(source, (str, list)) or not all(isinstance(s, str) for s in source):
            notes.append(f"answer cell {grade_id} has no text; taken as empty")
            source = ""
        taken.append((grade_id, answer_ids[grade_id], _text(source)))
    missing = [g for g in answer_ids if g not in seen]
    if missing:
        notes.append("no answer cell " + ", ".join(missing) + " (deleted, or its metadata changed)")
    return taken, notes


# -- grading: the child grader process ----------------------------------------------------------
class StudentCodeError(Exception):
    """A call into the answers failed in the worker."""


def _plain(value, depth=0) -> bool:
    """Exact built-in types and plain tensors only (re-checked here: the worker is not trusted)."""
    import torch

    if depth > 16:
        return False
    if value is None or type(value) in (bool, int, float, str) or type(value) is torch.Tensor:
        return True
    if type(value) in (list, tuple):
        return all(_plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    return False


def _proxy(worker, cells, name):
    """A stand-in for the student's function: each call runs in the worker with plain arguments."""
    from .isolation import LIMITS
    from .worker_parent import SubmissionError

    def call(*args, **kwargs):
        try:
            value = worker.call("quiz_runner.call", cells, name, list(args), kwargs, timeout=LIMITS.timeout_s)
        except SubmissionError as exc:
            raise StudentCodeError(f"{name}(...): {str(exc)[:500]}") from None
        if not _plain(value):
            raise StudentCodeError(f"{name}(...) returned something other than plain data")
        return value

    call.__name__ = name
    return call


def run_test(question: Question, namespace: dict) -> tuple[bool, str]:
    """The test cell's code on plain values, in this (the grader's) process."""
    import math

    import torch
    import torch.nn.functional as F

    scope = {"__builtins__": builtins, "math": math, "torch": torch, "F": F, **namespace}
    try:
        exec(compile(question.test, f"<test cell {question.grade_id}>", "exec"), scope)
    except AssertionError as exc:
        return False, f"failed: {exc}" if str(exc) else "failed: an assertion did not hold"
    except StudentCodeError as exc:
        return False, f"failed: {exc}"
    except Exception as exc:  # a wrong type the test did not expect, e.g. len() of an int
        return False, f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    return True, "passed"


def grade_answers(cells: list[tuple[str, str]], questions: list[Question], timeout: float = 60.0) -> dict:
    """Scores of one student's answers: ``{"results": {grade_id: {score, max_score, message}},
    "isolation": {...}}``. The answers run in the worker; the tests run here."""
    from .worker_parent import SubmissionError, Worker

    names = list(dict.fromkeys(n for q in questions for n in q.names))
    folder = tempfile.mkdtemp(prefix="course-quiz-")  # the worker's "submission": the runner only
    shutil.copy(HERE / "quiz_runner.py", folder)
    results = {}
    try:
        with Worker(folder, timeout=timeout, max_reply_bytes=16 * MiB) as worker:
            isolation = worker.isolation()
            try:
                reply = worker.call("quiz_runner.values", [list(c) for c in cells], names)
                if type(reply) is not dict or type(reply.get("names")) is not dict:
                    raise SubmissionError("the answers' reply was malformed", "bad-reply")
                found, errors = reply["names"], reply.get("errors") or {}
            except SubmissionError as exc:
                message = f"failed: running the answer cells: {str(exc)[:600]}"
                return {"results": {q.grade_id: {"score": 0.0, "max_score": q.points, "message": message}
                                    for q in questions}, "isolation": isolation}
            errors = {str(k)[:100]: str(v)[:1000] for k, v in errors.items()} if type(errors) is dict else {}
            for question in questions:
                namespace, problem = {}, ""
                for name in question.names:
                    entry = found.get(name) if type(found.get(name)) is dict else {"kind": "missing"}
                    if entry.get("kind") == "value" and _plain(entry.get("value")):
                        namespace[name] = entry["value"]
                    elif entry.get("kind") == "function":
                        namespace[name] = _proxy(worker, [list(c) for c in cells], name)
                    elif entry.get("kind") == "refused":
                        problem = f"failed: {str(entry.get('message'))[:300]}"
                    else:
                        # the errors of this question's own answer cell ("l01-q1-answer" for
                        # "l01-q1-test") when the ids pair up, else all of them
                        prefix = question.grade_id.rsplit("-", 1)[0] + "-"
                        own = [m for g, m in errors.items() if g.startswith(prefix)] or list(errors.values())
                        problem = f"failed: {name} is not defined" + (f" ({'; '.join(own)[:600]})" if own else "")
                    if problem:
                        break
                passed, message = (False, problem) if problem else run_test(question, namespace)
                results[question.grade_id] = {"score": question.points if passed else 0.0,
                                              "max_score": question.points, "message": message}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"results": results, "isolation": isolation}


def _child_main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    questions = [Question(**q) for q in spec["questions"]]
    result = grade_answers([tuple(c) for c in spec["cells"]], questions, spec.get("timeout", 60.0))
    Path(out_path).write_text(json.dumps(result))
    return 0


def grade_in_child(cells, questions: list[Question], student_timeout: float) -> dict:
    """``grade_answers`` in a grader process of its own, so whatever happens to it (a crash, a
    kill, a hang) costs this student only."""
    with tempfile.TemporaryDirectory(prefix="course-quiz-grader-") as tmp:  # mode 700, root's
        spec, out = Path(tmp, "spec.json"), Path(tmp, "result.json")
        spec.write_text(json.dumps({"cells": [[g, s] for g, s in cells],
                                    "questions": [q.__dict__ for q in questions]}))
        try:
            proc = subprocess.run([sys.executable, "-m", "autograder.quiz", str(spec), str(out)],
                                  cwd=str(HERE.parent), capture_output=True, text=True, timeout=student_timeout,
                                  start_new_session=True)
            problem = "" if proc.returncode == 0 and out.exists() else \
                f"the grader process ended with status {proc.returncode}: {proc.stderr.strip()[-300:]}"
        except subprocess.TimeoutExpired:
            problem = f"grading took longer than {student_timeout:.0f} s"
        if not problem:
            return json.loads(out.read_text())
    message = f"failed: {problem}"
    return {"results": {q.grade_id: {"score": 0.0, "max_score": q.points, "message": message}
                        for q in questions}, "isolation": {}}


# -- recording: gradebook and the autograded notebook for nbgrader's feedback --------------------
def sanitise_markdown(text: str) -> str:
    """Student markdown as HTML that cannot run anything: rendered (mistune, as nbconvert does)
    and cleaned by bleach (no script, no event handlers, no javascript: URLs)."""
    import bleach
    import mistune

    html = mistune.html(text)
    tags = {"p", "br", "hr", "pre", "code", "em", "strong", "b", "i", "ul", "ol", "li", "blockquote",
            "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "a", "span", "del"}
    return bleach.clean(html, tags=tags, attributes={"a": ["href", "title"]},
                        protocols={"http", "https", "mailto"}, strip=True)


def feedback_notebook(released, answers: list[tuple[str, str, str]], results: dict, notes: list[str]):
    """The release version (no hidden tests) with the student's answers and the verdicts."""
    nb = nbformat.from_dict(json.loads(json.dumps(released)))
    by_id: dict[str, list[str]] = {}
    for grade_id, _, source in answers:
        by_id.setdefault(grade_id, []).append(source)
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if meta.get("solution"):
            text = "\n\n".join(by_id.get(meta.get("grade_id"), [""]))
            cell.source = sanitise_markdown(text) if cell.cell_type == "markdown" else text
        elif meta.get("grade") and meta.get("grade_id") in results:
            result = results[meta["grade_id"]]
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=str(result["message"])[:2000] + "\n")]
    if notes:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(
            "**Notes from the grader:**\n\n" + "\n".join(f"- {sanitise_markdown(n).strip()}" for n in notes)))
    return nb


def record(db_url: str, assignment: str, student: str, notebook_id: str, results: dict) -> None:
    import warnings

    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning

    warnings.simplefilter("ignore", SAWarning)  # nbgrader's own ORM chatter on new submissions

    with Gradebook(db_url) as gb:
        gb.update_or_create_student(student)
        gb.update_or_create_submission(assignment, student)
        for grade_id, result in results.items():
            grade = gb.find_grade(grade_id, notebook_id, assignment, student)
            grade.auto_score = float(result["score"])
            grade.needs_manual_grade = grade.manual_score is not None
        gb.db.commit()


# -- the course command --------------------------------------------------------------------------
def students_of(course: Path) -> tuple[list[str], dict[str, str]]:
    """Student folders of ``submitted/``: (taken, refused name -> why)."""
    taken, refused = [], {}
    submitted = course / "submitted"
    for entry in sorted(os.scandir(submitted), key=lambda e: e.name) if submitted.is_dir() else []:
        if not STUDENT_ID.match(entry.name):
            refused[entry.name[:100]] = "not a student id (letters, digits, _.@+-)"
        elif entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
            refused[entry.name] = "not a folder (a link or a file)"
        else:
            taken.append(entry.name)
    return taken, refused


def protect_course(course: Path) -> list[str]:
    """As root: the course folder private to its owner, so a pool uid reaches neither source/
    nor the gradebook nor nbgrader_config.py (the exercises' course folder is protected by the
    worker itself)."""
    from .isolation import make_private, running_as_root, site_dirs

    if not running_as_root():
        return []
    return make_private([course], keep=[sys.executable, os.path.realpath(sys.executable), *site_dirs()])


def grade_student(course: Path, assignment: str, student: str, sources: dict, student_timeout: float) -> dict:
    """Collect, grade (in a child process) and return one student's results per notebook."""
    graded = {}
    folder = course / "submitted" / student / assignment
    for name, (answer_ids, questions) in sources.items():
        try:
            if folder.is_symlink() or not folder.is_dir():
                raise Refused(f"submitted/{student}/{assignment} is not a folder")
            answers, notes = checked_answers(read_regular_file(folder / name), answer_ids)
        except Refused as exc:
            message = f"failed: not graded: {exc}"
            graded[name] = {"answers": [], "notes": [str(exc)], "results": {
                q.grade_id: {"score": 0.0, "max_score": q.points, "message": message} for q in questions}}
            continue
        code = [(g, s) for g, kind, s in answers if kind == "code"]
        outcome = grade_in_child(code, questions, student_timeout)
        graded[name] = {"answers": answers, "notes": notes, **outcome}
    return graded


def grade_assignment(course: Path, assignment: str, db_url: str | None = None, jobs: int = 1,
                     student_timeout: float = 600.0, students: list[str] | None = None) -> dict:
    """Grade every student of ``submitted/`` (or ``students``); returns student -> score."""
    course = Path(course).resolve()
    db_url = db_url or f"sqlite:///{course / 'gradebook.db'}"
    source_dir, release_dir = course / "source" / assignment, course / "release" / assignment
    notebooks = sorted(p.name for p in source_dir.glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"no notebooks in {source_dir}")
    if not all((release_dir / n).is_file() for n in notebooks):
        raise ValueError(f"run `nbgrader generate_assignment {assignment}` first (no {release_dir})")
    sources = {n: source_quiz(nbformat.read(source_dir / n, as_version=4)) for n in notebooks}
    protect_course(course)
    taken, refused = students_of(course)
    for name, why in refused.items():
        print(f"skipped submitted/{name}: {why}", file=sys.stderr)
    if students:
        taken = [s for s in taken if s in students]
    scores = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {s: pool.submit(grade_student, course, assignment, s, sources, student_timeout) for s in taken}
        for student, future in futures.items():  # the gradebook is written here only, one student at a time
            graded = future.result()
            total = 0.0
            for name, outcome in graded.items():
                record(db_url, assignment, student, Path(name).stem, outcome["results"])
                released = nbformat.read(release_dir / name, as_version=4)
                out = course / "autograded" / student / assignment / name
                out.parent.mkdir(parents=True, exist_ok=True)
                nbformat.write(feedback_notebook(released, outcome["answers"], outcome["results"],
                                                 outcome["notes"]), out)
                total += sum(r["score"] for r in outcome["results"].values())
            scores[student] = total
    return scores


if __name__ == "__main__":  # the child grader: python -m autograder.quiz SPEC.json OUT.json
    sys.exit(_child_main(sys.argv[1], sys.argv[2]))
