"""exercises/ is generated from solutions/ and must not drift from it."""
import subprocess
import sys

import pytest

from autograder import skeleton
from tests.conftest import ROOT


def test_committed_skeletons_match_the_solutions():
    assert skeleton.check() == [], "run `python -m autograder skeletons` and commit exercises/"


def test_check_command_reports_drift(tmp_path):
    (tmp_path / "attention.py").write_text("# edited by hand\n")
    # the hand-edited file and every missing one are reported
    assert skeleton.check(tmp_path) == sorted(skeleton.expected_skeletons())
    proc = subprocess.run([sys.executable, "-m", "autograder", "skeletons", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "in sync" in proc.stdout


def test_skeleton_keeps_the_api_and_replaces_bodies():
    source = (
        'def f(x):\n'
        '    """Docstring stays."""\n'
        '    ### BEGIN SOLUTION\n'
        '    return x + 1\n'
        '    ### END SOLUTION\n'
        '\n'
        'class C:\n'
        '    def __init__(self):\n'
        '        self.keep = 1\n'
        '        ### BEGIN SOLUTION\n'
        '        self.secret = 2\n'
        '        ### END SOLUTION\n')
    out = skeleton.make_skeleton(source, "t.py")
    assert '"""Docstring stays."""' in out and "self.keep = 1" in out
    assert "return x + 1" not in out and "self.secret" not in out
    assert '    raise NotImplementedError("f: write this part' in out
    assert '        raise NotImplementedError("C.__init__: write this part' in out
    namespace = {}
    exec(compile(out, "t.py", "exec"), namespace)
    with pytest.raises(NotImplementedError):
        namespace["f"](1)


@pytest.mark.parametrize("bad", [
    "def f():\n    ### BEGIN SOLUTION\n    pass\n",  # never closed
    "def f():\n    pass\n    ### END SOLUTION\n",  # never opened
    "### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n",  # outside a function
])
def test_malformed_markers_are_rejected(bad):
    with pytest.raises(ValueError):
        skeleton.make_skeleton(bad, "t.py")


@pytest.mark.parametrize("name", sorted(skeleton.expected_skeletons()))
def test_skeleton_api_equals_solution_api(name):
    """Same public names and signatures in exercises/ and solutions/."""
    import importlib
    import inspect

    ex = importlib.import_module(f"exercises.{name[:-3]}")
    sol = importlib.import_module(f"solutions.{name[:-3]}")

    def api(module):
        names = {n: getattr(module, n) for n in dir(module) if not n.startswith("_")
                 and getattr(getattr(module, n), "__module__", None) == module.__name__}
        sig = {}
        for name, obj in names.items():
            sig[name] = str(inspect.signature(obj))
            if inspect.isclass(obj):
                for meth in ("__init__", "forward"):
                    if hasattr(obj, meth):
                        sig[f"{name}.{meth}"] = str(inspect.signature(getattr(obj, meth)))
        return sig

    assert api(ex) == api(sol)
