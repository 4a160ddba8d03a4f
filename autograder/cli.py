"""Command line: ``python -m autograder grade | skeletons | bench``."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from rich.console import Console

from .isolation import LIMITS

ROOT = Path(__file__).resolve().parent.parent


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _grade(args) -> int:
    from .runner import available_exercises, grade

    # grade-class ends a grader that ran out of time with SIGTERM: unwinding (rather than
    # dying at once) lets the grader end its worker, which runs in a session of its own
    signal.signal(signal.SIGTERM, _interrupted)

    submission = Path(args.submission)
    if not submission.is_dir():
        print(f"error: the submission folder {submission} does not exist", file=sys.stderr)
        return 2
    # the student release ships no hidden suites: there `grade` grades the public suites,
    # by the same engine; on the staff's checkout `--public` does the same
    public = args.public or not available_exercises()
    if public and not args.public:
        print("no hidden suites here (student release): grading the public checks", file=sys.stderr)
    try:
        report = grade(submission, args.exercise, timeout=args.timeout, memory_gib=args.memory_gib,
                       public=public, keyword=args.keyword, verbose=args.pytest_output)
    except ValueError as exc:  # an unknown exercise name, a -k that selects nothing
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .catalogue import language

    report.lang = args.lang or language()  # --lang, else the student's locale (LANG=ko_KR.UTF-8: Korean)
    # the files first: a terminal that cannot show the report must not cost the grade
    if args.json:
        report.write_json(args.json)
    if args.gradescope:
        report.write_gradescope(args.gradescope)
    report.print_safely(verbose=args.verbose)
    return 0  # grading completed: the score is in the report, not the exit code


def _skeletons(args) -> int:
    from . import skeleton

    if args.check:
        drifted = skeleton.check()
        if drifted:
            print("exercises/ differs from what solutions/ generates: " + ", ".join(drifted)
                  + "\nrun `python -m autograder skeletons` and commit the result")
            return 1
        print("exercises/ is in sync with solutions/")
        return 0
    written = skeleton.write()
    print("wrote " + (", ".join(f"exercises/{n}" for n in written) if written else "nothing (in sync)"))
    return 0


def _grade_class(args) -> int:
    from .classroom import grade_class

    if not Path(args.submissions).is_dir():
        print(f"error: {args.submissions} is not a folder", file=sys.stderr)
        return 2
    rows = grade_class(Path(args.submissions), Path(args.out), jobs=args.jobs, force=args.force,
                       exercises=args.exercise, timeout=args.student_timeout)
    graded = sum(1 for r in rows if "score" in r)
    print(f"{graded} of {len(rows)} students graded; scores in {args.out}, reports in "
          f"{Path(args.out).resolve().parent / 'reports'}")
    return 0


def _classroom_score(args) -> int:
    from .classroom import classroom_score

    return classroom_score(Path(args.report), args.check)


def _gradescope(args) -> int:
    from .gradescope import build

    print(f"wrote {build(Path(args.out))}: upload it as the Gradescope autograder (setup.sh, run_autograder)")
    return 0


def _nbgrader_setup(args) -> int:
    from .nbgrader_bridge import setup_course

    names = setup_course(Path(args.course_dir))
    print(f"nbgrader course in {args.course_dir}: assignments {', '.join(names)}; "
          f"next: cd {args.course_dir} && nbgrader generate_assignment {names[0]}")
    return 0


def _nbgrader_import(args) -> int:
    from .nbgrader_bridge import import_exercise_scores

    count = import_exercise_scores(Path(args.reports), args.db, args.assignment)
    print(f"imported the exercise scores of {count} students into {args.db} (assignment {args.assignment!r})")
    return 0


def _quiz_grade(args) -> int:
    from .quiz import grade_assignment

    try:
        scores = grade_assignment(Path(args.course), args.assignment, args.db, jobs=args.jobs,
                                  student_timeout=args.student_timeout, students=args.student)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"graded {len(scores)} students' {args.assignment} quizzes into the gradebook; "
          f"next: nbgrader generate_feedback {args.assignment}")
    return 0


def _release(args) -> int:
    from . import release

    try:
        problems = release.build(Path(args.out))
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if problems:
        print("LEAK CHECK FAILED: the release must not contain these:\n  " + "\n  ".join(problems))
        return 1
    print(f"wrote the student release to {args.out}; leak check passed (no solution code, no hidden tests)")
    return 0


def _bench(args) -> int:
    from . import bench

    console = Console()
    if args.only in (None, "grading"):
        bench.bench_grading(console, args.submission, args.exercise)
    if args.only in (None, "generation"):
        bench.bench_generation(console, new_tokens=args.new_tokens)
    if args.only in (None, "flash"):
        bench.bench_flash(console, lengths=args.flash_lengths, n=args.flash_n, repeats=args.flash_repeats)
    if args.only in (None, "class"):  # about 4 minutes for 50 students
        bench.bench_class(console, students=args.students, jobs=args.jobs)
    return 0


def _bench_gpu(argv) -> int:
    from . import bench_gpu

    return bench_gpu.main(argv)


def _adequacy(args) -> int:
    from . import adequacy

    return adequacy.main(args.exercise, run=args.run_grading, json_path=args.json)


def _site(args) -> int:
    from . import website

    return website.main(args.out, args.release)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["bench", "--gpu"]:  # the GPU script has options of its own (--submission, --grade-only)
        return _bench_gpu(argv[2:])
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("grade", help="grade one submission against the hidden suites (the public ones in the "
                                      "student release)")
    p.add_argument("--submission", default=str(ROOT / "exercises"),
                   help="folder with the exercise files (default: exercises/)")
    p.add_argument("--exercise", action="append", metavar="NAME",
                   help="grade only this exercise (repeatable; default: all)")
    p.add_argument("--json", metavar="FILE", help="also write a JSON report")
    p.add_argument("--gradescope", metavar="FILE", help="also write Gradescope's results.json")
    p.add_argument("--timeout", type=float, default=LIMITS.timeout_s,
                   help=f"seconds per call (default {LIMITS.timeout_s:g})")
    p.add_argument("--memory-gib", type=float, default=LIMITS.memory_gib,
                   help=f"worker memory cap (default {LIMITS.memory_gib:g})")
    p.add_argument("-v", "--verbose", action="store_true", help="show whole messages")
    p.add_argument("-k", dest="keyword", metavar="EXPRESSION",
                   help="run only the tests whose names match (pytest's -k), e.g. -k softmax")
    p.add_argument("--public", action="store_true",
                   help="grade the public suites (exercises/checks) instead of the hidden ones")
    p.add_argument("--lang", choices=("en", "ko"), default=None,
                   help="the report's language (default: Korean where LC_ALL, LC_MESSAGES or LANG starts "
                        "with ko, else English)")
    p.add_argument("--pytest-output", action="store_true", help=argparse.SUPPRESS)  # debugging the suites
    p.set_defaults(run=_grade)

    p = sub.add_parser("skeletons", help="regenerate exercises/ from solutions/")
    p.add_argument("--check", action="store_true", help="only check; exit 1 if they drifted")
    p.set_defaults(run=_skeletons)

    p = sub.add_parser("grade-class", help="grade every student folder of a class")
    p.add_argument("submissions", help="a folder with one sub-folder per student")
    p.add_argument("--out", default="grades.csv", help="the CSV of scores (reports/ goes beside it)")
    p.add_argument("--jobs", type=int, default=1, help="students graded at once (default 1)")
    p.add_argument("--force", action="store_true", help="re-grade students whose files did not change")
    p.add_argument("--exercise", action="append", metavar="NAME", help="grade only these exercises")
    p.add_argument("--student-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="the most one student's grading may take (default 1800)")
    p.set_defaults(run=_grade_class)

    p = sub.add_parser("classroom-score", help="print a report's score for GitHub Classroom")
    p.add_argument("report", help="a JSON report from `grade --json`")
    p.add_argument("--check", metavar="EXERCISE/TEST", help="exit 0 only if this check passed (else: only at full marks)")
    p.set_defaults(run=_classroom_score)

    p = sub.add_parser("gradescope", help="build the Gradescope autograder zip")
    p.add_argument("out", help="the zip to write, e.g. autograder.zip")
    p.set_defaults(run=_gradescope)

    p = sub.add_parser("nbgrader-setup", help="an nbgrader course directory with the lecture quizzes")
    p.add_argument("course_dir")
    p.set_defaults(run=_nbgrader_setup)

    p = sub.add_parser("nbgrader-import", help="put grade-class reports into an nbgrader gradebook")
    p.add_argument("reports", help="the reports/ folder written by grade-class")
    p.add_argument("--db", required=True, help="the gradebook, e.g. sqlite:///course/gradebook.db")
    p.add_argument("--assignment", default="exercises", help="assignment name in the gradebook")
    p.set_defaults(run=_nbgrader_import)

    p = sub.add_parser("quiz-grade", help="grade nbgrader quiz submissions in the sandbox (not nbgrader autograde)")
    p.add_argument("assignment", help="e.g. lecture01")
    p.add_argument("--course", default=".", help="the nbgrader course directory (default: here)")
    p.add_argument("--db", help="the gradebook (default: sqlite:///COURSE/gradebook.db)")
    p.add_argument("--student", action="append", metavar="ID", help="grade only these students")
    p.add_argument("--jobs", type=int, default=1, help="students graded at once (default 1)")
    p.add_argument("--student-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="the most one student's grading may take (default 600)")
    p.set_defaults(run=_quiz_grade)

    p = sub.add_parser("release", help="build the student release (with a leak check)")
    p.add_argument("out", help="a new folder to write the release into")
    p.set_defaults(run=_release)

    p = sub.add_parser("bench", help="time the hidden suites and the reference generation")
    p.add_argument("--submission", default=str(ROOT / "solutions"))
    p.add_argument("--exercise", action="append", metavar="NAME")
    p.add_argument("--only", choices=["grading", "generation", "flash", "class"],
                   help="run one benchmark (class, which takes minutes, runs only when named)")
    p.add_argument("--students", type=int, default=50, help="class size for --only class")
    p.add_argument("--jobs", type=int, default=2, help="parallel graders for --only class")
    p.add_argument("--flash-lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384],
                   help="sequence lengths for the flash benchmark")
    p.add_argument("--flash-n", type=int, default=4096,
                   help="sequence length of the flash speed runs (default 4096, where the goals are set)")
    p.add_argument("--flash-repeats", type=int, default=5, help="interleaved rounds of the flash speed runs")
    p.add_argument("--new-tokens", type=int, default=512, help="tokens to generate (default 512)")
    p.set_defaults(run=_bench)

    p = sub.add_parser("adequacy", help="per exercise: tests, points, mutants caught, variants, API rules enforced")
    p.add_argument("--exercise", action="append", metavar="NAME", help="only these exercises (default: all)")
    p.add_argument("--run", dest="run_grading", action="store_true",
                   help="also grade the mutants and variants for real (minutes; default: their declared results)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    p.set_defaults(run=_adequacy)

    p = sub.add_parser("site", help="build the course website (executed lectures in both languages, "
                                    "exercises, API) into OUT_DIR")
    p.add_argument("out", metavar="OUT_DIR", help="a new or empty folder; index.html lands at its root")
    p.add_argument("--release", metavar="DIR", help="a student release already built by `release` (default: build one)")
    p.set_defaults(run=_site)

    args = parser.parse_args(argv)
    return args.run(args)
