"""Operating-system protections around the worker, each used where the system allows it.

- An empty network namespace (root, or unprivileged user namespaces), and as root an IPC
  namespace of its own: System V shared memory, semaphores and message queues and POSIX
  message queues the worker creates die with it. Everywhere, when a worker ends, the
  System V objects and POSIX message queues its uid created are removed (as the grader's
  own user: only those created while the worker ran), so no later submission finds them.
- When the grader runs as root (Gradescope, a container, CI): the worker runs as a
  dedicated unprivileged uid taken from a pool (one uid per live worker, locked), the
  course's files and the submission's originals are made private to their owner, and at
  the end every process of that uid is killed and the files it left in the shared
  temporary folders are removed. ``RLIMIT_NPROC`` applies (it does not bind root).
- Everywhere on Linux: the grader becomes a child subreaper, so a process that escapes
  the worker's process group (``setsid`` plus a double fork) is reparented to the grader,
  seen and killed.

``IsolationPlan.summary()`` says what was active; the report carries it.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import pwd
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class WorkerLimits:
    """The worker's limits, each default with its reason: the one place they are set (the
    command line's --timeout and --memory-gib, Gradescope's run and runner.grade default to
    these; here, in a module without torch, so that the command line starts fast)."""
    timeout_s: float = 20.0  # per call; the reference's whole course grades in about 22 s (README)
    startup_timeout_s: float = 120.0  # importing torch in a cold container, as an unprivileged uid
    memory_gib: float = 6.0  # stops runaway allocations; the memory tests set their own, tighter caps
    max_reply_mib: int = 256  # a reply is a few tensors; this stops a flood before it is read
    output_mib: int = 16  # the largest file the worker may write (RLIMIT_FSIZE)
    cpu_seconds: int = 1800  # one worker may serve a whole course's suites: minutes, not seconds
    max_strikes_per_target: int = 2  # a function that hung or crashed twice is not run again


LIMITS = WorkerLimits()

ROOT = Path(__file__).resolve().parent.parent
CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
IPC_RMID = 0
SYSV_IPC = ("shm", "sem", "msg")  # /proc/sysvipc/<kind>: the objects of the grader's IPC namespace
MQUEUE = "/dev/mqueue"  # POSIX message queues, where that file system is mounted
PR_SET_CHILD_SUBREAPER = 36
UID_POOL = range(61000, 61064)  # above the usual ranges for people and system services


def uid_pool() -> range:
    """The uids this grader may lease: UID_POOL, or the part of it COURSE_UID_POOL names
    ("61000-61031"), so that graders that check what a uid left behind (the repository's
    tests in parallel workers) never lease a uid another one has just released."""
    spec = os.environ.get("COURSE_UID_POOL")
    if not spec:
        return UID_POOL
    low, _, high = spec.partition("-")
    pool = range(int(low), int(high) + 1)
    if not pool or pool.start < UID_POOL.start or pool.stop > UID_POOL.stop:
        raise ValueError(f"COURSE_UID_POOL={spec!r}: expected a range LOW-HIGH inside "
                         f"{UID_POOL.start}-{UID_POOL.stop - 1}")
    return pool
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # where any uid may leave files behind
MAX_PROCESSES = 64  # RLIMIT_NPROC for the pool uid, threads included: the worker runs 1-3

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_cache: dict[str, object] = {}


# -- namespaces -------------------------------------------------------------------------------
def unshare_network(ipc: bool = False) -> bool:
    """An empty network namespace for this process and, with ``ipc``, an IPC namespace too
    (one call: in the child, between fork and exec)."""
    return _unshare(CLONE_NEWNET | (CLONE_NEWIPC if ipc else 0))


def unshare_ipc() -> bool:
    return _unshare(CLONE_NEWIPC)


def _unshare(flags: int) -> bool:
    try:
        return _libc is not None and _libc.unshare(flags) == 0
    except (OSError, AttributeError):
        return False


def network_namespace_available() -> bool:
    return _probe("network", unshare_network)


def ipc_namespace_available() -> bool:
    return _probe("ipc", unshare_ipc)


def _probe(name: str, unshare) -> bool:
    """Probed once, in a throwaway child process that never returns into the grader's code."""
    if name not in _cache:
        if _libc is None:
            _cache[name] = False
        else:
            pid = os.fork()
            if pid == 0:
                os._exit(0 if unshare() else 1)
            _, status = os.waitpid(pid, 0)
            _cache[name] = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return bool(_cache[name])


