"""Checking a frame from the worker before the grader uses it.

``torch.load(weights_only=True)`` keeps objects out, but not odd values: the worker runs
student code, which can write its own frames to the reply pipe and so skip the worker's
``to_wire``. A frame could then hold a tensor whose tiny storage claims a huge shape
(stride 0: the grader's comparisons would allocate gigabytes), a meta, sparse, quantized,
complex or GPU tensor (comparisons raise, and the fault would look like the grader's), a
storage larger than its tensor (extra data shipped), containers shared, cyclic, millions
of nodes long or thousands deep, huge strings or integers.

``validate(frame)`` accepts exactly what the worker protocol sends (see ``worker.py``):
events ``{"event": ..., ...}`` and replies ``{"id", "ok", "value" | "error", "threads"}``,
whose values are dicts with str keys, lists, tuples, None, bool, int, float, str and plain
dense CPU tensors that own exactly their storage. Anything else raises ``SubmissionError``
(kind ``bad-reply``) naming where in the reply it was (``result["out"][2]``) and what was
wrong. The work done is bounded by the limits, whatever the frame holds: every container
is measured before its items are visited, and nothing is recursed into.

``OutputDrain`` is the other thing that comes back: the worker's printed output, read from
a pipe as fast as it is written and kept only in part, so no amount of printing fails a call.
"""
from __future__ import annotations

import os
import re
import select
import threading
import time

import torch

MAX_NODES = 100_000  # containers, scalars and tensors in one frame
MAX_DEPTH = 32  # the adapters nest four levels at most
MAX_STRING = 1 << 16  # characters in one string (a dict key included)
MAX_TOTAL_BYTES = 256 << 20  # tensor data plus string characters, counted per occurrence
MAX_DIMS = 64
MAX_INT = 1 << 64  # magnitude; beyond int64 no tensor could hold it anyway

DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16,
          torch.int32, torch.int64, torch.uint8, torch.bool}
COMPLEX = {torch.complex64, torch.complex128}

# the protocol's own fields: what the honest worker sends, and nothing longer
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}\Z")  # a module or an exception class
TARGET = re.compile(r"@?[A-Za-z_][A-Za-z0-9_.]{0,299}\Z")
EVENTS = {"ready": ("pid",), "importing": ("module",), "imported": ("module",), "calling": ("target",)}
MAX_THREADS = 1000  # names listed in a reply (the worker sends at most this many)
MAX_THREAD_NAME = 1000


def validate(frame, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH, max_string: int = MAX_STRING,
             max_total_bytes: int = MAX_TOTAL_BYTES, allow_complex: bool = False):
    """Return ``frame`` if it is a frame the worker protocol sends with plain values in it;
    otherwise raise ``SubmissionError(kind="bad-reply")`` saying where and what."""
    if type(frame) is not dict:
        _refuse("the frame", f"is {_kind(frame)}, not a dict")
    budget = _Budget(max_nodes, max_depth, max_string, max_total_bytes, allow_complex)
    if "event" in frame:
        _check_event(frame, budget)
    else:
        _check_reply(frame, budget)
    return frame


# -- the protocol -----------------------------------------------------------------------------
def _check_event(frame, budget):
    event = frame["event"]
    if type(event) is not str or event not in EVENTS:
        _refuse('the frame["event"]', f"is {_short(event)}; expected one of {', '.join(EVENTS)}")
    _check_keys(frame, {"event", *EVENTS[event]})
    if event == "ready":
        _check_int(frame["pid"], 'the frame["pid"]', low=1)
    elif event == "calling":
        _check_pattern(frame["target"], TARGET, 'the frame["target"]', "a target such as attention.softmax")
    else:
        _check_pattern(frame["module"], NAME, 'the frame["module"]', "a module name such as attention")


