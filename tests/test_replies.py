"""What comes back from the worker is checked before the grader uses it (autograder/replies.py).

Unit tests of ``validate`` on each forged shape (each refused fast, with the path named),
then end to end: a submission function that writes its own reply frame to the reply pipe
gains nothing a return could not give, and, with the check turned off, shows why it is there.
"""
import io
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict

import pytest
import torch

from autograder import replies, runner, worker_parent
from autograder.replies import validate
from autograder.worker_parent import SubmissionError, Worker

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # sparse CSR, quantized: deprecated, still loadable

FAST = 1.0  # seconds: whatever a frame holds, refusing it is quick


def reply(value):
    return {"id": 1, "ok": True, "value": value, "threads": []}


def refused(frame, **limits) -> str:
    started = time.monotonic()
    with pytest.raises(SubmissionError) as err:
        validate(frame, **limits)
    assert time.monotonic() - started < FAST
    assert err.value.kind == "bad-reply"
    return str(err.value)


def nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def cyclic():
    value = [1]
    value.append(value)
    return value


def shared():
    inner = [1, 2]
    return [inner, inner]


def big_storage():
    return torch.arange(10.)[:2]  # 8 bytes of shape, 40 of storage


FORGED = {  # name -> (value placed at result["out"], what the message must say)
    "stride-0 expand to 10**12": (lambda: torch.ones(1).expand(10**12), "strides (0,), not contiguous"),
    "meta": (lambda: torch.empty(3, device="meta"), "a tensor on the meta device; return a CPU tensor"),
    "sparse": (lambda: torch.eye(3).to_sparse(), "a sparse_coo tensor"),
    "sparse csr": (lambda: torch.eye(3).to_sparse_csr(), "a sparse_csr tensor"),
    "complex": (lambda: torch.zeros(2, dtype=torch.complex64), "a complex64 tensor"),
    "quantized": (lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8), "a quantized tensor"),
    "storage larger than shape": (big_storage, "(8 bytes) whose storage holds 40 bytes"),
    "storage offset": (lambda: torch.arange(10.)[2:4], "a view at offset 2"),
    "requires grad": (lambda: torch.ones(2, requires_grad=True), "requires grad"),
    "parameter": (lambda: torch.nn.Parameter(torch.ones(2)), "torch.nn.parameter.Parameter"),
    "python attributes": (lambda: _with_attribute(), "Python attributes"),
    "list of 10**6 ints": (lambda: [0] * 10**6, "a list of 1000000 items"),
    "10**8-char string": (lambda: "x" * 10**8, "a string of 100000000 characters"),
    "shared container": (shared, "appears twice"),
    "cycle": (cyclic, "appears twice"),
    "depth 10**4": (lambda: nested(10**4), "levels deep"),
    "huge int": (lambda: 1 << 100000, "an integer of 100001 bits"),
    "ordered dict": (lambda: OrderedDict(a=1), "collections.OrderedDict"),
    "bytes": (lambda: b"raw", "a builtins.bytes"),
    "int key": (lambda: {1: 2}, "keys must be strings"),
    "one tensor twice": (lambda: [torch.ones(1)] * 2, "a tensor that appears twice"),
    "two views of one storage": (lambda: _siblings(), "shares its storage"),
}


def _with_attribute():
    t = torch.ones(2)
    t.extra = torch.zeros(1000)  # data that would ride along
    return t


def _siblings():
    base = torch.ones(4)
    return [base.view(4), base.view(2, 2)]  # two full views: no offset, exact size, one storage


@pytest.mark.parametrize("name", FORGED)
def test_each_forged_shape_is_refused_fast_with_its_path(name):
    make, needle = FORGED[name]
    value = make()
    message = refused(reply({"out": [None, value]}))
    assert needle in message, message
    assert message.startswith('result["out"][1]'), message


def test_the_forged_shapes_survive_weights_only_loading():
    """Why the check is needed: torch.load(weights_only=True) hands these over as they were sent."""
    for value in (torch.ones(1).expand(10**12), torch.empty(3, device="meta"), torch.eye(3).to_sparse(),
                  torch.arange(10.)[2:4], shared()):
        buf = io.BytesIO()
        torch.save(reply(value), buf)
        loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["value"]
        if isinstance(value, torch.Tensor):
            assert loaded.shape == value.shape and loaded.layout == value.layout
            assert loaded.device == value.device and loaded.stride() == value.stride()
        else:
            assert loaded[0] is loaded[1]  # sharing too
    assert torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["value"][0] is not None


def test_a_list_of_a_million_is_refused_before_its_items_are_looked_at():
    started = time.monotonic()
    message = refused(reply({"out": [object()] * 10**6}))  # objects never reached: measured first
    assert "a list of 1000000 items" in message and time.monotonic() - started < 0.1


