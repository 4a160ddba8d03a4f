"""Reports: a table in the terminal, a JSON file, and Gradescope's results.json.

Messages, test ids and the submission's path carry text the student controls (exception
messages, printed output, file names): every output below passes it through
``text.clean`` first, so no terminal escape, control character or lone surrogate reaches a
screen, a JSON reader or Gradescope.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .catalogue import translate, word
from .text import ascii_text, clean, clean_data

JSON_SCHEMA_VERSION = 1


@dataclass
class TestResult:
    exercise: str
    name: str
    description: str
    max_points: float
    status: str  # passed | failed | error | skipped | not run
    points: float = 0.0
    message: str = ""
    duration: float = 0.0
    visibility: str = "visible"  # Gradescope: visible | hidden | after_due_date | after_published


@dataclass
class Report:
    submission: str
    results: list[TestResult]
    duration: float
    worker_restarts: int = 0
    exercises: list[str] = field(default_factory=list)
    isolation: dict = field(default_factory=dict)
    intake: dict = field(default_factory=dict)  # intake.Intake.to_json(): what was not taken, and why
    public: bool = False  # graded by the public suites (exercises/checks), not the hidden ones
    # exercise -> (N, M): its public checks cover N of the M points the staff grade
    coverage: dict = field(default_factory=dict)
    # "ko": the terminal report and the JSON's messages in Korean (autograder/catalogue.py);
    # everything is decided on the English, translated only when rendered
    lang: str = "en"

    def __post_init__(self):
        if not self.exercises:
            self.exercises = list(dict.fromkeys(r.exercise for r in self.results))

    @property
    def score(self) -> float:
        return sum(r.points for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.max_points for r in self.results)

    def _t(self, text: str) -> str:
        """``text`` in the report's language (unknown text, a student's own, stays as it is)."""
        return translate(text, self.lang)

    def exercise_results(self, exercise: str) -> list[TestResult]:
        return [r for r in self.results if r.exercise == exercise]

    def hint(self, visible_only: bool = False) -> str | None:
        """The single most useful line: the first failure of the earliest unfinished
        exercise in course order (autograder/exercises.py), preferring there a named known
        mistake, then a failure of code that is written over "not implemented".
        ``visible_only``: from tests a student may see now (Gradescope visibility "visible")."""
        from .exercises import course_order

        failures = [r for r in self.results if r.status != "passed" and (r.visibility == "visible" or not visible_only)]
        if not failures:
            return None
        earliest = course_order({r.exercise for r in failures})[0]
        failures = [r for r in failures if r.exercise == earliest]
        for r in failures:
            if "known mistake" in r.message:
                return clean(f"{r.exercise}/{r.name}: " + r.message.split("known mistake: ", 1)[1].splitlines()[0])
        implemented = [r for r in failures if not r.message.startswith("not implemented")]
        first = (implemented or failures)[0]
        return clean(f"{first.exercise}/{first.name}: {(first.message.splitlines() or [''])[0]}")

    def coverage_line(self, exercise: str | None = None) -> str | None:
        """"public checks cover N of the M points the staff grade", for one exercise or all."""
        pairs = [self.coverage[e] for e in ([exercise] if exercise else self.exercises) if e in self.coverage]
        if not self.public or not pairs:
            return None
        covered, total = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        return (f"public checks cover {_num(covered)} of the {_num(total)} points the staff grade "
                f"(the staff's hidden suite tries more shapes, dtypes and edge cases)")

    def intake_notes(self) -> list[str]:
        """One line per file the grader did not take from the submission (links that lead
        outside it, FIFOs, folders named like files, files over a cap)."""
        intake = self.intake or {}
        if intake.get("whole"):
            return [clean(intake["whole"])]
        return [clean(note) for notes in (intake.get("refused") or {}, intake.get("skipped") or {})
                for note in notes.values()]

    # -- terminal ---------------------------------------------------------------------------
    def print(self, console: Console | None = None, verbose: bool = False) -> None:
        # off a terminal rich assumes 80 columns, too narrow for the messages
        console = console or Console(width=None if Console().is_terminal else 160)
        style = {"passed": "green", "failed": "red", "error": "magenta"}
        for exercise in self.exercises:
            results = self.exercise_results(exercise)
            score = sum(r.points for r in results)
            total = sum(r.max_points for r in results)
            cover = self.coverage.get(exercise) if self.public else None
            table = Table(title=self._t(f"{exercise}: {_num(score)} / {_num(total)} {'public ' if self.public else ''}points"),
                          title_justify="left", show_lines=False, expand=False)
            table.add_column(word("test", self.lang), overflow="fold", max_width=48)
            table.add_column(word("points", self.lang), justify="right")
            table.add_column(word("status", self.lang))
            table.add_column(word("message", self.lang), overflow="fold", max_width=90)
            for r in results:
                message = self._t(clean(r.message))
                message = message if verbose else "\n".join(message.splitlines()[:3])
                # Text, not str: rich would read "[vector]" in a test id as markup
                table.add_row(Text(clean(r.name)), f"{_num(r.points)}/{_num(r.max_points)}",
                              Text(word(clean(r.status), self.lang), style=style.get(r.status, "yellow")),
                              Text(message or clean(r.description) if r.status != "passed" else ""))
            console.print(table)
            if cover:  # below the table: a title wraps at the table's width
                console.print(Text(self._t(f"  {exercise}: public checks cover {_num(cover[0])} of the "
                                           f"{_num(cover[1])} points the staff grade"), style="dim"))
        console.print(Text(self._t(f"Total: {_num(self.score)} / {_num(self.max_score)} "
                                   f"{'public ' if self.public else ''}points ({self.duration:.1f} s)"), style="bold"))
        if self.coverage_line():
            console.print(Text(self._t(self.coverage_line().capitalize())))
        for note in self.intake_notes():  # what the grader did not take from the submission
            console.print(Text(self._t(f"Intake: {note}"), style="yellow"))
        for name, text in self.isolation.items():  # a protection this machine could not give
            if str(text).startswith("unavailable"):
                console.print(Text(self._t(clean(f"Isolation ({name}): {text}")), style="dim"))
        hint = self.hint()
        if hint:
            console.print(Text(word("Hint: ", self.lang), style="bold yellow") + Text(self._t(hint)))

    def print_safely(self, console: Console | None = None, verbose: bool = False) -> None:
        """``print``, and should the terminal refuse it (an encoding it cannot show, a
        closed pipe), the same report as plain ASCII: printing never ends a run."""
        try:
            self.print(console, verbose=verbose)
            return
        except Exception as exc:  # noqa: BLE001 - whatever rich or the terminal raised
            failure = f"(the formatted report could not be printed: {type(exc).__name__}; plain text follows)"
        try:
            # in English: this fallback is plain ASCII, where Korean would come out as "?"
            sys.stdout.write(ascii_text(failure + "\n" + replace(self, lang="en").plain_text(verbose)) + "\n")
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - no terminal at all: the files hold the report
            pass

    def plain_text(self, verbose: bool = False) -> str:
        """The terminal report without tables or colours."""
        lines = []
        for exercise in self.exercises:
            results = self.exercise_results(exercise)
            cover = self.coverage.get(exercise) if self.public else None
            lines.append(self._t(f"{clean(exercise)}: {_num(sum(r.points for r in results))} / "
                                 f"{_num(sum(r.max_points for r in results))} points")
                         + (self._t(f" (public checks cover {_num(cover[0])} of the {_num(cover[1])} points "
                                    f"the staff grade)") if cover else ""))
            for r in results:
                message = self._t(clean(r.message or r.description)) if r.status != "passed" else ""
                message = message if verbose else " | ".join(message.splitlines()[:3])
                lines.append(f"  {clean(r.name)}  {_num(r.points)}/{_num(r.max_points)}  "
                             f"{word(clean(r.status), self.lang)}  {message}")
        lines.append(self._t(f"Total: {_num(self.score)} / {_num(self.max_score)} {'public ' if self.public else ''}"
                             f"points ({self.duration:.1f} s)"))
        if self.coverage_line():
            lines.append(self._t(self.coverage_line().capitalize()))
        lines += [self._t(f"Intake: {note}") for note in self.intake_notes()]
        lines += [self._t(clean(f"Isolation ({name}): {text}")) for name, text in self.isolation.items()
                  if str(text).startswith("unavailable")]
        hint = self.hint()
        if hint:
            lines.append(self._t(f"Hint: {hint}"))
        return "\n".join(lines)

    # -- files ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return clean_data({
            "schema_version": JSON_SCHEMA_VERSION,
            "submission": self.submission,
            "score": self.score,
            "max_score": self.max_score,
            "duration_s": round(self.duration, 3),
            "worker_restarts": self.worker_restarts,
            "isolation": self.isolation,
            "intake": self.intake,
            "lang": self.lang,
            **({"public": True, "coverage": {k: list(v) for k, v in self.coverage.items()}} if self.public else {}),
            "exercises": [
                {"name": ex,
                 "score": sum(r.points for r in self.exercise_results(ex)),
                 "max_score": sum(r.max_points for r in self.exercise_results(ex)),
                 "tests": [self._test_json(r) for r in self.exercise_results(ex)]}
                for ex in self.exercises],
        })

    def _test_json(self, r: TestResult) -> dict:
        """One test in the JSON report: ``message`` in the report's language (what the student
        reads), ``message_en`` the English the grader decided on (for tools, in every language)."""
        entry = asdict(r)
        entry["message_en"] = r.message
        entry["message"] = self._t(r.message)
        return entry

    def to_gradescope(self) -> dict:
        """Gradescope's autograder results format (one entry per test)."""
        tests = []
        for number, r in enumerate(self.results, start=1):
            output = r.description if r.status == "passed" else f"{r.description}\n{r.message}".strip()
            tests.append({
                "name": f"{r.exercise}: {r.name}",
                "number": str(number),
                "score": r.points,
                "max_score": r.max_points,
                "status": "passed" if r.status == "passed" else "failed",
                "output": output,
                "tags": [r.exercise],
                "visibility": r.visibility,
            })
        notes = self.intake_notes()
        # the top-level output is always shown: only tests shown now may reach it (a hidden
        # test's name, points or message, with the reference's values, would leak there)
        shown = [r for r in self.results if r.visibility == "visible"]
        hint = self.hint(visible_only=True)
        return clean_data({
            "score": self.score,
            "execution_time": round(self.duration, 3),
            "output": f"Total of the tests shown: {_num(sum(r.points for r in shown))} / "
                      f"{_num(sum(r.max_points for r in shown))} points."
                      + (f" Hint: {hint}" if hint else "")
                      + "".join(f"\nIntake: {note}" for note in notes),
            "visibility": "visible",
            "stdout_visibility": "hidden",
            "tests": tests,
        })

    def write_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=2)

    def write_gradescope(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_gradescope(), f, indent=2)


def _num(x: float) -> str:
    return f"{x:g}"