def _check_reply(frame, budget):
    if len(frame) != 4:  # before looking at any key: a dict of a million keys costs nothing here
        _refuse("the frame", f"has {len(frame)} keys; a reply has id, ok, value or error, and threads")
    ok = frame.get("ok")
    if type(ok) is not bool:
        _refuse('the frame["ok"]', f"is {_short(ok)}; expected True or False")
    _check_keys(frame, {"id", "ok", "value" if ok else "error", "threads"})
    _check_int(frame["id"], 'the frame["id"]', low=1)
    threads = frame["threads"]
    if type(threads) is not list or len(threads) > MAX_THREADS:
        _refuse('the frame["threads"]', f"is {_kind(threads)}; expected a list of at most {MAX_THREADS} names")
    for i, name in enumerate(threads):
        if type(name) is not str or len(name) > MAX_THREAD_NAME:
            _refuse(f'the frame["threads"][{i}]', f"is {_kind(name)}; expected a thread name of at most "
                                                  f"{MAX_THREAD_NAME} characters")
    if ok:
        _check_value(frame["value"], "result", budget)
        return
    error = frame["error"]
    if type(error) is not dict:
        _refuse('the frame["error"]', f"is {_kind(error)}; expected the worker's error record")
    _check_keys(error, {"type", "message", "traceback"}, 'the frame["error"]')
    _check_pattern(error["type"], NAME, 'the frame["error"]["type"]', "the name of an exception class")
    for key in ("message", "traceback"):
        if type(error[key]) is not str or len(error[key]) > budget.max_string:
            _refuse(f'the frame["error"]["{key}"]', f"is {_kind(error[key])}; expected a string of at most "
                                                    f"{budget.max_string} characters")


def _check_keys(record, expected, where="the frame"):
    if len(record) != len(expected) or set(record) != expected:  # len first: the set is then small
        got = ", ".join(_short(k) for k in list(record)[:8]) if len(record) <= 8 else f"{len(record)} keys"
        _refuse(where, f"has the keys {got}; expected {', '.join(sorted(expected))}")


def _check_int(value, where, low):
    if type(value) is not int or not low <= value < MAX_INT:
        _refuse(where, f"is {_short(value)}; expected an integer of at least {low}")


def _check_pattern(value, pattern, where, expected):
    if type(value) is not str or not pattern.match(value):
        _refuse(where, f"is {_short(value)}; expected {expected}")


# -- values -----------------------------------------------------------------------------------
class _Budget:
    def __init__(self, max_nodes, max_depth, max_string, max_total_bytes, allow_complex):
        self.nodes = max_nodes
        self.bytes = max_total_bytes
        self.max_nodes, self.max_depth, self.max_string = max_nodes, max_depth, max_string
        self.max_total_bytes = max_total_bytes
        self.dtypes = DTYPES | COMPLEX if allow_complex else DTYPES


def _check_value(value, root, budget):
    """Every node once, depth first, without recursion. A stack entry is (node, depth, link);
    ``link`` is (parent's link, key), so the path is built only when something is refused."""
    seen_containers: set[int] = set()  # id() of each container and tensor: no node twice
    seen_storages: set[int] = set()  # and no storage behind two tensors
    stack = [(value, 0, None)]
    while stack:
        node, depth, link = stack.pop()
        budget.nodes -= 1
        if budget.nodes < 0:
            _refuse(_path(root, link), f"is one node too many: a reply may hold at most {budget.max_nodes} "
                                       f"values (containers, numbers, strings and tensors)")
        kind = type(node)
        if node is None or kind in (bool, float):
            continue
        if kind is int:
            if not -MAX_INT < node < MAX_INT:
                _refuse(_path(root, link), f"is an integer of {node.bit_length()} bits; at most 64 bits may come back")
            continue
        if kind is str:
            _check_string(node, root, link, budget)
            continue
        if kind is torch.Tensor:
            _check_tensor(node, root, link, budget, seen_containers, seen_storages)
            continue
        if kind not in (list, tuple, dict):
            _refuse(_path(root, link), f"is {_kind(node)}; expected a tensor, a number, a string, "
                                       f"None, or a list, tuple or dict of those")
        if node == ():
            continue  # the one empty tuple Python has: shared by every (), and holds nothing
        if id(node) in seen_containers:
            _refuse(_path(root, link), f"is a {kind.__name__} that appears twice in the reply (shared or "
                                       f"cyclic); every container must appear once")
        seen_containers.add(id(node))
        if depth >= budget.max_depth:
            _refuse(_path(root, link), f"is nested {depth + 1} levels deep; at most {budget.max_depth} may "
                                       f"come back")
        if len(node) > budget.nodes:  # measured before a single item is looked at
            _refuse(_path(root, link), f"is a {kind.__name__} of {len(node)} items; a reply may hold at "
                                       f"most {budget.max_nodes} values")
        if kind is dict:
            for key in node:
                if type(key) is not str:
                    _refuse(_path(root, link), f"has a key that is {_kind(key)}; keys must be strings")
                _check_string(key, root, (link, key), budget, what="a key of")
            items = list(node.items())
        else:
            items = list(enumerate(node))
        for key, item in reversed(items):  # reversed: visited in order, so the first fault is named
            stack.append((item, depth + 1, (link, key)))


