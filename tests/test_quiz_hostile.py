"""Hostile quiz submissions, graded twice: by plain ``nbgrader autograde`` as the course used
it (the old path: each attack is shown to work) and by ``python -m autograder quiz-grade``
(each attack gains nothing). Both run as the real commands on a small quiz of two
autograded questions (2 + 2 points) and one manually graded markdown answer.

The attacks need root to mean anything (the old path runs them as root, the new one as a
pool uid), so the slow end-to-end tests are skipped for other users.
"""
import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

from autograder import quiz
from tests.conftest import ROOT

BIN = Path(sys.executable).parent
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks and the pool uid need root")

# the course's configuration before quiz-grade: nbgrader autograde allowed
LEGACY_CONFIG = """c = get_config()
c.CourseDirectory.course_id = "transformer-internals"
c.CourseDirectory.db_url = "sqlite:///gradebook.db"
c.CourseDirectory.include = ["*.ipynb"]
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.py"]
c.Execute.timeout = 300
c.Execute.interrupt_on_timeout = True
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
"""
HIDDEN = "hidden: six times seven"  # a hidden test's message (a hint students may see)
HIDDEN_CODE = "answer == 42"  # the hidden test itself: must never reach a student
RIGHT = {"q1-answer": "answer = 42\n", "q2-answer": "def double(x):\n    return 2 * x\n"}
WRONG = {"q1-answer": "answer = 41\n", "q2-answer": "def double(x):\n    return 3 * x\n"}


def cell(kind, source, **nbgrader):
    made = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
    if nbgrader:
        made.metadata["nbgrader"] = {"schema_version": 3, "locked": False, "solution": False, "grade": False,
                                     "task": False, **nbgrader}
    return made


