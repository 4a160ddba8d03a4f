"""The worker seam on its own: values come back as plain tensors, and every way a call can
go wrong becomes a SubmissionError with a message, after which the worker starts afresh."""
import io
import os
import struct
import time
import textwrap

import pytest
import torch

from autograder.isolation import UID_POOL, privilege_drop_available
from autograder.worker_parent import SubmissionError, Worker


@pytest.fixture
def submission(tmp_path):
    (tmp_path / "mod.py").write_text(textwrap.dedent("""
        import os, sys, time, torch
        calls = []
        def double(x): return 2 * x
        def pair(x): return x, {"sum": x.sum(), "n": 3}
        def view_of_big(): return torch.arange(10_000_000.)[:2]
        def hang(): time.sleep(60)
        def leave(): os._exit(7)
        def nope(): raise NotImplementedError("nope: write this part")
        def boom(): raise ValueError("bad shape (3, 4)")
        def count():
            calls.append(1)
            return len(calls)
        def huge(): return torch.zeros(64 << 20)  # 256 MiB
        def grab(): return torch.empty(1 << 40)  # 4 TiB of address space
        def env(): return os.environ.get("SECRET", "") + "|" + os.getcwd()
        def who(): return [os.getuid(), os.getgid(), os.getgroups()]
        def spin():
            while True:
                pass
        def orphan():  # setsid plus a double fork: reparented to the grader (a subreaper)
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(30)
                os._exit(0)
            time.sleep(0.2)
        def via_a(): return spin()
        def via_b(): return [spin()]
    """))
    return tmp_path


def test_values_round_trip_as_plain_tensors(submission):
    with Worker(submission) as w:
        x = torch.arange(6.).reshape(2, 3).t()  # a non-contiguous view arrives as one
        assert torch.equal(w.call("mod.double", x), 2 * x)
        out, extra = w.call("mod.pair", x)
        assert type(out) is torch.Tensor and extra["n"] == 3
        small = w.call("mod.view_of_big")
        assert small.untyped_storage().nbytes() == 8  # a copy, not the 40 MB storage


def test_the_graders_own_children_are_not_taken_for_the_workers_strays(submission):
    """A child the grader started before the worker (grade-class's fork server, say) is not an
    orphan of the submission, and the call is not failed for it; an orphan the worker leaves
    still is. Before pid and start time were kept, a grader that had run grade-class (whose fork
    server is its child) failed every later call with "left 2 background processes"."""
    import subprocess

    ours = subprocess.Popen(["sleep", "60"])
    try:
        with Worker(submission) as w:
            x = torch.ones(3)
            assert torch.equal(w.call("mod.double", x), 2 * x)
            if not w.plan.reaping:
                pytest.skip("the grader is not a subreaper here (that needs root): orphans go to init")
            with pytest.raises(SubmissionError, match="background process"):
                w.call("mod.orphan")
        assert ours.poll() is None, "the grader's own child was killed as a stray"
    finally:
        ours.kill()
        ours.wait()


def test_state_lives_on_between_calls_until_a_restart(submission):
    with Worker(submission, timeout=2) as w:
        assert w.call("mod.count") == 1 and w.call("mod.count") == 2
        with pytest.raises(SubmissionError):
            w.call("mod.hang")
        assert w.call("mod.count") == 1  # a fresh worker after the timeout


@pytest.mark.parametrize("target,kind,needle", [
    ("mod.hang", "timeout", "timed out after 2 s in mod.hang"),
    ("mod.leave", "crash", "exited with status 7"),
    ("mod.nope", "not-implemented", "not implemented: nope: write this part"),
    ("mod.boom", "exception", "ValueError in mod.boom: bad shape (3, 4)"),
    ("mod.missing", "missing", "mod.py has no 'missing'"),
    ("other.f", "missing", "no file other.py"),
    ("mod.grab", "memory", "ran out of memory in mod.grab"),
])
def test_failures_are_named(submission, target, kind, needle):
    with Worker(submission, timeout=2, memory_bytes=2 << 30) as w:
        with pytest.raises(SubmissionError) as err:
            w.call(target)
        assert err.value.kind == kind and needle in str(err.value)
        assert torch.equal(w.call("mod.double", torch.ones(2)), torch.full((2,), 2.0))


