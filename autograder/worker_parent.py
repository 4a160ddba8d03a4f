"""The parent side of the worker boundary, in the grader: start the worker
(``worker_child.py``, the only process that runs student code), send calls, survive whatever
it does.

``Worker.call(target, *args, **kwargs)`` returns the value the submission computed, or
raises ``SubmissionError`` with a message a student can act on: not implemented, an
exception (with the student's own traceback lines), a timeout, an exit, a crash, too much
memory or a malformed reply. After a timeout or a crash the worker process group is killed
and the next call starts a fresh one, so one bad function costs only its own tests.
"""
from __future__ import annotations

import inspect
import io
import os
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from .isolation import (LIMITS, MAX_PROCESSES, ROOT, IsolationPlan, UidLease, become_subreaper, drop_to, kill_strays,
                        own_children, remove_files_of, running_as_root, strays, unshare_network)
from . import intake as submission_intake
from .isolation import ipc_objects, remove_ipc_of, unshare_ipc
from .isolation import LIVE_WORKERS
from .replies import OutputDrain, validate

HERE = Path(__file__).resolve().parent
ADAPTERS = HERE / "adapters"  # copied into every worker's folder (see autograder/adapters/__init__.py)
GiB = 1 << 30
MiB = 1 << 20
# the adapters' parameters that name the student's class or function: a call's strikes and
# intake checks are per student name, not per adapter
STUDENT_NAME_PARAMETERS = ("cls", "target")


class Adapters:
    """The trusted worker-side helpers as methods with keyword arguments:
    ``worker.adapters.module_forward(cls="attention.MultiHeadAttention", init_kwargs=cfg, ...)``
    runs autograder/adapters/__init__.py's ``module_forward`` in the worker, and
    ``worker.adapters.gpt.forward(config=..., ...)`` autograder/adapters/gpt.py's ``forward``
    (the same as ``worker.call("@module_forward", ...)`` / ``worker.call("@gpt.forward", ...)``).
    The arguments are checked against the helper's signature here, in the grader, so a
    suite's mistake is a grader error, not a failed test; ``timeout=`` is the worker call's."""

    def __init__(self, worker: "Worker", module: str = ""):
        self._worker, self._module = worker, module

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if not self._module and (ADAPTERS / f"{name}.py").is_file():
            return Adapters(self._worker, name)
        target = f"@{self._module}.{name}" if self._module else f"@{name}"
        function = _adapter_function(self._module, name)

        def call(*args, timeout: float | None = None, **kwargs):
            if function is not None:
                inspect.signature(function).bind(None, *args, **kwargs)  # None: the worker's Submission
            return self._worker.call(target, *args, timeout=timeout, **kwargs)

        call.__name__ = call.__qualname__ = name
        call.target = target  # what call_clean / call_with_memory_budget send, given this helper
        call.__doc__ = getattr(function, "__doc__", None)
        return call

    def __dir__(self):
        if self._module:
            return sorted(n for n in vars(_adapter_module(self._module)) if not n.startswith("_"))
        return sorted([p.stem for p in ADAPTERS.glob("[!_]*.py")] + [n for n in vars(_adapter_module("")) if not n.startswith("_")])


def _adapter_module(module: str):
    import importlib

    return importlib.import_module(f"{__package__}.adapters" + (f".{module}" if module else ""))


def _adapter_function(module: str, name: str):
    """The helper itself, imported here only to check a call's arguments (None if it cannot
    be imported in the grader, e.g. it needs a library only the worker has)."""
    try:
        function = getattr(_adapter_module(module), name)
    except (ImportError, AttributeError) as exc:
        if isinstance(exc, AttributeError):
            raise AttributeError(f"autograder/adapters/{module or '__init__'}.py has no helper {name!r}") from None
        return None
    return function if callable(function) else None


