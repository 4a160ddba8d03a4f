"""Public suites: the checks you run as often as you like, graded by the same engine as the
staff's hidden suites (your code runs in a separate worker process; the grader compares its
values with the reference's and names a known mistake when your values match one).

    python3 course.py grade                                  # every exercise, in course order
    python3 course.py grade --exercise attention             # one exercise
    python3 course.py grade --exercise attention -k softmax  # the tests whose names match
    python3 course.py grade --exercise attention -v          # whole messages

The inputs here are public and differ from the staff's; the staff's hidden suite tries more
shapes, dtypes and edge cases. Reference values come from the ``reference`` fixture
(``autograder/public.py``): computed from the reference on the staff's side, recorded in
``reference.pt`` for the student release.
"""
from pathlib import Path

import pytest


def pytest_configure(config):
    # a bare `pytest exercises/checks` has no worker and no grader to compare: say what to run
    if not any(type(p).__name__ == "GradingPlugin" for p in config.pluginmanager.get_plugins()):
        raise pytest.UsageError("the public checks run inside the grader: python3 course.py grade "
                                "[--exercise NAME] [-k NAME] [-v]")


@pytest.fixture
def reference(request):
    from autograder.public import Reference

    return Reference(f"{Path(str(request.node.fspath)).stem}::{request.node.name}")