def test_a_target_that_keeps_hanging_is_not_run_again(submission):
    with Worker(submission, timeout=1, max_strikes_per_target=2) as w:
        for _ in range(2):
            with pytest.raises(SubmissionError, match="timed out"):
                w.call("mod.hang")
        with pytest.raises(SubmissionError, match="already timed out 2 times"):
            w.call("mod.hang")
        for _ in range(2):
            with pytest.raises(SubmissionError, match="exited with status 7"):
                w.call("mod.leave")
        with pytest.raises(SubmissionError, match="already crashed the worker 2 times"):
            w.call("mod.leave")
        assert w.call("mod.count") == 1  # other targets still run


def test_a_call_that_reaches_a_function_that_hung_twice_fails_at_once(submission):
    """The stack dumped before each timeout says where the code was stuck; after two hangs
    in mod.spin, a different target that calls it fails on entering it, not after a timeout."""
    with Worker(submission, timeout=1, max_strikes_per_target=2) as w:
        for target in ("mod.via_a", "mod.spin"):
            with pytest.raises(SubmissionError, match="it was at mod.py line .*, in spin"):
                w.call(target)
        w.start()  # the timeouts ended the worker: start the next one outside the timed part
        started = time.monotonic()
        with pytest.raises(SubmissionError) as err:
            w.call("mod.via_b")
        assert time.monotonic() - started < 0.9  # less than the timeout: it never spun
        assert err.value.kind == "timeout"
        assert "not run: mod.via_b reached mod.py line" in str(err.value) and "in spin" in str(err.value)
        assert w.call("mod.count") == 1  # the rest still runs


def test_oversized_reply_is_refused(submission):
    with Worker(submission, max_reply_bytes=16 << 20) as w:
        with pytest.raises(SubmissionError, match="more than the 16 MiB"):
            w.call("mod.huge")


def test_environment_is_scrubbed_and_directory_is_private(submission, monkeypatch):
    monkeypatch.setenv("SECRET", "s3cret")
    with Worker(submission) as w:
        secret, cwd = w.call("mod.env").split("|")
        assert secret == "" and "course-worker-" in cwd and cwd != os.getcwd()


def test_oversized_frame_is_refused_before_it_is_read(submission):
    """Were the worker subverted to skip its own size check, the grader refuses the frame
    from its header alone."""
    with Worker(submission, max_reply_bytes=16 << 20) as w:
        w.start()
        read_fd, write_fd = os.pipe()
        os.write(write_fd, struct.pack(">Q", 1 << 40))  # claims 1 TiB, sends nothing more
        w.resp_r, w.phase = read_fd, "in mod.double"
        with pytest.raises(SubmissionError) as err:
            w._read_frame(deadline=time.monotonic() + 10, what="mod.double")
        assert err.value.kind == "bad-reply" and "more than the 16 MiB" in str(err.value)
        os.close(write_fd)


class Rigged:
    """Stands in for anything that is not a tensor or a plain container."""


def test_reply_that_is_not_plain_data_is_refused(submission):
    """The grader loads replies with weights_only=True: a pickled object never reaches it."""
    with Worker(submission) as w:
        w.start()
        buf = io.BytesIO()
        torch.save({"id": 1, "ok": True, "value": Rigged()}, buf)
        read_fd, write_fd = os.pipe()
        os.write(write_fd, struct.pack(">Q", len(buf.getvalue())) + buf.getvalue())
        w.resp_r, w.phase = read_fd, "in mod.double"
        with pytest.raises(SubmissionError) as err:
            w._read_frame(deadline=time.monotonic() + 10, what="mod.double")
        assert err.value.kind == "bad-reply" and "could not be read as plain tensors" in str(err.value)
        os.close(write_fd)


@pytest.mark.skipif(not privilege_drop_available(), reason="needs root and a Python the pool uid can run")
def test_as_root_the_worker_is_an_unprivileged_pool_uid(submission):
    with Worker(submission) as w:
        uid, gid, groups = w.call("mod.who")
        assert uid in UID_POOL and gid == uid and groups == []
        assert w.isolation()["user"].startswith(f"unprivileged uid {uid}")
        assert not os.stat(submission).st_mode & 0o007  # the original is private now