def test_total_bytes_are_bounded_even_when_one_string_is_shared():
    """pickle can reference one string many times: each occurrence counts."""
    text = "y" * 60_000
    message = refused(reply([text] * 50), max_total_bytes=1 << 20)
    assert "above 1 MiB" in message and "result[17]" in message


def test_honest_replies_pass():
    value = {"out": torch.randn(2, 3), "input_grads": [None, torch.ones(3, dtype=torch.float64)],
             "shapes": [(), (), (2, 3)], "n": 3, "ok": True, "name": "float32", "x": 1.5,
             "per_dtype": [torch.zeros(2, dtype=d) for d in replies.DTYPES], "empty": torch.empty(0)}
    assert validate(reply(value)) is not None
    for event in ({"event": "ready", "pid": 12}, {"event": "importing", "module": "attention"},
                  {"event": "imported", "module": "attention"}, {"event": "calling", "target": "@mha_run"}):
        validate(event)
    validate({"id": 3, "ok": False, "threads": ["Thread-1"],
              "error": {"type": "ValueError", "message": "bad", "traceback": ""}})


@pytest.mark.parametrize("frame,needle", [
    ([1, 2], "the frame is a list"),
    ({"id": 1, "ok": True, "value": 1, "threads": [], "points": 100}, "has 5 keys"),
    ({"id": 1, "ok": True, "value": 1, "score": []}, "expected id, ok, threads, value"),
    ({"id": True, "ok": True, "value": 1, "threads": []}, 'the frame["id"] is True'),
    ({"id": 1, "ok": 1, "value": 1, "threads": []}, 'the frame["ok"] is 1'),
    ({"id": 1, "ok": True, "value": 1, "threads": ["t"] * 5000}, "at most 1000 names"),
    ({"event": "importing", "module": "\x1b[2Jrope"}, 'expected a module name'),
    ({"event": "done"}, "expected one of ready"),
    ({"event": "calling", "target": "x" * 10**6}, "expected a target"),
    ({"id": 1, "ok": False, "threads": [], "error": {"type": "E", "message": "m" * 10**6, "traceback": ""}},
     'the frame["error"]["message"]'),
    ({"id": 1, "ok": False, "threads": [], "error": {"type": "not a name!", "message": "", "traceback": ""}},
     "the name of an exception class"),
])
def test_frames_the_protocol_does_not_send_are_refused(frame, needle):
    assert needle in refused(frame)


def test_the_worker_refuses_odd_tensors_itself_with_a_clear_message():
    """The worker's own to_wire (a courtesy: the grader checks again) names what came."""
    sys.path.insert(0, str(worker_parent.HERE))
    try:
        import worker_child as worker
    finally:
        sys.path.remove(str(worker_parent.HERE))
    for value, needle in [(torch.empty(2, device="meta"), "result is a tensor on the meta device; return a CPU tensor"),
                          (torch.eye(2).to_sparse(), "sparse_coo"), (torch.zeros(1, dtype=torch.complex64), "complex64")]:
        with pytest.raises(TypeError, match=needle):
            worker.to_wire(value, 1 << 20)
    for value in (torch.ones(1).expand(1000), torch.arange(10.)[2:4], torch.ones(3, requires_grad=True) * 1,
                  torch.ones(2, 2).t(), {"a": [torch.ones(2)._neg_view()]}):
        validate(reply(worker.to_wire(value, 1 << 20)))  # what it sends passes


# -- end to end: a submission that writes its own frames ---------------------------------------
FORGING = textwrap.dedent("""
    import io, os, struct, sys, torch

    def _forge(value):
        frame = sys._getframe()
        while "request" not in frame.f_locals:  # the worker's main loop: the call's id
            frame = frame.f_back
        buf = io.BytesIO()
        torch.save({"id": frame.f_locals["request"]["id"], "ok": True, "value": value, "threads": []}, buf)
        os.write(int(sys.argv[2]), struct.pack(">Q", len(buf.getvalue())) + buf.getvalue())

    def expanded():
        _forge(torch.ones(1).expand(10**12))  # 4 bytes claiming 4 TB
        return torch.zeros(1)

    def meta():
        _forge(torch.empty(3, device="meta"))
        return torch.zeros(3)

    def right_value(x):
        _forge(2 * x)  # what the function could have returned anyway
        return "the worker's own reply, late"

    def double(x):
        return 2 * x

    def returns_meta():
        return torch.empty(3, device="meta")

    def shouts():
        raise ValueError("\\x1b[2J\\x1b[31mred\\x1b[0m alert\\x07")
""")


@pytest.fixture
def forging(tmp_path):
    (tmp_path / "mod.py").write_text(FORGING)
    return tmp_path