def source_notebook():
    return nbformat.v4.new_notebook(cells=[
        cell("markdown", "**Q1.** Define `answer` (an `int`)."),
        cell("code", "### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION\n", grade_id="q1-answer", solution=True),
        cell("code", 'assert isinstance(answer, int), "answer should be an int"\n### BEGIN HIDDEN TESTS\n'
             f'assert answer == 42, "{HIDDEN}"\n### END HIDDEN TESTS\n',
             grade_id="q1-test", grade=True, locked=True, points=2),
        cell("markdown", "**Q2.** Write `double(x)`."),
        cell("code", "### BEGIN SOLUTION\ndef double(x):\n    return 2 * x\n### END SOLUTION\n",
             grade_id="q2-answer", solution=True),
        cell("code", 'assert callable(double)\nassert double(1) > 0, "double(1) should be positive"\n'
             '### BEGIN HIDDEN TESTS\nfor _x in range(5):\n    assert double(_x) == 2 * _x, "hidden: double doubles"\n'
             "### END HIDDEN TESTS\n", grade_id="q2-test", grade=True, locked=True, points=2),
        cell("markdown", "**Q3.** Why?"),
        cell("markdown", "YOUR ANSWER HERE", grade_id="q3-answer", solution=True, grade=True, points=1),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def attacks(course: Path) -> dict[str, dict[str, str]]:
    """student -> answer cells replaced; every attacker otherwise hands in wrong answers."""
    gradebook, source = course / "gradebook.db", course / "source" / "quiz" / "quiz.ipynb"
    runner, config, mark = ROOT / "autograder" / "runner.py", course / "nbgrader_config.py", course / "MARK"
    return {
        # another student's grades to 0, in the gradebook the grader writes
        "gradebook": {"q1-answer": f"import sqlite3\ntry:\n    _c = sqlite3.connect({str(gradebook)!r}, timeout=1)\n"
                      "    _c.execute('update grade set manual_score = 0'); _c.commit(); answer = 42\n"
                      "except Exception:\n    answer = 41\n"},
        # the hidden tests of the source notebook give the answer away
        "source": {"q1-answer": f"import re\ntry:\n    _t = open({str(source)!r}).read(); print(_t)\n"
                   "    answer = int(re.search(r'answer == (\\d+)', _t)[1])\nexcept Exception:\n    answer = 41\n"},
        # write access to the course's grader (opened for appending, nothing written)
        "grader": {"q1-answer": f"try:\n    open({str(runner)!r}, 'a').close(); answer = 42\nexcept Exception:\n"
                   "    answer = 41\n"},
        # code appended to nbgrader_config.py runs as root in the next nbgrader command
        "config": {"q1-answer": f"try:\n    open({str(config)!r}, 'a').write('\\nimport pathlib; "
                   f"pathlib.Path({json.dumps(str(mark))}).write_text(\"ran as root\")\\n')\nexcept Exception:\n    pass\n"
                   "answer = 41\n"},
        # every later assert becomes `pass`
        "transformer": {"q1-answer": "import ast\nclass _Pass(ast.NodeTransformer):\n"
                        "    def visit_Assert(self, node):\n        return ast.Pass()\n"
                        "try:\n    get_ipython().ast_transformers.append(_Pass())\nexcept NameError:\n    pass\n"
                        "answer = 41\n"},
        # values whose comparisons always hold
        "subclass": {"q1-answer": "class Yes(int):\n    def __eq__(self, other):\n        return True\n"
                     "    __hash__ = int.__hash__\n    def __gt__(self, other):\n        return True\n"
                     "answer = Yes(41)\n", "q2-answer": "def double(x):\n    return Yes(3 * x)\n"},
    }


def student_notebook(answers: dict[str, str], markdown: str = "my answer"):
    nb = source_notebook()
    for c in nb.cells:
        grade_id = c.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            c.source = answers[grade_id]
        elif grade_id == "q3-answer":
            c.source = markdown
    return nb


SCRIPT = "<script>alert('pwned')</script>\n\n<img src=x onerror=\"alert('pwned')\">\n\n[a](javascript:alert('pwned'))\n"


def make_course(config: str) -> Path:
    """A course folder others could traverse (as a real /srv/course would be): only the grader's
    own protections keep a pool uid out."""
    base = Path(tempfile.mkdtemp(prefix="quiz-hostile-", dir="/tmp"))
    base.chmod(0o755)
    course = base / "course"
    (course / "source" / "quiz").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(config)
    nbformat.write(source_notebook(), course / "source" / "quiz" / "quiz.ipynb")
    nbgrader("generate_assignment", "quiz", "--force", cwd=course)
    return course


def hand_in(course: Path, student: str, nb=None, link_to: Path | None = None):
    folder = course / "submitted" / student / "quiz"
    folder.mkdir(parents=True)
    if link_to is not None:
        (folder / "quiz.ipynb").symlink_to(link_to)
    else:
        nbformat.write(nb, folder / "quiz.ipynb")


def broken_metadata(kind: str):
    """Honest right answers, plus what Jupyter or a student's editor leaves behind."""
    nb = student_notebook(RIGHT)
    if kind == "duplicated":  # a test cell pasted twice keeps its grade id
        nb.cells.insert(3, nbformat.from_dict(json.loads(json.dumps(nb.cells[2]))))
    elif kind == "empty":
        nb.cells[0].metadata["nbgrader"] = {}
    elif kind == "schema":
        nb.cells[1].metadata["nbgrader"]["schema_version"] = 99
    return nb


def nbgrader(*args, cwd, check=True):
    proc = subprocess.run([str(BIN / "nbgrader"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=ENV)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def scores(course: Path) -> dict[str, float]:
    nbgrader("export", cwd=course)
    return {r["student_id"]: float(r["score"]) for r in csv.DictReader((course / "grades.csv").open())}


def feedback(course: Path, student: str) -> str:
    """The feedback page's text as a reader sees it (code is split into highlighted spans)."""
    files = list((course / "feedback" / student / "quiz").glob("*.html"))
    return html.unescape(re.sub(r"<[^>]+>", "", files[0].read_text())) if files else ""


def feedback_html(course: Path, student: str) -> str:
    files = list((course / "feedback" / student / "quiz").glob("*.html"))
    return files[0].read_text() if files else ""


def digest(path: Path) -> tuple:
    info = path.stat()
    return path.read_bytes(), info.st_mtime_ns


# -- the old path: each attack works -----------------------------------------------------------
@pytest.mark.slow
@as_root
def test_the_attacks_work_against_plain_nbgrader_autograde():
    course = make_course(LEGACY_CONFIG)
    runner_before = digest(ROOT / "autograder" / "runner.py")
    try:
        hand_in(course, "victim", student_notebook(RIGHT))
        nbgrader("autograde", "quiz", "--student", "victim", cwd=course)
        assert scores(course)["victim"] == 4.0
        found = {}
        for student, answers in attacks(course).items():
            hand_in(course, student, student_notebook({**WRONG, **answers}))
            nbgrader("autograde", "quiz", "--student", student, cwd=course)
        hand_in(course, "link", link_to=course / "source" / "quiz" / "quiz.ipynb")
        hand_in(course, "markdown", student_notebook(WRONG, markdown=SCRIPT))
        nb = student_notebook(WRONG)
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(SCRIPT))
        hand_in(course, "markdown2", nb)
        for student in ("link", "markdown", "markdown2"):
            nbgrader("autograde", "quiz", "--student", student, cwd=course)
        nbgrader("generate_feedback", "quiz", cwd=course)
        found = scores(course)
        assert found["victim"] == 0.0, "the gradebook attack zeroed the victim"
        for student in ("transformer", "subclass", "link"):
            assert found[student] == 4.0, (student, found)  # wrong answers (or none), full marks
        for student in ("source", "grader"):  # Q1 right with no answer (from source/, or write access)
            assert found[student] == 2.0, (student, found)
        assert (course / "MARK").read_text() == "ran as root", "appended config code ran in a later command"
        assert HIDDEN_CODE in feedback(course, "link") and HIDDEN_CODE in feedback(course, "victim")
        assert "<script>alert('pwned')</script>" in feedback_html(course, "markdown2")
        assert 'onerror="alert' in feedback_html(course, "markdown2")
        assert digest(ROOT / "autograder" / "runner.py") == runner_before  # opened, never written

        # one student kills `nbgrader autograde` or breaks its metadata: the students after are not graded
        hand_in(course, "k1", student_notebook({**WRONG, "q1-answer": "import os, signal\n"
                                                "os.kill(os.getppid(), signal.SIGKILL)\n"}))
        hand_in(course, "k2", student_notebook(RIGHT))
        proc = nbgrader("autograde", "quiz", "--student", "k*", cwd=course, check=False)
        assert proc.returncode != 0 and not (course / "autograded" / "k2").exists()
        for kind in ("duplicated", "empty", "schema"):
            hand_in(course, f"m_{kind}", broken_metadata(kind))
            hand_in(course, f"m_{kind}_z", student_notebook(RIGHT))
            proc = nbgrader("autograde", "quiz", "--student", f"m_{kind}*", cwd=course, check=False)
            assert proc.returncode != 0, kind
            assert not (course / "autograded" / f"m_{kind}_z").exists(), kind
    finally:
        shutil.rmtree(course.parent, ignore_errors=True)


# -- the new path: nothing is gained -----------------------------------------------------------
@pytest.mark.slow
@as_root
def test_the_attacks_gain_nothing_with_quiz_grade():
    course = make_course((ROOT / "nbgrader_config.py").read_text())
    runner_before = digest(ROOT / "autograder" / "runner.py")
    config_before = (course / "nbgrader_config.py").read_text()
    try:
        hand_in(course, "victim", student_notebook(RIGHT))
        hand_in(course, "wrong", student_notebook(WRONG))
        for student, answers in attacks(course).items():
            hand_in(course, student, student_notebook({**WRONG, **answers}))
        hand_in(course, "link", link_to=course / "source" / "quiz" / "quiz.ipynb")
        nb = student_notebook(WRONG, markdown=SCRIPT)
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(SCRIPT))
        hand_in(course, "markdown", nb)
        hand_in(course, "k1", student_notebook({**WRONG, "q1-answer": "import os, signal\n"
                                                "os.kill(os.getppid(), signal.SIGKILL)\nos.killpg(0, 9)\n"}))
        for kind in ("duplicated", "empty", "schema"):
            hand_in(course, f"m_{kind}", broken_metadata(kind))
        flood = student_notebook(RIGHT)
        flood.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * (40 << 20))]
        hand_in(course, "flood", flood)
        hand_in(course, "zz_last", student_notebook(RIGHT))

        # the old command is refused by the course's configuration
        proc = nbgrader("autograde", "quiz", cwd=course, check=False)
        assert proc.returncode != 0 and "quiz-grade" in proc.stdout + proc.stderr
        proc = subprocess.run([sys.executable, "-m", "autograder", "quiz-grade", "quiz", "--course", str(course),
                               "--jobs", "4"], cwd=ROOT, capture_output=True, text=True, timeout=900, env=ENV)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        nbgrader("generate_feedback", "quiz", cwd=course)
        found = scores(course)

        assert found["victim"] == found["zz_last"] == 4.0, found  # nobody's grading stopped anyone's
        assert found["wrong"] == 0.0
        for student in [*attacks(course), "link", "markdown", "k1"]:
            assert found[student] == 0.0, (student, found)
        for kind in ("duplicated", "empty", "schema"):  # repaired per student: graded
            assert found[f"m_{kind}"] == 4.0, (kind, found)
        assert found["flood"] == 0.0 and "more than the 32 MiB" in feedback(course, "flood")
        assert "symbolic link" in feedback(course, "link")
        assert "Yes" in feedback(course, "subclass")  # "answer is a ...Yes; the quiz takes plain ..."
        assert not (course / "MARK").exists()
        assert (course / "nbgrader_config.py").read_text() == config_before
        assert digest(ROOT / "autograder" / "runner.py") == runner_before
        for student in found:
            page = feedback_html(course, student)
            assert "<script>alert" not in page and 'onerror="alert' not in page, student
            assert 'href="javascript:' not in page, student
            text = feedback(course, student)
            # a failing hidden assert shows its message (a hint), never the test's code
            assert text and HIDDEN_CODE not in text and "BEGIN HIDDEN TESTS" not in text, student
    finally:
        shutil.rmtree(course.parent, ignore_errors=True)


