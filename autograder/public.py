"""Reference values for the public suites (``exercises/checks/test_<exercise>.py``).

The public suites are graded by the same engine as the hidden ones (``runner.grade`` with
``public=True``: the worker runs the student's code, the grader compares), but the student
release has neither ``solutions/`` nor ``autograder/mistakes/``. So a public test never
imports them: it asks its ``reference`` fixture for each value the reference (or a known
mistake) gives on its public inputs, as a function of the course's sources::

    expected = reference(lambda s: s.attention.softmax(x.double(), dim=-1))
    wrong = reference.mistakes(lambda s: s.mistakes.softmax_mistakes(x, -1))

On the staff's checkout the function runs (``s.<exercise>`` is ``solutions.<exercise>``,
``s.mistakes`` is ``autograder.mistakes``). ``python -m autograder release`` grades the
solutions with the public suites once, records every value in call order, and ships only
those values (``exercises/checks/reference.pt``: tensors, numbers, strings; no code) with
the hidden suites' point totals. In the release the fixture returns the recorded value for
the test and call number. Values must not depend on what the submission returned (they
are computed before or independently of it), so the n-th call of a test is the same call
for every submission.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ROOT / "exercises" / "checks"
DATA = CHECKS / "reference.pt"
# the release's data file: what the staff side knew when the release was built
FORMAT = 1


def staff_side() -> bool:
    """True on the staff's checkout, where the reference and the mistakes can be computed."""
    return (ROOT / "solutions").is_dir() and (ROOT / "autograder" / "mistakes").is_dir()


class Sources:
    """What a reference function may read: ``s.<exercise>`` (solutions/<exercise>.py) and
    ``s.mistakes`` (``s.mistakes.<exercise>.name``, or a flat ``s.mistakes.name``)."""

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name == "mistakes":
            return _Mistakes()
        return importlib.import_module(f"solutions.{name}")


class _Mistakes:
    """autograder.mistakes, with its per-exercise modules as attributes."""

    def __getattr__(self, name: str):
        try:
            return importlib.import_module(f"autograder.mistakes.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"autograder.mistakes.{name}":
                raise
        return getattr(importlib.import_module("autograder.mistakes"), name)


class Recorder:
    """Collects every reference value while the solutions are graded (release build)."""

    def __init__(self):
        self.values: dict[str, object] = {}


_recorder: Recorder | None = None
_loaded: dict | None = None
_recorded_only = False  # use_recorded(): read values as the release does, even on the staff's side


def start_recording() -> Recorder:
    global _recorder
    _recorder = Recorder()
    return _recorder


def stop_recording() -> None:
    global _recorder
    _recorder = None


def use_recorded(path: Path) -> None:
    """From now on read every reference value from ``path`` (a file ``write_data`` wrote), as
    the release does, even where solutions/ exists: the repository's tests grade many
    submissions this way, computing the reference once, and exercise the release's path."""
    global _loaded, _recorded_only
    _loaded = None
    load_data(Path(path))
    _recorded_only = True


def load_data(path: Path = DATA) -> dict:
    """The release's recorded values and point totals (read once)."""
    global _loaded
    if _loaded is None:
        if not path.exists():
            raise RuntimeError(f"{path} is missing: the public checks need the reference values "
                               f"recorded when the release was built (python -m autograder release)")
        # the course's own file, still loaded as data only: tensors, numbers and strings
        _loaded = torch.load(path, weights_only=True)
        if _loaded.get("format") != FORMAT:
            raise RuntimeError(f"{path.name} has format {_loaded.get('format')}, expected {FORMAT}: rebuild the release")
    return _loaded


class Reference:
    """The ``reference`` fixture of one public test: ``reference(fn)`` and ``reference.mistakes(fn)``."""

    def __init__(self, test_id: str):
        self.test_id = test_id
        self.calls = 0
        self.staff = staff_side() and not _recorded_only

    def _key(self) -> str:
        self.calls += 1
        return f"{self.test_id}#{self.calls}"

    def __call__(self, fn):
        key = self._key()
        if self.staff:
            value = fn(Sources())
            if _recorder is not None:
                _recorder.values[key] = value
            return value
        values = load_data()["values"]
        if key not in values:
            raise RuntimeError(f"no recorded reference value {key}: the public checks changed since "
                               f"reference.pt was written (rebuild the release)")
        return values[key]

    def mistakes(self, fn):
        """Known mistakes as ``check_tensor(mistakes=...)`` takes them: a function giving
        (sentence, wrong value) pairs, computed (or read) once, now."""
        pairs = self(lambda s: [(str(text), wrong) for text, wrong in fn(s)])
        return lambda: list(pairs)


def coverage(exercise: str) -> tuple[float, float] | None:
    """(N, M): the public checks of ``exercise`` cover N of the M points the staff grade.
    A hidden test's points count as covered when a public test mirrors it (its
    ``@pytest.mark.mirrors(...)`` names the hidden test, without the ``test_`` prefix).
    Computed from the suites on the staff's side, read from the release's data there."""
    if not staff_side() or _recorded_only:
        try:
            return tuple(load_data()["coverage"].get(exercise)) or None
        except (RuntimeError, TypeError):
            return None
    return compute_coverage().get(exercise)


def compute_coverage() -> dict[str, tuple[float, float]]:
    from . import adequacy

    found = {}
    for path in sorted(CHECKS.glob("test_*.py")):
        exercise = path.stem[len("test_"):]
        if not (adequacy.SUITES / path.name).exists():
            continue
        mirrored = mirrored_tests(path)
        tests = adequacy.suite_tests(exercise)
        total = sum(t.max_points for t in tests)
        covered = sum(t.max_points for t in tests if t.name in mirrored)
        found[exercise] = (covered, total)
    return found


def mirrored_tests(path: Path) -> set[str]:
    """The hidden test names a public suite's ``@pytest.mark.mirrors(...)`` markers list."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "mirrors":
            names.update(ast.literal_eval(arg) for arg in node.args)
    return names


def write_data(path: Path, values: dict) -> None:
    torch.save({"format": FORMAT, "values": values,
                "coverage": {k: list(v) for k, v in compute_coverage().items()}}, path)
