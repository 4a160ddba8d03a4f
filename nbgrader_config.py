# nbgrader configuration for the course's lecture quizzes.
# Flow (in a course directory made by `python -m autograder nbgrader-setup COURSE_DIR`):
#   nbgrader generate_assignment lecture01      # student version into release/
#   nbgrader collect lecture01 / or place files in submitted/<student>/lecture01/
#   python -m autograder quiz-grade lecture01     # NOT `nbgrader autograde` (see below)
#   nbgrader generate_feedback lecture01
#   python -m autograder nbgrader-import grades/reports --db gradebook.db   # exercise scores
#   nbgrader export                               # one CSV: quizzes and exercises
import sys  # noqa: E402

c = get_config()  # noqa: F821 (provided by nbgrader)

# `nbgrader autograde` runs each student's notebook as the instructor (root in a container):
# the answers could rewrite the gradebook, read source/ with its hidden tests, change this
# file (which runs as root in every later nbgrader command) or kill the grading, and the
# asserts run where the student's code runs. `python -m autograder quiz-grade` grades the
# quizzes in the exercise sandbox instead (autograder/quiz.py); this refuses the old path.
if sys.argv[1:2] == ["autograde"]:
    raise SystemExit("nbgrader autograde is switched off for this course: it runs student code as the "
                     "instructor. Use `python -m autograder quiz-grade ASSIGNMENT --course .` instead.")

c.CourseDirectory.course_id = "transformer-internals"
c.CourseDirectory.db_url = "sqlite:///gradebook.db"

# Only notebooks travel through nbgrader. Otherwise nbgrader copies every other file of the
# source folder into the release and, when autograding, copies the instructor's versions of
# non-notebook files over the students' own (their exercise .py files): those are graded by
# `python -m autograder`, never by nbgrader.
c.CourseDirectory.include = ["*.ipynb"]
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.py"]

# Lectures run real code (timing cells, a small training run): give each cell room.
c.Execute.timeout = 300
c.Execute.interrupt_on_timeout = True

# What students see in place of a solution.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