# -- the pieces, fast ---------------------------------------------------------------------------
def test_free_names_are_what_a_test_cell_reads_and_does_not_bind():
    test = ("assert callable(f) and isinstance(x, int)\nfor _n in range(3):\n    assert f(_n) == torch.ones(1).sum()\n"
            "_y = [v for v in ys]\nassert math.isclose(F.relu(torch.tensor(z)).item(), 1)\n")
    assert quiz.free_names(test) == ["f", "x", "ys", "z"]


def test_every_lecture_quiz_asks_for_names_its_answer_cells_define():
    for path in sorted((ROOT / "lectures").glob("[0-9][0-9]_*.ipynb")):
        answers, questions = quiz.source_quiz(nbformat.read(path, as_version=4))
        assert answers and questions, path.name
        for question in questions:
            assert question.names, (path.name, question.grade_id)


def test_collection_repairs_metadata_and_ignores_pasted_test_cells():
    answer_ids = {"q1-answer": "code", "q2-answer": "code", "q3-answer": "markdown"}
    for kind in ("duplicated", "empty", "schema"):
        data = nbformat.writes(broken_metadata(kind)).encode()
        taken, notes = quiz.checked_answers(data, answer_ids)
        assert [g for g, _, _ in taken] == ["q1-answer", "q2-answer", "q3-answer"], kind
        assert taken[0][2] == RIGHT["q1-answer"]
    assert any("schema_version" in n for n in quiz.checked_answers(
        nbformat.writes(broken_metadata("schema")).encode(), answer_ids)[1])
    with pytest.raises(quiz.Refused, match="not valid JSON"):
        quiz.checked_answers(b"{" * 100_000, answer_ids)


