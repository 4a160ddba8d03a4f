"""Command line: ``python -m autograder grade | skeletons | bench``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent


def _grade(args) -> int:
    from .runner import available_exercises, grade

    submission = Path(args.submission)
    if not submission.is_dir():
        print(f"error: the submission folder {submission} does not exist", file=sys.stderr)
        return 2
    try:
        report = grade(submission, args.exercise, timeout=args.timeout, memory_gib=args.memory_gib)
    except ValueError as exc:  # an unknown exercise name
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report.print(verbose=args.verbose)
    if args.json:
        report.write_json(args.json)
    if args.gradescope:
        report.write_gradescope(args.gradescope)
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


def _bench(args) -> int:
    from . import bench

    console = Console()
    if args.only in (None, "grading"):
        bench.bench_grading(console, args.submission, args.exercise)
    if args.only in (None, "generation"):
        bench.bench_generation(console, new_tokens=args.new_tokens)
    if args.only in (None, "flash"):
        bench.bench_flash(console, lengths=args.flash_lengths)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("grade", help="grade one submission against the hidden suites")
    p.add_argument("--submission", default=str(ROOT / "exercises"),
                   help="folder with the exercise files (default: exercises/)")
    p.add_argument("--exercise", action="append", metavar="NAME",
                   help="grade only this exercise (repeatable; default: all)")
    p.add_argument("--json", metavar="FILE", help="also write a JSON report")
    p.add_argument("--gradescope", metavar="FILE", help="also write Gradescope's results.json")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per call (default 20)")
    p.add_argument("--memory-gib", type=float, default=6.0, help="worker memory cap (default 6)")
    p.add_argument("-v", "--verbose", action="store_true", help="show whole messages")
    p.set_defaults(run=_grade)

    p = sub.add_parser("skeletons", help="regenerate exercises/ from solutions/")
    p.add_argument("--check", action="store_true", help="only check; exit 1 if they drifted")
    p.set_defaults(run=_skeletons)

    p = sub.add_parser("bench", help="time the hidden suites and the reference generation")
    p.add_argument("--submission", default=str(ROOT / "solutions"))
    p.add_argument("--exercise", action="append", metavar="NAME")
    p.add_argument("--only", choices=["grading", "generation", "flash"], help="run one benchmark")
    p.add_argument("--flash-lengths", type=int, nargs="+", default=[1024, 2048, 4096],
                   help="sequence lengths for the flash benchmark")
    p.add_argument("--new-tokens", type=int, default=512, help="tokens to generate (default 512)")
    p.set_defaults(run=_bench)

    args = parser.parse_args(argv)
    return args.run(args)