def _check_string(text, root, link, budget, what=""):
    if len(text) > budget.max_string:
        where = f"{what} {_path(root, link)}".strip()
        _refuse(where, f"is a string of {len(text)} characters; at most {budget.max_string} may come back")
    budget.bytes -= len(text)
    if budget.bytes < 0:
        _refuse(_path(root, link), f"brings the reply above {budget.max_total_bytes / 2**20:.0f} MiB of "
                                   f"tensors and strings")


def _check_tensor(t, root, link, budget, seen_containers, seen_storages):
    """Only attributes are read here, never the data: all of it is O(1) per tensor."""
    def refuse(why, fix="return a plain, contiguous CPU tensor"):
        _refuse(_path(root, link), f"{why}; {fix}")

    if id(t) in seen_containers:
        refuse("is a tensor that appears twice in the reply", "return each tensor once (or a copy)")
    seen_containers.add(id(t))
    if t.layout != torch.strided or t.is_nested:
        layout = "nested" if t.is_nested else str(t.layout).replace("torch.", "")
        refuse(f"is a {layout} tensor", "return a dense tensor (.to_dense())")
    if t.device.type != "cpu":
        refuse(f"is a tensor on the {t.device.type} device", "return a CPU tensor")
    if t.is_quantized:
        refuse("is a quantized tensor", "return a dense float tensor (.dequantize())")
    if t.dtype not in budget.dtypes:
        expected = ", ".join(sorted(str(d).replace("torch.", "") for d in budget.dtypes))
        refuse(f"is a {str(t.dtype).replace('torch.', '')} tensor", f"return one of {expected}")
    if t.requires_grad or t.is_conj() or t.is_neg():
        refuse("is a tensor that requires grad, or carries a conjugate or negative flag",
               "return a plain tensor (.detach())")
    if t.__dict__:
        refuse("is a tensor with Python attributes set on it")
    if t.dim() > MAX_DIMS:
        refuse(f"is a tensor of {t.dim()} dimensions (at most {MAX_DIMS})")
    numel, size = t.numel(), t.element_size()
    shape, strides = tuple(t.shape), t.stride()
    if t.storage_offset() != 0:
        refuse(f"is a view at offset {t.storage_offset()} into a larger storage")
    if not t.is_contiguous():
        refuse(f"is a tensor of shape {shape} with strides {strides}, not contiguous (an expanded or "
               f"strided view)")
    storage = t.untyped_storage()
    if storage.nbytes() != numel * size:
        refuse(f"is a tensor of shape {shape} ({numel * size} bytes) whose storage holds "
               f"{storage.nbytes()} bytes")
    budget.bytes -= numel * size
    if budget.bytes < 0:
        refuse(f"is a tensor of shape {shape} that brings the reply above "
               f"{budget.max_total_bytes / 2**20:.0f} MiB", "return less data")
    if numel and storage._cdata in seen_storages:
        refuse("is a tensor that shares its storage with another tensor in the reply",
               "return separate tensors (.clone())")
    seen_storages.add(storage._cdata)


# -- messages ---------------------------------------------------------------------------------
def _path(root, link) -> str:
    keys = []
    while link is not None:
        link, key = link
        keys.append(f"[{key}]" if type(key) is int else f"[{_short(key, 40)}]")
    return root + "".join(reversed(keys))


def _short(value, limit: int = 60) -> str:
    """A bounded description of a worker value: never the repr of something unbounded."""
    if type(value) is str:
        text = value[:limit]
        quoted = '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
        return quoted + ("..." if len(value) > limit else "")
    if value is None or type(value) in (bool, float) or (type(value) is int and abs(value) < 10**18):
        return repr(value)
    return _kind(value)