def test_a_forged_frame_with_an_expanded_tensor_fails_only_its_own_call(forging):
    x = torch.arange(3.)
    with Worker(forging) as w:
        started = time.monotonic()
        with pytest.raises(SubmissionError) as err:
            w.call("mod.expanded")
        assert err.value.kind == "bad-reply"
        assert str(err.value).startswith("in mod.expanded: the reply was refused: result is a tensor of "
                                         "shape (1000000000000,) with strides (0,)")
        assert time.monotonic() - started < 10
        assert torch.equal(w.call("mod.double", x), 2 * x)  # the next test is graded as usual
        with pytest.raises(SubmissionError, match="result is a tensor on the meta device; return a CPU tensor"):
            w.call("mod.meta")
        with pytest.raises(SubmissionError, match="TypeError in mod.returns_meta: result is a tensor on the "
                                                  "meta device; return a CPU tensor"):
            w.call("mod.returns_meta")  # the worker's own courtesy says the same


def test_a_forged_frame_with_a_plain_value_changes_nothing_a_return_could_not(forging):
    x = torch.arange(3.)
    with Worker(forging) as w:
        assert torch.equal(w.call("mod.right_value", x), 2 * x)
        restarts = w.restarts
        assert torch.equal(w.call("mod.double", x), 2 * x)  # the late real reply was dropped, not read as this one
        assert w.restarts == restarts


def test_without_the_check_the_forged_values_reach_the_grader(forging, monkeypatch):
    """The protection is needed: with validate turned off the 4-byte tensor claiming 10**12
    elements and the meta tensor arrive in the grader as sent."""
    monkeypatch.setattr(worker_parent, "validate", lambda frame, **limits: frame)
    with Worker(forging) as w:
        value = w.call("mod.expanded")
        assert value.shape == (10**12,) and value.untyped_storage().nbytes() == 4
        assert w.call("mod.meta").device.type == "meta"


COMPARE_WITHOUT_CHECK = """
import resource, torch
from autograder.compare import check_tensor
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
forged = torch.ones(1).expand(4, 10**8)  # what a forged frame carried: 4 bytes of storage
try:
    check_tensor(forged, torch.ones(1).expand(4, 10**8), "out")
except AssertionError as exc:
    print("student failure", exc)
except Exception as exc:
    print("grader fault", type(exc).__name__, str(exc)[:80])
for forged in (torch.empty(3, device="meta"),):
    try:
        check_tensor(forged, torch.zeros(3), "out")
        print("passed")
    except AssertionError as exc:
        print("student failure", exc)
    except Exception as exc:
        print("grader fault", type(exc).__name__, str(exc)[:80])
"""


def test_without_the_check_comparisons_allocate_gigabytes_and_fail_as_the_graders():
    """What the expanded and meta tensors would do in compare.check_tensor: allocate 3.2 GB for
    4 bytes (here: past a 3 GiB limit), or raise an error that is not an assertion, which the
    runner then blames on the grader."""
    out = subprocess.run([sys.executable, "-c", COMPARE_WITHOUT_CHECK], capture_output=True, text=True,
                         timeout=120, cwd=str(worker_parent.HERE.parent))
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("grader fault") for line in lines), out.stdout + out.stderr


def test_control_characters_in_a_message_reach_no_report(forging, monkeypatch):
    with Worker(forging) as w:
        with pytest.raises(SubmissionError) as err:
            w.call("mod.shouts")
    assert "\x1b" in str(err.value)  # the raw text as the worker sent it

    class Info:  # what pytest hands the plugin
        value = err.value
        traceback = []

    status, message = runner._explain(Info)
    assert status == "failed" and "red alert" in message and "\x1b" not in message and "\x07" not in message
    monkeypatch.setattr(runner, "clean", lambda text, *a, **k: str(text))  # the protection off
    assert "\x1b[31m" in runner._explain(Info)[1]


def test_a_fault_in_trusted_code_is_a_grader_error_and_a_students_value_is_not():
    class Info:
        def __init__(self, exc):
            self.value = exc
            try:
                raise exc
            except BaseException as raised:
                import _pytest._code
                self.traceback = _pytest._code.ExceptionInfo.from_exception(raised).traceback

    status, message = runner._explain(Info(KeyError("out")))
    assert status == "error" and message.startswith("grader error: KeyError") and "course staff" in message
    status, message = runner._explain(Info(SubmissionError("in f: the reply was refused: result is a tensor "
                                                           "on the meta device; return a CPU tensor", "bad-reply")))
    assert status == "failed" and "meta device" in message
    status, _ = runner._explain(Info(SubmissionError("grader error: the worker could not start", "crash")))
    assert status == "error"
    status, _ = runner._explain(Info(pytest.fail.Exception("DID NOT RAISE")))
    assert status == "failed"