def test_the_report_says_when_a_protection_is_missing(submission):
    with Worker(submission, drop_privileges=False) as w:
        uid, _, _ = w.call("mod.who")
        assert uid == os.getuid()
        assert w.isolation()["user"].startswith("unavailable")


def test_files_that_cannot_be_made_private_are_reported(tmp_path, monkeypatch):
    """A read-only or mode-less file system: the report says which paths stayed open."""
    from autograder import isolation

    (tmp_path / "solutions").mkdir()
    tmp_path.chmod(0o755)  # readable by others: needs a chmod, which fails

    def refuse(path, mode):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(isolation.os, "chmod", refuse)
    failed = isolation.make_private([tmp_path], keep=[])
    assert failed == [f"{tmp_path} (Read-only file system)"]
    plan = isolation.IsolationPlan(uid=61000, network=True, reaping=True, not_private=failed)
    assert plan.summary()["course files"].startswith("unavailable in part: chmod failed on " + str(tmp_path))


# -- printed output ----------------------------------------------------------------------------
PRINTING = textwrap.dedent("""
    import sys, time, torch
    def chatty(x):
        for i in range(50):
            print(f"step {i} " + "x" * 100_000)  # 5 MB, more than the 1 MiB a file may hold here
        print("done", file=sys.stderr)
        return 2 * x
    def chatty_then_fails():
        print("first line")
        for i in range(50):
            print("y" * 100_000)
        print("the last words")
        raise SystemExit(4)
    def spin_and_print():
        while True:
            print("z" * 10_000)
""")


@pytest.fixture
def printing(tmp_path):
    (tmp_path / "mod.py").write_text(PRINTING)
    return tmp_path


def test_printing_any_amount_never_fails_a_call(printing):
    """Output goes to a pipe the grader drains (RLIMIT_FSIZE binds files only), keeping its
    first and last KiB for the message of a call that fails."""
    x = torch.ones(3)
    with Worker(printing, output_bytes=1 << 20) as w:
        for _ in range(3):
            assert torch.equal(w.call("mod.chatty", x), 2 * x)
        with pytest.raises(SubmissionError) as err:
            w.call("mod.chatty_then_fails")
    message = str(err.value)
    assert "called sys.exit(4)" in message or "exited" in message, message
    assert len(message) < 4000, len(message)


def test_a_crash_after_a_flood_shows_the_first_and_last_output(printing):
    with Worker(printing) as w:
        w.call("mod.chatty", torch.ones(1))
        tail = w._output_tail()
    assert tail.startswith("\nfirst output:\n  step 0 xxx") and "4.8 MiB printed in all" in tail
    assert tail.rstrip().endswith("done") and max(len(line) for line in tail.splitlines()) < 220


def test_the_stack_dump_survives_a_flood_of_output(printing):
    """faulthandler writes to a pipe of its own: printing at the same time cannot bury it."""
    with Worker(printing, timeout=2) as w:
        with pytest.raises(SubmissionError, match=r"it was at mod.py line \d+, in spin_and_print"):
            w.call("mod.spin_and_print")


class FileOutput:
    """The old output: a file under RLIMIT_FSIZE (to show why the drain is needed)."""
    keep = 8192

    def __init__(self):
        import tempfile
        self.file, self.dump = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.output_w, self.dump_w, self.output_r = self.file.fileno(), self.dump.fileno(), self.file.fileno()

    def fileno(self):
        return self.file.fileno()

    def started(self):
        pass

    def mark_call(self, call_id):
        pass

    def dump_since_call(self):
        return ""

    def settle(self, timeout=0.3):
        pass

    def output(self):
        return "", "", 0

    def close(self):
        self.file.close()
        self.dump.close()


def test_without_the_drain_printing_fails_the_call(printing, monkeypatch):
    from autograder import worker_parent

    monkeypatch.setattr(worker_parent, "OutputDrain", FileOutput)
    with Worker(printing, output_bytes=1 << 20) as w:
        with pytest.raises(SubmissionError, match="File too large"):
            w.call("mod.chatty", torch.ones(1))


