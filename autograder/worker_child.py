"""The child side of the worker boundary: the only process that imports and runs a
submission's code. Nothing in this file runs in the grader.

Started by ``autograder.worker_parent.Worker`` (the grader's side of this process boundary) as
``python -I worker_child.py REQ_FD RESP_FD SUBMISSION [PACKAGE_DIR ...]`` from a fresh temporary
directory that holds a copy of this file and of the ``adapters`` package, so neither the
grader's files nor the reference solutions are on its import path (PACKAGE_DIRs: where
torch lives).

Protocol: each frame is an 8-byte big-endian length and a ``torch.save`` payload.
Requests are ``{"id", "target", "args", "kwargs", "max_bytes", "timeout", "hung"}`` (the
reply size limit, the grader's timeout, functions that hung twice before). ``target`` is
``"module.name"`` (a function of the submission) or ``"@adapter"`` / ``"@exercise.adapter"``
(trusted code of the ``adapters`` package, its ``__init__`` or one exercise's module, that
builds a student's module, runs it and returns tensors; the grader writes these as
``worker.adapters.adapter(...)``). Before
importing a module or calling a target the worker sends an event frame, so the grader can
say where a hang or a crash happened. Replies are ``{"id", "ok": True, "value"}`` or
``{"id", "ok": False, "error"}``, with ``"threads"``: Python threads the call left running.
The grader loads every frame with ``torch.load(weights_only=True)``: nothing but tensors
and plain containers can come back, whatever the submission does to this process; and it
checks every frame (``autograder/replies.py``) before using it, since code running here can
write frames of its own. stdout and stderr are a pipe the grader drains; the stack that
faulthandler dumps just before a timeout goes to the fd in ``COURSE_DUMP_FD``.
"""
import os
import sys

# as an unprivileged user the worker runs a system Python and is handed the grader's
# site-packages: they go first, before anything is imported from them
sys.path[:0] = sys.argv[4:]

import faulthandler  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import random  # noqa: E402
import struct  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402

import torch  # noqa: E402

PACKAGE = "submission"  # the submission's folder is imported as this package