class SubmissionError(Exception):
    """A call into the submission did not produce a value. ``kind`` says why."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # not-implemented | missing | exception | timeout | crash | memory | bad-reply | background


class Worker:
    def __init__(self, submission: str | os.PathLike, *, timeout: float = LIMITS.timeout_s,
                 startup_timeout: float = LIMITS.startup_timeout_s,
                 memory_bytes: int = int(LIMITS.memory_gib * GiB),
                 max_reply_bytes: int = LIMITS.max_reply_mib * MiB, output_bytes: int = LIMITS.output_mib * MiB,
                 cpu_seconds: int = LIMITS.cpu_seconds, max_strikes_per_target: int = LIMITS.max_strikes_per_target,
                 drop_privileges: bool | None = None):
        # as the user named it (for reports): resolving it would follow a link to the solutions
        self.submission = Path(submission)
        # what the worker imports is staged once, by the intake rules, into a folder private to
        # the grader: links to elsewhere, FIFOs, devices and oversized files never get that far
        self.staging = tempfile.mkdtemp(prefix="course-intake-")  # mode 700
        self.staged = os.path.join(self.staging, "submission")
        try:
            self.intake = submission_intake.stage_submission(self.submission, self.staged)
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self.memory_bytes = memory_bytes
        self.max_reply_bytes = max_reply_bytes
        self.output_bytes = output_bytes
        self.cpu_seconds = cpu_seconds
        self.max_strikes_per_target = max_strikes_per_target
        self.proc: subprocess.Popen | None = None
        self.workdir: str | None = None
        self.imported: set[str] = set()
        self.broken_modules: dict[str, str] = {}  # an import that failed fails the same way again
        # target -> (times it hung or crashed the worker, reason, last message): a target
        # that did so twice is not run again, so a broken function costs bounded time
        self.strikes: dict[str, tuple[int, str, str]] = {}
        self.current_key = ""
        # (file, function) where timed-out calls were stuck -> (how often, last line): the
        # worker fails later calls into such a function at once (worker.hang_guard)
        self.hung: dict[tuple[str, str], tuple[int, int]] = {}

        self.restarts = 0
        self.adapters = Adapters(self)  # worker.adapters.module_forward(cls=..., ...)
        self.clean: Worker | None = None  # see call_clean
        self.capped: dict[tuple[str, int], Worker] = {}  # see call_with_memory_budget
        self._next_id = 0
        # as root the worker drops to a pool uid; False keeps it as the grader's user
        self.drop_privileges = running_as_root() if drop_privileges is None else drop_privileges
        self.lease: UidLease | None = None
        self.plan: IsolationPlan | None = None
        self.log = None
        self.children_before: dict[int, int | None] = {}  # see isolation.strays

    # -- process management -------------------------------------------------------------
    def _limits(self):
        # runs in the child between fork and exec, root-only steps first; a limit the system
        # refuses (macOS has no working RLIMIT_AS) is skipped rather than stopping the grader
        plan = self.plan
        # an empty network namespace (no interface but a down loopback) and an IPC namespace
        # whose shared memory, semaphores and message queues end with the worker
        if plan.network and not (plan.ipc and unshare_network(ipc=True)):
            unshare_network()
        elif plan.ipc and not plan.network:
            unshare_ipc()
        limits = [(resource.RLIMIT_AS, (self.memory_bytes,) * 2),
                  (resource.RLIMIT_FSIZE, (self.output_bytes,) * 2),
                  (resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + 5)),
                  (resource.RLIMIT_CORE, (0, 0))]
        if plan.uid is not None:  # counted per uid, threads included; root is exempt
            limits.append((resource.RLIMIT_NPROC, (MAX_PROCESSES,) * 2))
        for limit, value in limits:
            try:
                resource.setrlimit(limit, value)
            except (ValueError, OSError):
                pass
        if plan.uid is not None:
            drop_to(plan.uid)

    def _environment(self) -> dict:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": self.workdir,
            "TMPDIR": self.workdir,
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            # one thread: on 2 cores, parallel workers with default threads run 80x slower
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        }
        if isinstance(self.log, OutputDrain) and self.log.dump_w is not None:
            env["COURSE_DUMP_FD"] = str(self.log.dump_w)  # where faulthandler's stack goes (worker_child.py)
        # big allocations straight from mmap and back to the system when freed, so the
        # peak-memory checks (VmHWM) see every large tensor
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        # without a GPU, Triton kernels run in Triton's interpreter
        if not torch.cuda.is_available():
            env["TRITON_INTERPRET"] = "1"
        # OpenBLAS needs these on some processors to compute correctly
        for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "TRITON_INTERPRET"):
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    def _decide_isolation(self):
        if self.plan is None:
            if self.drop_privileges and self.lease is None:
                self.lease = UidLease()
            # the originals of the submission, and (as root) the course itself: private
            self.plan = IsolationPlan.decide(self.lease, protect=[ROOT, self.submission])

    def isolation(self) -> dict:
        """What protects the grade here, and what this system could not give (for the report);
        decided now if the worker has not started yet."""
        self._decide_isolation()
        return {
            "separate process": "student code runs only in the worker; replies load with weights_only=True",
            "resource limits": f"address space {self.memory_bytes / GiB:.1f} GiB, CPU time, file size, "
                               f"no core dumps; per-call timeouts",
            "files": "the worker runs from a private temporary folder with a copy of the submission",
            **self.plan.summary(),
        }

    def start(self):
        self._stop()
        self._decide_isolation()
        plan = self.plan
        self.workdir = tempfile.mkdtemp(prefix="course-worker-")
        shutil.copy(HERE / "worker_child.py", self.workdir)
        shutil.copytree(HERE / "adapters", os.path.join(self.workdir, "adapters"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # the worker imports a copy: whatever the code does to its own files ends with this worker
        # from the staged folder, which holds regular files and folders only (symlinks=True
        # would keep a link a link, should one ever get there)
        copy = shutil.copytree(self.staged, os.path.join(self.workdir, "submission"), symlinks=True,
                               ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
        if plan.uid is not None:  # the worker's own folder, and nothing else, belongs to its uid
            for folder, dirs, files in os.walk(self.workdir):
                for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
                    os.lchown(name, plan.uid, plan.uid)
        # output goes to a pipe the grader drains, keeping its first and last KiB: printing,
        # however much, never fails a call (a file would hit RLIMIT_FSIZE), and the worker
        # has no name to find it by
        self.log = OutputDrain()
        self.children_before = own_children() if plan.reaping else {}
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        self.proc = subprocess.Popen(
            [plan.python, "-I", os.path.join(self.workdir, "worker_child.py"),
             str(req_r), str(resp_w), str(copy), *plan.site_dirs],
            pass_fds=(req_r, resp_w, self.log.dump_w), stdin=subprocess.DEVNULL, stdout=self.log.output_w,
            stderr=subprocess.STDOUT, cwd=self.workdir, env=self._environment(),
            start_new_session=True, preexec_fn=self._limits)
        self.log.started()
        LIVE_WORKERS.add(self.proc.pid)
        os.close(req_r)
        os.close(resp_w)
        self.req_w, self.resp_r = req_w, resp_r
        self.imported = set()
        self.phase = "while starting"
        deadline = time.monotonic() + self.startup_timeout
        frame = self._read_frame(deadline, what="start")
        if frame.get("event") != "ready":
            self._die("bad-reply", "the worker did not start properly")

    def _stop(self):
        """End the worker, everything it started, and the files it left."""
        if self.proc is not None:
            self._kill()
        if self.plan is not None and self.plan.uid is not None:
            remove_files_of(self.plan.uid)
        if self.plan is not None:
            # System V objects and POSIX queues left in the grader's IPC namespace (as root the
            # worker's own namespace ended with it): all of the pool uid's; of the grader's own
            # user only those that did not exist when the worker started
            before = getattr(self, "_ipc_before", None)
            if self.plan.uid is not None:
                remove_ipc_of(self.plan.uid)
            elif before is not None:
                remove_ipc_of(os.geteuid(), before)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        if self.log is not None:
            self.log.close()
            self.log = None
        self._ipc_before = ipc_objects()  # a worker may start next: what exists now is not its doing

    def close(self):
        if self.clean is not None:
            self.clean.close()
            self.clean = None
        for capped in self.capped.values():
            self.restarts += capped.restarts
            capped.close()
        self.capped = {}
        self._stop()
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        if self.plan is not None and self.plan.reaping:
            become_subreaper(False)
        self.plan = None
        if self.staging:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def source_path(self, module: str) -> Path | None:
        """The staged file ``<module>.py`` (what the worker imports), or None when intake did
        not take it; for static checks of the source, which must not read the original."""
        parts = module.split(".")
        if not self.staging or not all(part.isidentifier() for part in parts):
            return None
        path = Path(self.staged, *parts[:-1], parts[-1] + ".py")
        return path if path.is_file() and not path.is_symlink() else None

    def _kill(self):
        proc = self.proc
        self.proc = None
        for fd in (getattr(self, "req_w", None), getattr(self, "resp_r", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.req_w = self.resp_r = None
        if proc is None:
            return None
        LIVE_WORKERS.discard(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: children it spawned too
        except (ProcessLookupError, PermissionError):
            pass
        try:
            status = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            status = None
        # and whatever left the group: orphans we adopted, anything of the worker's uid
        kill_strays(proc.pid, self.plan.uid, self.plan.reaping, before=self.children_before)
        return status

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- frames ---------------------------------------------------------------------------
    def _read_exact(self, n: int, deadline: float, what: str) -> bytes:
        chunks = []
        while n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.resp_r], [], [], remaining)[0]:
                self._timed_out(what)
            chunk = os.read(self.resp_r, min(n, 1 << 20))
            if not chunk:
                self._crashed()
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _read_frame(self, deadline: float, what: str) -> dict:
        if self.log is not None:
            self.log.mark_call(self._next_id)  # a stack dumped from now on belongs to this call
        while True:
            (length,) = struct.unpack(">Q", self._read_exact(8, deadline, what))
            if length > self.max_reply_bytes:
                self._die("bad-reply", f"{self.phase}: the reply is {length / MiB:.0f} MiB, more than "
                          f"the {self.max_reply_bytes / MiB:.0f} MiB a reply may hold (a huge tensor?)")
            payload = self._read_exact(length, deadline, what)
            try:
                frame = torch.load(io.BytesIO(payload), weights_only=True)
            except Exception as exc:  # a rigged object, a tensor subclass, garbage bytes
                first = (str(exc)[:1000].splitlines() or [""])[0][:200]
                self._die("bad-reply", f"{self.phase}: the reply could not be read as plain tensors "
                          f"({type(exc).__name__}: {first})")
            # student code can write frames of its own to the reply pipe: nothing of a frame is
            # used before it is known to be what the protocol sends, with plain values in it
            try:
                validate(frame, max_total_bytes=self.max_reply_bytes)
            except SubmissionError as exc:
                self._die("bad-reply", f"{self.phase}: the reply was refused: {exc}")
            # a reply to an earlier call: that call took a frame the submission wrote itself, and
            # this is the worker's own, late; the earlier call is decided, so it is dropped
            if what != "start" and "id" in frame and frame["id"] < self._next_id:
                continue
            return frame

    # -- failures -------------------------------------------------------------------------
    def _output_tail(self, lines: int = 8, width: int = 200) -> str:
        """The last lines the worker printed (each cut to ``width``), and, when the output was
        longer than what the drain keeps, its first lines and how much came in all."""
        if self.log is None:
            return ""
        self.log.settle()
        head, tail, total = self.log.output()

        def shown(text, pick):
            kept = [line for line in text.splitlines() if line.strip()]
            return [line[:width] + (" ..." if len(line) > width else "") for line in pick(kept)]

        last = shown(tail, lambda kept: kept[-lines:])
        if not last:
            return ""
        if total <= len(head.encode()) + self.log.keep:  # all of it was kept
            return "\nlast output:\n  " + "\n  ".join(last)
        first = shown(head, lambda kept: kept[:3])
        return ("\nfirst output:\n  " + "\n  ".join(first) +
                f"\n  ... ({total / MiB:.1f} MiB printed in all) ...\nlast output:\n  " + "\n  ".join(last))

    def _stuck_frame(self) -> tuple[str, str, int] | None:
        """(file, function, line): the submission's innermost frame in the stack the worker
        dumped just before the timeout, if it did."""
        if self.log is None:
            return None
        deadline = time.monotonic() + 0.5  # the dump is due 10% before the grader's deadline
        while time.monotonic() < deadline:
            text = self.log.dump_since_call()  # its own pipe: printed output cannot bury it
            if "most recent call first" in text:
                dump = text[text.rindex("most recent call first"):]
                found = re.search(r'File "[^"]*/submission/([^"]+)", line (\d+) in (\S+)', dump)
                return (found[1], found[3], int(found[2])) if found else None
            time.sleep(0.05)
        return None

    def _die(self, kind: str, message: str):
        self._kill()
        self.restarts += 1
        raise SubmissionError(message, kind)

    def _strike(self, reason: str, message: str):
        if self.current_key:
            count = self.strikes.get(self.current_key, (0, "", ""))[0]
            self.strikes[self.current_key] = (count + 1, reason, message)

    def _timed_out(self, what: str):
        if what == "start":
            self._die("timeout", f"the worker did not start within {self.startup_timeout:.0f} s")
        if self.phase.startswith("while importing"):
            self.broken_modules[self.phase_module] = f"timed out {self.phase}"
        message = f"timed out after {self.current_timeout:g} s {self.phase} (an endless loop, or far too slow?)"
        stuck = self._stuck_frame()
        if stuck:
            file, function, line = stuck
            message += f"; it was at {file} line {line}, in {function}"
            count = self.hung.get((file, function), (0, 0))[0]  # a loop's line varies: count by function
            self.hung[(file, function)] = (count + 1, line)
        if not self.phase.startswith("while importing"):
            self._strike("timed out", message)
        self._die("timeout", message)

    def _crashed(self):
        output = self._output_tail()
        status = self._kill()
        self.restarts += 1
        if self.phase == "while starting":  # no student code has run yet: the grader's own setup
            raise SubmissionError(f"grader error: the worker could not start (exit status {status}); "
                                  f"please report it to the course staff{output}", "crash")
        if status is None:
            how = "closed its connection"
        elif status == 0:
            how = "exited with status 0 (does the code call os._exit(), sys.exit() or exit()?)"
        elif status > 0:
            how = f"exited with status {status} (does the code call os._exit() or exit()?)"
        else:
            sig = signal.Signals(-status).name
            how = {"SIGKILL": f"was killed (SIGKILL): most likely it ran out of memory "
                              f"(limit {self.memory_bytes / GiB:.1f} GiB)",
                   "SIGXCPU": f"used up its CPU time limit ({self.cpu_seconds} s)",
                   "SIGSEGV": "crashed with a segmentation fault",
                   # printed output goes to a pipe (no limit): this is a file the code wrote
                   "SIGXFSZ": f"wrote a file larger than the {self.output_bytes / MiB:.0f} MiB files may hold"
                   }.get(sig, f"was killed by {sig}")
        message = f"the worker process {how} {self.phase}"
        if self.phase.startswith("while importing"):
            self.broken_modules[self.phase_module] = message
        else:
            self._strike("crashed the worker", message)
        raise SubmissionError(message + output, "crash")

    # -- calls ----------------------------------------------------------------------------
    def call(self, target: str, /, *args, timeout: float | None = None, **kwargs):
        """Run ``target`` in the worker and return its value (tensors and containers)."""
        # an adapter names the student's class or function as its first string argument, or
        # as its cls= / target= keyword
        names = [target] if not target.startswith("@") else (
            [a for a in args if isinstance(a, str)]
            + [v for k, v in kwargs.items() if k in STUDENT_NAME_PARAMETERS and isinstance(v, str)])[:1]
        key = self.current_key = " ".join([target, *names])
        count, reason, last = self.strikes.get(key, (0, "", ""))
        if count >= self.max_strikes_per_target:
            raise SubmissionError(f"not run: {self._name(target)} already {reason} {count} times "
                                  f"in earlier tests; last time: {last}",
                                  {"timed out": "timeout", "crashed the worker": "crash"}.get(reason, "background"))
        for name in (n.split(".")[0] for n in names):
            refused = self.intake.reason(name)  # not taken at intake: say why, not "no file"
            if refused:
                raise SubmissionError(refused, "refused")
            if name in self.broken_modules:
                raise SubmissionError(f"{name}.py could not be imported earlier: "
                                      f"{self.broken_modules[name]}", "crash")
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.current_timeout = timeout or self.timeout
        self._next_id += 1
        hung = [{"file": file, "function": function, "line": line,
                 "message": f"{file} line {line}, in {function}, already timed out {count} times"}
                for (file, function), (count, line) in self.hung.items() if count >= self.max_strikes_per_target]
        request = {"id": self._next_id, "target": target, "args": list(args), "kwargs": kwargs,
                   "max_bytes": self.max_reply_bytes, "timeout": self.current_timeout, "hung": hung}
        buf = io.BytesIO()
        torch.save(request, buf)
        data = buf.getvalue()
        self.phase = running = f"before {self._name(target)} ran"
        try:
            os.write(self.req_w, struct.pack(">Q", len(data)))
            view = memoryview(data)
            while view:
                view = view[os.write(self.req_w, view):]
        except BrokenPipeError:
            self._crashed()
        deadline = time.monotonic() + self.current_timeout
        while True:
            frame = self._read_frame(deadline, what=key)
            event = frame.get("event")
            if event == "importing":
                self.phase_module = str(frame.get("module"))
                self.phase = f"while importing {self.phase_module}.py"
            elif event == "imported":
                self.phase = running  # adapters import after "calling": back to where we were
            elif event == "calling":
                self.phase = running = f"in {self._name(target)}"
            elif frame.get("id") == self._next_id:
                break
            else:
                self._die("bad-reply", f"{self.phase}: an unexpected reply came back")
        self._check_background(frame.get("threads"))
        if frame.get("ok") is True:
            return frame.get("value")
        raise self._error(target, frame.get("error") or {})

    def _check_background(self, threads):
        """A call must leave nothing running: a process or thread that outlives it could
        change values after they are checked, or slow down the next tests."""
        found = strays(self.proc.pid, self.plan.uid, self.plan.reaping, self.children_before)
        if found:
            names = ", ".join(sorted(found.values())[:3])  # no pids: the same report every time
            what = f"{len(found)} background process{'es' if len(found) > 1 else ''} ({names})"
        elif isinstance(threads, list) and threads:
            what = f"{len(threads)} thread{'s' if len(threads) > 1 else ''} ({', '.join(map(str, threads[:3]))})"
        else:
            return
        self._strike("left processes or threads running", what)
        self._die("background", f"{self.phase} left {what} running after the call returned; the grader "
                  f"stopped everything and restarted the worker. Exercise code may not leave processes or "
                  f"threads running")

    def _name(self, target: str) -> str:
        return f"the grader's {target[1:]} helper" if target.startswith("@") else target

    def _error(self, target: str, error: dict) -> SubmissionError:
        # replies.validate has checked the types; the lengths are capped here too, whatever
        # the worker (or code that wrote its own frame) sent
        kind, message = str(error.get("type", "Exception"))[:200], str(error.get("message", ""))[:2000]
        where = self.phase
        trace = str(error.get("traceback", ""))[-4000:].rstrip()
        trace = ("\n" + trace) if trace else ""
        if where.startswith("while importing"):
            text = f"{kind} {where}: {message}"
            self.broken_modules[self.phase_module] = text
            return SubmissionError(text + trace, "exception")
        if kind == "NotImplementedError":
            return SubmissionError(f"not implemented: {message or 'NotImplementedError'}", "not-implemented")
        if kind == "HungEarlier":
            return SubmissionError(f"not run: {self._name(target)} reached {message} in earlier tests",
                                   "timeout")
        if kind == "MissingName":
            return SubmissionError(f"missing: {message}", "missing")
        if kind == "MemoryError" or "can't allocate memory" in message or "out of memory" in message:
            return SubmissionError(f"ran out of memory {where} (the limit is "
                                   f"{self.memory_bytes / GiB:.1f} GiB): {message[:300]}", "memory")
        return SubmissionError(f"{kind} {where}: {message}{trace}", "exception")

    # -- memory, capped from outside ------------------------------------------------------
    def call_with_memory_budget(self, warm_up, target, /, *args, budget_bytes: int,
                                timeout: float | None = None, **kwargs):
        """``target`` in a sibling worker whose address space the grader caps from outside
        (``warm_up`` and ``target``: helpers, ``worker.adapters.flash_attention.warm_up``).

        A sibling worker (its own pool uid, the same limits otherwise) starts and runs
        ``warm_up`` (trusted adapter code that imports none of the submission but pages in the
        library code the target will use); the grader then
        reads the worker's size from /proc and has the worker lower its own hard RLIMIT_AS
        to that size plus ``budget_bytes`` while still no submission code has run in it (a
        container's root often lacks CAP_SYS_RESOURCE, so prlimit on another uid fails). The
        grader reads the limit back from /proc before going on. The kernel enforces it on
        the worker and on every process it starts, and without CAP_SYS_RESOURCE a hard limit
        cannot be raised again, so nothing the submission does to itself changes the verdict.
        This worker, with its usual limits, is not touched (so grading goes on without paying
        for a restart of it). The capped sibling serves the next call with the same warm-up and
        budget when this one returned a value (the full and causal cases of one test share it);
        any failure ends it, and it ends with this worker.
        """
        warm_up, target = _target_of(warm_up), _target_of(target)
        key = (warm_up, budget_bytes)
        capped = self.capped.pop(key, None)
        if capped is not None and (capped.proc is None or capped.proc.poll() is not None):
            self.restarts += capped.restarts
            capped.close()
            capped = None
        if capped is None:
            capped = self._sibling()
            try:
                capped.call(warm_up, timeout=timeout)
                limit = vm_size_bytes(capped.proc.pid) + budget_bytes
                capped.call("@limit_address_space", limit, timeout=timeout)
                if address_space_limit(capped.proc.pid) != limit:
                    raise SubmissionError("grader error: the worker's memory cap could not be set; please "
                                          "report it to the course staff", "crash")
            except BaseException:
                self.restarts += capped.restarts
                capped.close()
                raise
        try:
            value = capped.call(target, *args, timeout=timeout, **kwargs)
        except BaseException:
            self.restarts += capped.restarts
            capped.close()
            raise
        # kept for the next call with the same warm-up and budget (the same cap): what this
        # call left in memory counts against it, as the import did against this one. Only a
        # worker that answered is kept: one that crashed would restart without its cap
        self.capped[key] = capped
        return value

    def _sibling(self) -> "Worker":
        """Another worker for the same submission, with this one's limits and isolation."""
        return Worker(self.submission, timeout=self.timeout, startup_timeout=self.startup_timeout,
                      memory_bytes=self.memory_bytes, max_reply_bytes=self.max_reply_bytes,
                      output_bytes=self.output_bytes, cpu_seconds=self.cpu_seconds,
                      max_strikes_per_target=self.max_strikes_per_target, drop_privileges=self.drop_privileges)

    def call_clean(self, target, /, *args, timeout: float | None = None, **kwargs):
        """``target`` (a helper, ``worker.adapters.flash_attention_triton.triton_replay``) in a
        second worker that never imports the submission (for adapters that must not share a
        process with code the submission ran): started on first use, with the same limits and
        isolation, and closed with this one."""
        if self.clean is None:
            self.clean = self._sibling()
        return self.clean.call(_target_of(target), *args, timeout=timeout, **kwargs)


def _target_of(helper) -> str:
    """The wire name of a helper given as ``worker.adapters.x.y``; a string is a wire name
    already ("@x.y", or "module.function" of the submission)."""
    target = getattr(helper, "target", helper)
    if not isinstance(target, str):
        raise TypeError(f"expected a helper such as worker.adapters.flash_attention.warm_up, got {helper!r}")
    return target


def vm_size_bytes(pid: int) -> int:
    """The address space a process holds (VmSize), read by the grader from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmSize")


def address_space_limit(pid: int) -> int | None:
    """The hard RLIMIT_AS of a process, read by the grader from /proc (None: unlimited)."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max address space"):
                hard = line.split()[4]
                return None if hard == "unlimited" else int(hard)
    return None