def test_only_regular_files_are_read(tmp_path):
    target = tmp_path / "real.ipynb"
    target.write_text("{}")
    (tmp_path / "link.ipynb").symlink_to(target)
    os.mkfifo(tmp_path / "fifo.ipynb")
    with pytest.raises(quiz.Refused, match="symbolic link"):
        quiz.read_regular_file(tmp_path / "link.ipynb")
    with pytest.raises(quiz.Refused, match="not a regular file"):
        quiz.read_regular_file(tmp_path / "fifo.ipynb")
    with pytest.raises(quiz.Refused, match="more than"):
        quiz.read_regular_file(target, cap=1)
    assert quiz.read_regular_file(target) == b"{}"


def test_markdown_is_sanitised():
    html = quiz.sanitise_markdown(SCRIPT + "\n**bold** and [ok](https://example.org)")
    assert "<script" not in html and "onerror" not in html and "javascript:" not in html
    assert "<strong>bold</strong>" in html and 'href="https://example.org"' in html


@as_root
def test_the_verdict_is_decided_outside_the_students_process():
    """The grader's own check, with no nbgrader around it: subclasses are refused, an assert
    transformer or a patched builtin in the worker changes nothing, functions are called there."""
    _, questions = quiz.source_quiz(source_notebook())
    hostile = [("q1-answer", "import builtins\nbuiltins.callable = lambda *a: True\n"
                "class Yes(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\n"
                "answer = Yes(41)\n"),
               ("q2-answer", "import sys\nsys.modules['builtins'].AssertionError = type('X', (Exception,), {})\n"
                "def double(x):\n    return 3 * x\n")]
    outcome = quiz.grade_answers(hostile, questions)
    assert {g: r["score"] for g, r in outcome["results"].items()} == {"q1-test": 0.0, "q2-test": 0.0}
    # callable() patched to say yes: the grader then takes `answer` for a function, which fails
    assert "answer should be an int" in outcome["results"]["q1-test"]["message"]
    assert "uid" in outcome["isolation"]["user"]
    honest = quiz.grade_answers([("q1-answer", RIGHT["q1-answer"]), ("q2-answer", RIGHT["q2-answer"])], questions)
    assert {g: r["score"] for g, r in honest["results"].items()} == {"q1-test": 2.0, "q2-test": 2.0}