def read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def send(fd, obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    view = memoryview(struct.pack(">Q", len(data)) + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def receive(fd):
    header = read_exact(fd, 8)
    if header is None:
        return None
    (length,) = struct.unpack(">Q", header)
    payload = read_exact(fd, length)
    return torch.load(io.BytesIO(payload), weights_only=True)


class Submission:
    """Lazy, per-module import of the submission folder as the package ``submission``."""

    def __init__(self, folder, events):
        self.folder = os.path.abspath(folder)
        self.events = events
        package = types.ModuleType(PACKAGE)
        package.__path__ = [self.folder]  # relative imports between exercise files work
        package.__package__ = PACKAGE
        sys.modules[PACKAGE] = package

    def module(self, name):
        full = f"{PACKAGE}.{name}"
        if full not in sys.modules:
            path = os.path.join(self.folder, name + ".py")
            if os.path.islink(path) and not os.path.exists(path):
                raise MissingName(f"{name}.py is a symbolic link to {os.readlink(path)}, which the "
                                  f"grader may not read or which does not exist; submit the file itself")
            if not os.path.exists(path):
                raise MissingName(f"the submission has no file {name}.py")
            self.events({"event": "importing", "module": name})
            module = importlib.import_module(full)
            self.events({"event": "imported", "module": name})
            return module
        return sys.modules[full]

    def load(self, dotted):
        """``"attention.softmax"`` or ``"attention.MultiHeadAttention"`` -> the object."""
        module_name, _, attr = dotted.partition(".")
        module = self.module(module_name)
        obj = module
        for part in attr.split(".") if attr else []:
            if not hasattr(obj, part):
                raise MissingName(f"{module_name}.py has no {attr!r}")
            obj = getattr(obj, part)
        return obj


class MissingName(Exception):
    pass


# what the grader accepts (autograder/replies.py checks every frame again: this is a courtesy
# that gives an honest mistake a clear message; student code here could skip it)
WIRE_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16,
               torch.int32, torch.int64, torch.uint8, torch.bool}
MAX_STRING = 1 << 16
MAX_INT = 1 << 64


def tensor_problem(value):
    """Why the grader would refuse this tensor (before it is copied), or "" if it would not."""
    if value.layout != torch.strided or value.is_nested:
        layout = "nested" if value.is_nested else str(value.layout).replace("torch.", "")
        return f"a {layout} tensor; return a dense tensor (.to_dense())"
    if value.device.type != "cpu":
        return f"a tensor on the {value.device.type} device; return a CPU tensor"
    if value.is_quantized:
        return "a quantized tensor; return a dense float tensor (.dequantize())"
    if value.dtype not in WIRE_DTYPES:
        return f"a {str(value.dtype).replace('torch.', '')} tensor; return a real float, integer or bool tensor"
    return ""


def to_wire(value, max_bytes, path="result"):
    """Plain tensors and containers only; anything else is an error the student reads.
    A tensor above ``max_bytes`` is refused before it is copied (the grader checks again)."""
    if type(value) is torch.Tensor or type(value) is torch.nn.Parameter:
        problem = tensor_problem(value)
        if problem:
            raise TypeError(f"{path} is {problem}")
        if value.nelement() * value.element_size() > max_bytes:
            raise ValueError(f"{path} is a tensor of shape {tuple(value.shape)} "
                             f"({value.nelement() * value.element_size() / 2**20:.0f} MiB), more than "
                             f"the {max_bytes / 2**20:.0f} MiB a reply may hold")
        # a contiguous copy that owns exactly its data: a view would otherwise ship its whole
        # storage, and the grader refuses expanded views, offsets and flags
        plain = value.detach().resolve_conj().resolve_neg()
        return plain.clone(memory_format=torch.contiguous_format)
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{path} is a {type(value).__name__}, a subclass of torch.Tensor; "
                        f"return a plain torch.Tensor")
    if type(value) is str and len(value) > MAX_STRING:
        raise ValueError(f"{path} is a string of {len(value)} characters; at most {MAX_STRING} may come back")
    if type(value) is int and not -MAX_INT < value < MAX_INT:
        raise ValueError(f"{path} is an integer of {value.bit_length()} bits; at most 64 bits may come back")
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) in (list, tuple):
        items = [to_wire(v, max_bytes, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if type(value) is list else tuple(items)
    if type(value) is dict:
        return {str(k): to_wire(v, max_bytes, f"{path}[{str(k)[:40]!r}]") for k, v in value.items()}
    if type(value) is torch.Size:
        return tuple(value)
    if type(value) is torch.dtype:
        return str(value)
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    raise TypeError(f"{path} is a {kind}; expected a torch.Tensor")


def describe(exc, folder):
    """Error record for the grader: type, message and the submission's frames only."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if os.path.abspath(f.filename).startswith(folder + os.sep)]
    lines = traceback.format_list(frames[-6:])
    message = str(exc)
    if isinstance(exc, SystemExit):
        message = f"called sys.exit({exc.code!r})"
    name = type(exc).__name__
    if not (name.isascii() and name.isidentifier() and len(name) <= 200):  # the grader refuses others
        name = "Exception"
    return {"type": name, "message": message[:2000],
            "traceback": "".join(lines)[-4000:]}


class HungEarlier(Exception):
    """Raised on entry to a submission function that already hung in earlier tests."""


def hang_guard(folder, hung):
    """A trace function that fails a call at once when it enters a function the grader saw
    stuck twice (``hung``: dicts of file, function and the line it was stuck at), so one
    endless loop does not cost a full timeout in every later test that reaches it."""
    verdicts = {}

    def blocked(code):
        if not code.co_filename.startswith(folder + os.sep):
            return ""
        lines = [line for _, _, line in code.co_lines() if line is not None]
        for entry in hung:
            if (code.co_name == entry["function"] and code.co_filename.endswith(os.sep + entry["file"])
                    and lines and min(lines) <= entry["line"] <= max(lines)):
                return entry["message"]
        return ""

    def trace(frame, event, arg):
        if event == "call":
            code = frame.f_code
            if code not in verdicts:
                verdicts[code] = blocked(code)
            if verdicts[code]:
                raise HungEarlier(verdicts[code])
        return None

    return trace


def seed_everything():
    """Every call starts from the same random state, so grading twice gives one report
    even for code that draws random numbers."""
    torch.manual_seed(0)
    random.seed(0)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(0)


def skip_dynamo_in_optimizers():
    """torch.optim.Optimizer's __init__, zero_grad and state-dict methods are wrapped by
    torch._compile._disable_dynamo, which imports torch._dynamo on first call (a second of CPU
    in every worker that builds an optimizer, the student's AdamW included). Grading never
    compiles, so the wrappers are told they are already resolved, to the plain function.
    Trusted code, run before the submission is imported; a torch without them is left as is."""
    try:
        from torch._compile import _disable_dynamo
    except ImportError:
        return
    lazy = _disable_dynamo(lambda: None).__code__
    for value in vars(torch.optim.Optimizer).values():
        function = getattr(value, "__func__", value)
        if getattr(function, "__code__", None) is lazy and hasattr(function, "__wrapped__"):
            function.__wrapped__.__dynamo_disable = function.__wrapped__


def threads_left_running(grace=0.2):
    """Names of the Python threads, other than this one, still alive a moment after a call."""
    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return [str(names.get(ident, f"thread {ident}"))[:1000]  # started with _thread: no Thread object
            for ident in sys._current_frames() if ident != threading.get_ident()][:1000]  # what the grader reads


def resolve_adapter(adapters, name):
    """``"@name"`` is a function of the adapters package, ``"@exercise.name"`` one of its
    per-exercise modules (imported on first use)."""
    module_name, _, function = name.rpartition(".")
    module = importlib.import_module(f"course_adapters.{module_name}") if module_name else adapters
    return getattr(module, function)


def main():
    req_fd, resp_fd, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)  # see the grading notes: parallel workers thrash otherwise
    skip_dynamo_in_optimizers()
    here = os.path.dirname(os.path.abspath(__file__))
    # the trusted adapters are a package (shared helpers in __init__, one module per exercise);
    # registered under its own name so that its modules' relative imports resolve
    folder_of_adapters = os.path.join(here, "adapters")
    spec = importlib.util.spec_from_file_location("course_adapters", os.path.join(folder_of_adapters, "__init__.py"),
                                                  submodule_search_locations=[folder_of_adapters])
    adapters = importlib.util.module_from_spec(spec)
    sys.modules["course_adapters"] = adapters
    spec.loader.exec_module(adapters)

    # the stack dumped before a timeout goes to a pipe of its own, so output the code prints
    # at the same time can neither interleave with it nor push it out of what the grader keeps
    dump = int(os.environ.get("COURSE_DUMP_FD", "2"))
    # each printed line reaches the grader at once (stdout is a pipe: block-buffered), so the
    # last output a crash message shows is what was printed last, not what a buffer still held
    sys.stdout.reconfigure(line_buffering=True)
    submission = Submission(folder, lambda event: send(resp_fd, event))
    send(resp_fd, {"event": "ready", "pid": os.getpid()})
    while True:
        request = receive(req_fd)
        if request is None:
            return
        reply = {"id": request["id"]}
        seed_everything()
        if request.get("timeout"):  # just before the grader gives up: where it is stuck, to the grader
            faulthandler.dump_traceback_later(max(0.1, 0.9 * request["timeout"] - 0.1), file=dump)
        sys.settrace(hang_guard(submission.folder, request["hung"]) if request.get("hung") else None)
        try:
            target = request["target"]
            if target.startswith("@"):
                function = resolve_adapter(adapters, target[1:])
                send(resp_fd, {"event": "calling", "target": target})
                value = function(submission, *request["args"], **request["kwargs"])
            else:
                function = submission.load(target)
                send(resp_fd, {"event": "calling", "target": target})
                value = function(*request["args"], **request["kwargs"])
            reply.update(ok=True, value=to_wire(value, request["max_bytes"]))
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: report, live on
            reply.update(ok=False, error=describe(exc, submission.folder))
        sys.settrace(None)
        faulthandler.cancel_dump_traceback_later()
        reply["threads"] = threads_left_running()
        send(resp_fd, reply)


if __name__ == "__main__":
    main()