# -- System V IPC and POSIX message queues ----------------------------------------------------
def ipc_objects() -> dict[tuple[str, int], tuple[int, int]]:
    """(kind, id) -> (owner uid, creator uid) for every System V object of the grader's IPC
    namespace, and ("mqueue", inode) -> (owner, owner) for POSIX message queues."""
    found = {}
    for kind in SYSV_IPC:
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                header, *rows = f.read().splitlines()
        except OSError:
            continue
        columns = header.split()
        for row in rows:
            fields = dict(zip(columns, row.split()))
            try:
                ident = int(fields[{"shm": "shmid", "sem": "semid", "msg": "msqid"}[kind]])
                found[(kind, ident)] = (int(fields["uid"]), int(fields["cuid"]))
            except (KeyError, ValueError):
                continue
    try:
        for entry in os.scandir(MQUEUE):
            info = entry.stat(follow_symlinks=False)
            found[("mqueue", info.st_ino)] = (info.st_uid, info.st_uid)
    except OSError:
        pass
    return found


def remove_ipc_of(uid: int, before: dict | None = None) -> list[str]:
    """Remove the System V objects and POSIX message queues that ``uid`` owns or created;
    with ``before`` (an ``ipc_objects()`` taken before the worker started) only those that
    are new since, so the grader's user keeps its own. Returns what was removed."""
    removed = []
    for (kind, ident), owners in ipc_objects().items():
        if uid not in owners or (before is not None and (kind, ident) in before):
            continue
        if kind == "mqueue":
            removed += _unlink_mqueue(ident)
        elif _libc is not None:
            control = {"shm": _libc.shmctl, "sem": _libc.semctl, "msg": _libc.msgctl}[kind]
            # IPC_RMID frees a segment once no process has it attached: the worker's have ended
            args = (ident, 0, IPC_RMID) if kind == "sem" else (ident, IPC_RMID, None)
            if control(*args) == 0:
                removed.append(f"{kind} {ident}")
    return removed


def _unlink_mqueue(inode: int) -> list[str]:
    try:
        for entry in os.scandir(MQUEUE):
            if entry.stat(follow_symlinks=False).st_ino == inode:
                os.unlink(entry.path)
                return [entry.path]
    except OSError:
        pass
    return []


# -- processes --------------------------------------------------------------------------------
def become_subreaper(on: bool = True) -> bool:
    """Orphans of our descendants are reparented to us instead of to init."""
    try:
        return _libc is not None and _libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, uid, command) for every process we can see (Linux /proc)."""
    table = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().decode("utf-8", "replace")
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:  # it ended while we looked
            continue
        command, rest = fields[fields.index("(") + 1:fields.rindex(")")], fields[fields.rindex(")") + 2:]
        table[int(entry)] = (int(rest.split()[1]), uid, command)
    return table


# pids of the workers this grader process has alive (Worker.call_clean keeps a second one):
# a sibling worker is not a stray of the other
LIVE_WORKERS: set[int] = set()


def _start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    return int(fields[fields.rindex(")") + 2:].split()[19])


def own_children() -> dict[int, int | None]:
    """pid -> start time of this process's children now (taken before a worker starts: a
    fork server or multiprocessing's resource tracker is the grader's, not an orphan of
    the worker; pid and start time together, so a recycled pid is not mistaken for one)."""
    me = os.getpid()
    return {pid: _start_time(pid) for pid, (ppid, _, _) in process_table().items() if ppid == me}


def strays(worker_pid: int, uid: int | None, reaping: bool, before: dict[int, int | None] | None = None) -> dict[int, str]:
    """Processes that belong to a submission but are not the worker itself: its
    descendants, orphans reparented to us (when we are a subreaper; ``before``: our children
    from before the worker started, which are not), and anything running as the worker's
    dedicated uid."""
    before = before or {}
    table = process_table()
    me = os.getpid()
    ours = {worker_pid}
    found = {}
    changed = True
    while changed:  # descendants of the worker, however deep
        changed = False
        for pid, (ppid, _, command) in table.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                found[pid] = command
                changed = True
    for pid, (ppid, owner, command) in table.items():
        if pid in (worker_pid, me):
            continue
        if uid is not None and owner == uid:
            found[pid] = command
        elif reaping and ppid == me and pid not in LIVE_WORKERS and pid not in ours:
            if pid in before and before[pid] == _start_time(pid):
                continue
            found[pid] = command
    return found


def kill_strays(worker_pid: int, uid: int | None, reaping: bool, rounds: int = 20,
                before: dict[int, int | None] | None = None) -> None:
    """SIGKILL every stray until none is left (a fork loop may race the first rounds)."""
    for _ in range(rounds):
        found = strays(worker_pid, uid, reaping, before)
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if uid is not None:
            kill_uid(uid)
        time.sleep(0.02)
        reap(found)


def reap(pids) -> None:
    """Collect the exit status of those that were our children (orphans we adopted)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def kill_uid(uid: int) -> None:
    """kill(-1) as that uid signals every process it owns: nothing of it can hide."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


# -- the unprivileged uid ---------------------------------------------------------------------
def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def privilege_drop_available() -> bool:
    """Root, and a Python that a pool uid can run with the grader's site-packages."""
    if not running_as_root():
        return False
    lease = UidLease()
    try:
        return interpreter_for(lease.uid)[0] is not None
    finally:
        lease.release()


