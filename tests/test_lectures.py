"""Every lecture runs top to bottom in a real Jupyter kernel, quickly, with figures, and
writes nothing to stderr (nbgrader zeroes a cell that does). Both editions run: English in
lectures/, Korean in lectures/ko/ (same code, tests/test_lecture_editions.py), each from its
own folder, as a student opens it."""
from pathlib import Path

import nbformat
import pytest

from autograder.website import execute_lecture

LECTURE_DIR = Path(__file__).resolve().parent.parent / "lectures"
LECTURES = sorted(LECTURE_DIR.glob("*.ipynb"))
KOREAN = sorted((LECTURE_DIR / "ko").glob("*.ipynb"))
SELF_CHECK = {"": "Self-check", "ko": "자가 점검"}  # the quiz section's heading per edition
BUDGET_S = 120  # the curriculum's "well under two minutes" on a 2-core CPU


def test_there_are_lectures():
    assert [p.name[:2] for p in LECTURES][:2] == ["01", "02"]


@pytest.mark.slow
@pytest.mark.parametrize("path", LECTURES + KOREAN,
                         ids=lambda p: str(p.relative_to(LECTURE_DIR).with_suffix("")))
def test_lecture_executes(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit lectures without outputs"
    nb, _ = execute_lecture(path)  # cached by content: the site build reuses this execution
    cost = nb.metadata["course"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    stderr = [o.get("text", "")[:200] for o in outputs if o.get("name") == "stderr"]
    assert not stderr, f"cells wrote to stderr: {stderr}"
    assert any("image/png" in o.get("data", {}) for o in outputs), "a lecture shows at least one figure"
    print(f"{path.relative_to(LECTURE_DIR)}: {cost['cpu_s']} s of CPU, {cost['executed_in_s']} s wall")  # -s shows it
    # the budget is the lecture's CPU time: with one torch thread (every lecture pins it) that is
    # its wall time on an idle machine, and it does not grow when other tests share the cores
    assert cost["cpu_s"] < BUDGET_S, f"{path.name} needed {cost['cpu_s']:.0f} s of CPU"
    markdown = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    heading = SELF_CHECK["ko" if path.parent.name == "ko" else ""]
    assert heading in markdown, f"the lecture ends with a {heading} section"
