"""The grader's side of the worker: start it, send calls, survive whatever it does.

``Worker.call(target, *args, **kwargs)`` returns the value the submission computed, or
raises ``SubmissionError`` with a message a student can act on: not implemented, an
exception (with the student's own traceback lines), a timeout, an exit, a crash, too much
memory or a malformed reply. After a timeout or a crash the worker process group is killed
and the next call starts a fresh one, so one bad function costs only its own tests.
"""
from __future__ import annotations

import io
import os
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
GiB = 1 << 30
MiB = 1 << 20


class SubmissionError(Exception):
    """A call into the submission did not produce a value. ``kind`` says why."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # not-implemented | missing | exception | timeout | crash | memory | bad-reply


CLONE_NEWNET = 0x40000000
_NETWORK_PROBE: list[bool] = []


def _unshare_network() -> bool:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) == 0
    except (OSError, AttributeError):
        return False


def network_namespace_available() -> bool:
    """Whether this system lets the worker start in its own network namespace (root, or
    unprivileged user namespaces), probed once in a throwaway child process."""
    if not _NETWORK_PROBE:
        if not sys.platform.startswith("linux"):
            _NETWORK_PROBE.append(False)
        else:
            pid = os.fork()
            if pid == 0:  # the probe: never returns into the grader's code
                os._exit(0 if _unshare_network() else 1)
            _, status = os.waitpid(pid, 0)
            _NETWORK_PROBE.append(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
    return _NETWORK_PROBE[0]


def isolation_summary(memory_bytes: int) -> dict:
    """What protects the grade on this system, and what is unavailable here (reported)."""
    root = os.geteuid() == 0
    return {
        "separate process": "student code runs only in the worker; replies load with weights_only=True",
        "resource limits": f"address space {memory_bytes / GiB:.1f} GiB, CPU time, file size, no core dumps; "
                           f"per-call timeouts; the whole process group is killed",
        "network": ("own empty network namespace" if network_namespace_available()
                    else "unavailable on this system: the worker shares the grader's network"),
        "files": ("worker runs from a private temporary folder with a copy of the submission; "
                  + ("it runs as root here: dropping to an unprivileged user is not implemented yet, "
                     "so course files are readable by path" if root else
                     "it runs as the grader's own user: files that user can read are readable by path")),
    }


class Worker:
    def __init__(self, submission: str | os.PathLike, *, timeout: float = 20.0,
                 startup_timeout: float = 120.0, memory_bytes: int = 6 * GiB,
                 max_reply_bytes: int = 256 * MiB, output_bytes: int = 16 * MiB,
                 cpu_seconds: int = 1800, max_strikes_per_target: int = 2):
        self.submission = Path(submission).resolve()
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

        self.restarts = 0
        self._next_id = 0

    # -- process management -------------------------------------------------------------
    def _limits(self):
        # runs in the child between fork and exec; a limit the system refuses (macOS has no
        # working RLIMIT_AS) is skipped rather than stopping the grader
        if network_namespace_available():
            _unshare_network()  # an empty network namespace: no interface but a down loopback
        for limit, value in [(resource.RLIMIT_AS, (self.memory_bytes,) * 2),
                             (resource.RLIMIT_FSIZE, (self.output_bytes,) * 2),
                             (resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + 5)),
                             (resource.RLIMIT_CORE, (0, 0))]:
            try:
                resource.setrlimit(limit, value)
            except (ValueError, OSError):
                pass

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

    def start(self):
        self.close()
        self.workdir = tempfile.mkdtemp(prefix="course-worker-")
        for name in ("worker.py", "adapters.py"):
            shutil.copy(HERE / name, self.workdir)
        # the worker imports a copy: whatever the code does to its own files ends with this worker
        copy = shutil.copytree(self.submission, os.path.join(self.workdir, "submission"),
                               ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
        self.log_path = os.path.join(self.workdir, "output.log")
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", os.path.join(self.workdir, "worker.py"),
                 str(req_r), str(resp_w), str(copy)],
                pass_fds=(req_r, resp_w), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.workdir, env=self._environment(),
                start_new_session=True, preexec_fn=self._limits)
        os.close(req_r)
        os.close(resp_w)
        self.req_w, self.resp_r = req_w, resp_r
        self.imported = set()
        self.phase = "while starting"
        deadline = time.monotonic() + self.startup_timeout
        frame = self._read_frame(deadline, what="start")
        if frame.get("event") != "ready":
            self._die("bad-reply", "the worker did not start properly")

    def close(self):
        if self.proc is not None:
            self._kill()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

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
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: children it spawned too
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None

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
        (length,) = struct.unpack(">Q", self._read_exact(8, deadline, what))
        if length > self.max_reply_bytes:
            self._die("bad-reply", f"{self.phase}: the reply is {length / MiB:.0f} MiB, more than "
                      f"the {self.max_reply_bytes / MiB:.0f} MiB a reply may hold (a huge tensor?)")
        payload = self._read_exact(length, deadline, what)
        try:
            frame = torch.load(io.BytesIO(payload), weights_only=True)
        except Exception as exc:  # a rigged object, a tensor subclass, garbage bytes
            self._die("bad-reply", f"{self.phase}: the reply could not be read as plain tensors "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        if not isinstance(frame, dict):
            self._die("bad-reply", f"{self.phase}: a malformed reply came back")
        return frame

    # -- failures -------------------------------------------------------------------------
    def _output_tail(self, lines: int = 8) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4000))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return ("\nlast output:\n  " + "\n  ".join(tail)) if tail else ""

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
        message = (f"timed out after {self.current_timeout:g} s {self.phase} "
                   f"(an endless loop, or far too slow?)")
        if not self.phase.startswith("while importing"):
            self._strike("timed out", message)
        self._die("timeout", message)

    def _crashed(self):
        output = self._output_tail()
        status = self._kill()
        self.restarts += 1
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
                   "SIGXFSZ": f"wrote more than {self.output_bytes / MiB:.0f} MiB of output"
                   }.get(sig, f"was killed by {sig}")
        message = f"the worker process {how} {self.phase}"
        if self.phase.startswith("while importing"):
            self.broken_modules[self.phase_module] = message
        else:
            self._strike("crashed the worker", message)
        raise SubmissionError(message + output, "crash")

    # -- calls ----------------------------------------------------------------------------
    def call(self, target: str, *args, timeout: float | None = None, **kwargs):
        """Run ``target`` in the worker and return its value (tensors and containers)."""
        # an adapter names the student's class or function as its first string argument
        names = [target] if not target.startswith("@") else [a for a in args if isinstance(a, str)][:1]
        key = self.current_key = " ".join([target, *names])
        count, reason, last = self.strikes.get(key, (0, "", ""))
        if count >= self.max_strikes_per_target:
            raise SubmissionError(f"not run: {self._name(target)} already {reason} {count} times "
                                  f"in earlier tests; last time: {last}",
                                  "timeout" if reason == "timed out" else "crash")
        for name in (n.split(".")[0] for n in names):
            if name in self.broken_modules:
                raise SubmissionError(f"{name}.py could not be imported earlier: "
                                      f"{self.broken_modules[name]}", "crash")
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.current_timeout = timeout or self.timeout
        self._next_id += 1
        request = {"id": self._next_id, "target": target, "args": list(args), "kwargs": kwargs}
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
        if frame.get("ok") is True:
            return frame.get("value")
        raise self._error(target, frame.get("error") or {})

    def _name(self, target: str) -> str:
        return f"the grader's {target[1:]} helper" if target.startswith("@") else target

    def _error(self, target: str, error: dict) -> SubmissionError:
        kind, message = str(error.get("type", "Exception")), str(error.get("message", ""))
        where = self.phase
        trace = str(error.get("traceback", "")).rstrip()
        trace = ("\n" + trace) if trace else ""
        if where.startswith("while importing"):
            text = f"{kind} {where}: {message}"
            self.broken_modules[self.phase_module] = text
            return SubmissionError(text + trace, "exception")
        if kind == "NotImplementedError":
            return SubmissionError(f"not implemented: {message or 'NotImplementedError'}", "not-implemented")
        if kind == "MissingName":
            return SubmissionError(f"missing: {message}", "missing")
        if kind == "MemoryError" or "can't allocate memory" in message or "out of memory" in message:
            return SubmissionError(f"ran out of memory {where} (the limit is "
                                   f"{self.memory_bytes / GiB:.1f} GiB): {message[:300]}", "memory")
        return SubmissionError(f"{kind} {where}: {message}{trace}", "exception")