# -- System V IPC left for a later submission --------------------------------------------------
IPC = textwrap.dedent("""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    IPC_CREAT = 0o1000
    def leave(key):
        return [libc.shmget(key, 4096, IPC_CREAT | 0o666) >= 0, libc.semget(key, 1, IPC_CREAT | 0o666) >= 0,
                libc.msgget(key, IPC_CREAT | 0o666) >= 0]
    def find(key):
        return [libc.shmget(key, 0, 0) >= 0, libc.semget(key, 0, 0) >= 0, libc.msgget(key, 0) >= 0]
""")


def sysv_keys() -> set[int]:
    keys = set()
    for kind in ("shm", "sem", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            keys |= {int(line.split()[0]) for line in f.read().splitlines()[1:]}
    return keys


def remove_sysv(key):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for get, control, args in ((libc.shmget, libc.shmctl, (0, 0)), (libc.semget, libc.semctl, None),
                               (libc.msgget, libc.msgctl, (0, 0))):
        ident = get(key, 0, 0) if get is not libc.semget else get(key, 0, 0)
        if ident >= 0:
            control(ident, 0, 0) if get is libc.semget else control(ident, 0, None)


@pytest.fixture
def ipc(tmp_path):
    (tmp_path / "mod.py").write_text(IPC)
    return tmp_path


@pytest.mark.parametrize("drop", [True, False], ids=["as a pool uid (root)", "as the grader's user"])
def test_ipc_objects_die_with_the_worker(ipc, drop, monkeypatch):
    """Shared memory, a semaphore and a message queue with a known key, left by one worker:
    a later worker (a later submission, in effect) finds none of them."""
    from autograder import isolation
    if drop and not privilege_drop_available():
        pytest.skip("needs root and a Python the pool uid can run")
    key = 0x5eed0000 + os.getpid() % 0xffff
    with Worker(ipc, drop_privileges=drop) as w:
        assert w.call("mod.leave", key) == [True, True, True]
        summary = w.isolation()["ipc"]
    assert summary.startswith("own IPC namespace" if isolation.ipc_namespace_available() else "unavailable")
    assert key not in sysv_keys()
    with Worker(ipc, drop_privileges=drop) as w:
        assert w.call("mod.find", key) == [False, False, False]


def test_as_the_graders_user_only_what_the_worker_created_is_removed(ipc, monkeypatch):
    """No namespace: the snapshot taken before the worker started keeps the user's own objects."""
    from autograder import isolation
    import ctypes
    monkeypatch.setattr(isolation, "ipc_namespace_available", lambda: False)
    libc = ctypes.CDLL(None, use_errno=True)
    mine, left = 0x5eee0000 + os.getpid() % 0xffff, 0x5eef0000 + os.getpid() % 0xffff
    assert libc.shmget(mine, 4096, 0o1000 | 0o600) >= 0
    try:
        with Worker(ipc, drop_privileges=False) as w:
            assert w.call("mod.leave", left) == [True, True, True]
            assert w.isolation()["ipc"].startswith("unavailable")
        keys = sysv_keys()
        assert mine in keys and left not in keys
    finally:
        remove_sysv(mine)
        remove_sysv(left)


@pytest.mark.parametrize("drop", [True, False], ids=["as a pool uid (root)", "as the grader's user"])
def test_without_the_namespace_and_the_sweep_a_later_worker_finds_them(ipc, drop, monkeypatch):
    """Why both are needed: turned off, the next worker of the same uid opens all three."""
    from autograder import isolation, worker_parent
    if drop and not privilege_drop_available():
        pytest.skip("needs root and a Python the pool uid can run")
    monkeypatch.setattr(isolation, "ipc_namespace_available", lambda: False)
    monkeypatch.setattr(worker_parent, "remove_ipc_of", lambda *a, **k: [])
    key = 0x5ef00000 + os.getpid() % 0xffff
    try:
        with Worker(ipc, drop_privileges=drop) as w:
            assert w.call("mod.leave", key) == [True, True, True]
        with Worker(ipc, drop_privileges=drop) as w:
            assert w.call("mod.find", key) == [True, True, True]
    finally:
        remove_sysv(key)