def _kind(value) -> str:
    kind = type(value)
    if kind in (list, tuple, dict, str):
        return f"a {kind.__name__} of length {len(value)}"
    if kind is int:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, torch.Tensor):
        return f"a {kind.__module__}.{kind.__qualname__}" if kind is not torch.Tensor else "a tensor"
    if value is None:
        return "None"
    return f"a {kind.__module__}.{kind.__qualname__}"


def _refuse(where: str, why: str):
    from .worker_parent import SubmissionError  # here: worker_parent imports this module

    raise SubmissionError(f"{where} {why}", "bad-reply")


# -- printed output ---------------------------------------------------------------------------
class OutputDrain:
    """The worker's stdout and stderr through a pipe that a thread of the grader reads to the
    end, however much comes: the first and last ``keep`` bytes are kept for messages, the
    rest is counted and dropped. A file would fill up (RLIMIT_FSIZE: the worker got SIGXFSZ)
    and a pipe nobody read would block the worker. A second pipe carries the stack that
    faulthandler dumps just before a timeout, so output printed at the same moment neither
    interleaves with it nor pushes it out of what is kept.

    The worker gets ``output_w`` as stdout and stderr and ``dump_w`` (its number in
    ``COURSE_DUMP_FD``); call ``started()`` once it has them."""

    def __init__(self, keep: int = 8192, keep_dump: int = 16384):
        self.keep, self.keep_dump = keep, keep_dump
        self.head, self.tail, self.total = bytearray(), bytearray(), 0
        self.dump, self.dump_total = bytearray(), 0
        self._call, self._dump_mark = None, 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.output_r, self.output_w = os.pipe()
        self.dump_r, self.dump_w = os.pipe()
        self._thread = threading.Thread(target=self._drain, name="worker output", daemon=True)
        self._thread.start()

    def started(self):
        """The worker holds the write ends now: ours would keep the pipes open after it ends."""
        for name in ("output_w", "dump_w"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def _drain(self):
        open_fds = [self.output_r, self.dump_r]
        try:
            while open_fds and not self._stop.is_set():
                ready, _, _ = select.select(open_fds, [], [], 0.2)
                for fd in ready:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        open_fds.remove(fd)
                    elif fd == self.output_r:
                        self._keep_output(chunk)
                    else:
                        self._keep_dump(chunk)
        except OSError:
            pass
        finally:
            for fd in (self.output_r, self.dump_r):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _keep_output(self, chunk: bytes):
        with self._lock:
            self.total += len(chunk)
            room = self.keep - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            self.tail += chunk[-self.keep:]
            del self.tail[:-self.keep]

    def _keep_dump(self, chunk: bytes):
        with self._lock:
            self.dump_total += len(chunk)
            self.dump += chunk[-self.keep_dump:]
            del self.dump[:-self.keep_dump]

    def settle(self, timeout: float = 0.3):
        """Wait until what the worker wrote has been read: the pipes reached their end, or
        nothing new came for a moment (the worker, or a stray, is still writing)."""
        deadline = time.monotonic() + timeout
        last = -1
        while self._thread.is_alive() and time.monotonic() < deadline:
            with self._lock:
                now = self.total + self.dump_total
            if now == last:
                return
            last = now
            self._thread.join(0.05)

    def mark_call(self, call_id: int):
        """A new call began (its first frame is awaited): later dumps belong to it."""
        if call_id != self._call:
            with self._lock:
                self._call, self._dump_mark = call_id, self.dump_total

    def dump_since_call(self) -> str:
        """What the worker dumped into the dump pipe during the current call (as kept)."""
        with self._lock:
            new = min(self.dump_total - self._dump_mark, len(self.dump))
            return bytes(self.dump[len(self.dump) - new:]).decode("utf-8", "replace")

    def output(self) -> tuple[str, str, int]:
        """(the first ``keep`` bytes, the last ``keep`` bytes, how many came in all); the two
        overlap when less than twice ``keep`` came."""
        with self._lock:
            last = bytes(self.head + self.tail)[-self.keep:]
            return bytes(self.head).decode("utf-8", "replace"), last.decode("utf-8", "replace"), self.total

    def close(self):
        self.started()  # in case the worker never started
        self._stop.set()
        self._thread.join(1.0)
