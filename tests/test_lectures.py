"""Every lecture runs top to bottom in a real Jupyter kernel, quickly, with figures, and
writes nothing to stderr (nbgrader zeroes a cell that does). Both editions run: English in
lectures/, Korean in lectures/ko/ (same code, tests/test_lecture_editions.py), each from its
own folder, as a student opens it."""
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

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
    started = time.monotonic()
    NotebookClient(nb, timeout=BUDGET_S, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.monotonic() - started
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    stderr = [o.get("text", "")[:200] for o in outputs if o.get("name") == "stderr"]
    assert not stderr, f"cells wrote to stderr: {stderr}"
    assert any("image/png" in o.get("data", {}) for o in outputs), "a lecture shows at least one figure"
    print(f"{path.relative_to(LECTURE_DIR)} executed in {elapsed:.1f} s")  # shown with -s
    assert elapsed < BUDGET_S, f"{path.name} took {elapsed:.0f} s"
    markdown = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    heading = SELF_CHECK["ko" if path.parent.name == "ko" else ""]
    assert heading in markdown, f"the lecture ends with a {heading} section"