def private_folder() -> Path:
    """Root's own folder for the pool's lock files and the interpreter probe's result."""
    folder = Path(tempfile.gettempdir()) / "course-grader-uids"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
        raise RuntimeError(f"{folder} is not a private folder of root's; refusing to use it")
    return folder


class UidLease:
    """One uid of the pool, held (flock) while a worker uses it, so two graders on one
    machine never share a uid (killing one's processes would kill the other's)."""

    def __init__(self):
        folder = private_folder()
        taken = {entry.pw_uid for entry in pwd.getpwall()}
        pool = uid_pool()
        for uid in pool:
            if uid in taken:
                continue
            handle = open(folder / f"{uid}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self.uid, self._handle = uid, handle
            return
        raise RuntimeError(f"all {len(pool)} grading uids are in use")

    def release(self):
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def drop_to(uid: int) -> None:
    """In the child, after every root-only step: no groups, the pool uid as gid and uid."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def site_dirs() -> list[str]:
    """Where the grader's packages live (its site-packages, and wherever torch and numpy
    came from, e.g. PYTHONPATH, which ``python -I`` ignores): the worker puts these first on
    its path. Never the course folder, which holds the solutions."""
    import numpy
    import torch

    found = [*site.getsitepackages(), *(os.path.dirname(os.path.dirname(m.__file__)) for m in (torch, numpy))]
    dirs = [os.path.realpath(d) for d in found if os.path.isdir(d)]
    return [d for d in dict.fromkeys(dirs) if not (str(ROOT) + os.sep).startswith(d + os.sep)]


def interpreter_for(uid: int) -> tuple[str | None, str]:
    """A Python of our version that ``uid`` can run and import torch with, and why not if
    none. The grader's own may live where only root can reach (``/root/.pyenv``)."""
    if "python" in _cache:
        return _cache["python"]  # type: ignore[return-value]
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}",
                  f"/usr/local/bin/python{version}"]
    probe = ("import sys; sys.path[:0] = sys.argv[1:]; import torch; "
             "print('%d.%d' % sys.version_info[:2])")
    # the probe costs ~1.7 s (it imports torch); a grader process per student repeats it, so
    # a success is kept in root's private folder, valid while the inputs and the file stay
    record = private_folder() / "python-probe.json"
    key = [candidates, site_dirs(), str(ROOT)]
    try:
        saved = json.loads(record.read_text())
        if saved["key"] == key and saved["stat"] == _identity(saved["python"]):
            _cache["python"] = (saved["python"], "")
            return _cache["python"]  # type: ignore[return-value]
    except (OSError, ValueError, KeyError):
        pass
    tried = []
    for candidate in dict.fromkeys(candidates):
        if not os.path.exists(candidate):
            continue
        if (os.path.realpath(candidate) + os.sep).startswith(str(ROOT) + os.sep) or \
                (os.path.abspath(candidate) + os.sep).startswith(str(ROOT) + os.sep):
            # a venv made with --copies inside the course: made private with the course
            tried.append(f"{candidate}: inside the course folder")
            continue
        try:
            out = subprocess.run([candidate, "-I", "-c", probe, *site_dirs()], capture_output=True,
                                 text=True, timeout=120, cwd="/", preexec_fn=lambda: drop_to(uid),
                                 env={"PATH": "/usr/bin:/bin", "HOME": "/"})
        except (OSError, subprocess.SubprocessError) as exc:
            tried.append(f"{candidate}: {exc}")
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            _cache["python"] = (candidate, "")
            # a file of this process's own, then renamed: graders that probe at once (two
            # pytest workers, two jobs) each rename theirs, and the record is whole either way
            fd, partial = tempfile.mkstemp(dir=record.parent, prefix=".python-probe-", suffix=".partial")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps({"key": key, "python": candidate, "stat": _identity(candidate)}))
                os.replace(partial, record)
            except OSError:  # only the cache is lost: the next grader probes again
                with contextlib.suppress(OSError):
                    os.unlink(partial)
            return _cache["python"]  # type: ignore[return-value]
        last = (out.stderr.strip().splitlines() or ["wrong version " + out.stdout.strip()])[-1]
        tried.append(f"{candidate}: {last[:120]}")
    _cache["python"] = (None, "; ".join(tried) or f"no python{version} found")
    return _cache["python"]  # type: ignore[return-value]


def _identity(path: str) -> list[int]:
    info = os.stat(path)
    return [info.st_ino, info.st_mtime_ns, info.st_mode]


def make_private(paths, keep: list[str]) -> list[str]:
    """chmod o-rwx on each path, so the worker's uid (not owner, not in the group) cannot
    read or enter it. A directory on the way to something the worker needs (``keep``: its
    interpreter and site-packages) keeps o+x, loses only listing; its other entries are
    made private one by one. Returns what could not be changed (a read-only file system,
    one without Unix modes), each with the reason, for the report."""
    failed = []
    keep = [os.path.realpath(k) for k in keep]
    for path in paths:
        # never through a symlink: chmod would follow it and change its target
        if not os.path.lexists(path) or os.path.islink(path):
            continue
        path = os.path.realpath(path)
        needed_inside = [k for k in keep if k == path or k.startswith(path + os.sep)]
        if any(k == path for k in needed_inside):
            continue
        try:
            mode = os.stat(path).st_mode
            if needed_inside and os.path.isdir(path):
                os.chmod(path, (mode & ~0o007) | 0o001)
                failed += make_private([os.path.join(path, e) for e in os.listdir(path)], keep)
            elif mode & 0o007:
                os.chmod(path, mode & ~0o007)
        except OSError as exc:
            failed.append(f"{path} ({exc.strerror or exc})")
    return failed


def remove_files_of(uid: int) -> list[str]:
    """Files and folders the uid left at the top of the shared temporary folders."""
    removed = []
    for folder in SHARED_TMP:
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for name in entries:
            path = os.path.join(folder, name)
            try:
                if os.lstat(path).st_uid != uid:
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return removed


# -- what one worker runs under ---------------------------------------------------------------
_IPC_OWN = ("own IPC namespace: the System V shared memory, semaphores and message queues and the POSIX "
            "message queues the worker creates end with it; any its uid left in the grader's are removed")
_IPC_SHARED = ("unavailable: the system refused an IPC namespace (it needs root), so System V shared memory, "
               "semaphores and message queues and POSIX message queues are shared with the grader's user; "
               "those the worker created are removed when it ends")

@dataclass
class IsolationPlan:
    """Decided once per worker start; ``summary()`` goes into the report."""
    python: str = sys.executable
    site_dirs: list[str] = field(default_factory=list)
    uid: int | None = None
    network: bool = False
    ipc: bool = False  # an IPC namespace of its own (root)
    reaping: bool = False
    not_private: list[str] = field(default_factory=list)  # what chmod could not protect
    unavailable: dict[str, str] = field(default_factory=dict)

    @classmethod
    def decide(cls, lease: UidLease | None, protect: list) -> "IsolationPlan":
        plan = cls(network=network_namespace_available(), site_dirs=site_dirs())
        if not plan.network:
            plan.unavailable["network"] = ("unavailable: the system refused a network namespace, "
                                           "so the worker shares the grader's network")
        plan.ipc = ipc_namespace_available()
        if not plan.ipc:
            plan.unavailable["ipc"] = _IPC_SHARED
        plan.reaping = become_subreaper(True)
        if lease is None:
            why = "turned off" if running_as_root() else "the grader is not root"
            plan.unavailable["user"] = (f"unavailable ({why}): the worker runs as the grader's own user, "
                                        "so files that user can read or write are open to it")
            return plan
        python, why = interpreter_for(lease.uid)
        if python is None:
            plan.unavailable["user"] = ("unavailable: no Python the unprivileged user can run was found, "
                                        f"so the worker runs as root ({why})")
            return plan
        plan.python, plan.uid = python, lease.uid
        plan.not_private = make_private(protect, keep=[python, os.path.realpath(python), *plan.site_dirs])
        return plan

    def summary(self) -> dict:
        user = (f"unprivileged uid {self.uid} (no groups); every process of that uid is killed and its "
                f"files in {', '.join(SHARED_TMP)} removed when the worker ends; at most {MAX_PROCESSES} "
                f"processes and threads" if self.uid is not None else self.unavailable.get("user", ""))
        processes = ("the worker's process group is killed after a timeout or crash; a call that leaves a "
                     "process or thread running fails and the worker restarts")
        processes = (processes + "; orphans that escape the group are reparented to the grader and killed"
                     if self.reaping else
                     "unavailable: orphans that escape the group cannot be traced on this system; " + processes)
        summary = {"user": user, "network": "own empty network namespace" if self.network
                   else self.unavailable["network"], "processes": processes,
                   "ipc": _IPC_OWN if self.ipc else self.unavailable.get("ipc", _IPC_SHARED)}
        if self.uid is not None:
            summary["course files"] = (
                "the course folder and the submission's originals are private to their owner (chmod o-rwx)"
                if not self.not_private else "unavailable in part: chmod failed on "
                + "; ".join(self.not_private[:3]) + ", so the worker may read those")
        return summary
