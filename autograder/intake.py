"""Intake: what the grader takes from a submission folder, and nothing else.

A submission is a folder of files a student controls, read by a grader that may be root.
Following a symbolic link there would let the student hand in the reference solutions
(``exercises -> ../../course/solutions``) or a classmate's work; opening what is not a
regular file can hang the grader (a FIFO, ``/dev/zero``, ``/proc/self/fd/0``) or crash it
(a folder named ``notes.py``). So the grader never reads the submission itself: it stages a
copy with ``stage_submission`` and grades that, and ``grade-class`` decides whether a
student changed anything from the same walk (``fingerprint``).

The rules: the submission folder itself must be a real folder, not a link. Only regular
files whose names end in ``.py`` are taken, also from real sub-folders (not
``__pycache__``, ``.git`` or hidden ones), at most 1 MiB each, 16 MiB and 500 files in all.
A link whose target lies outside the submission is refused; a link to a regular file inside
it is taken as a copy of that file. Nothing that is not a regular file is ever opened;
regular files are opened without following links and checked again once open, so a file
swapped for a link or a FIFO in between is not read either.
"""
from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field

from .text import clean_name

MiB = 1 << 20
MAX_FILE_BYTES = 1 * MiB
MAX_TOTAL_BYTES = 16 * MiB
MAX_FILES = 500
MAX_ENTRIES = 20_000  # folder entries looked at: a folder of a million files costs bounded time
MAX_DEPTH = 8  # nested folders; the exercises are flat
MAX_NAMED = 20  # files named one by one in a cap's refusal; the rest are counted
IGNORED_DIRS = {"__pycache__", ".git"}  # and every hidden folder

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# O_NONBLOCK: a FIFO swapped in after the check does not block the open; O_NOCTTY: a
# terminal never becomes ours
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class IntakeTimeout(Exception):
    """Reading the submission's folder took longer than the caller allowed."""


@dataclass
class Intake:
    """What was taken from a submission, and what was not, and why (for the report)."""
    source: str  # the folder as it was named
    files: list[str] = field(default_factory=list)  # relative paths taken, in name order
    refused: dict[str, str] = field(default_factory=dict)  # relative path -> why not taken
    skipped: dict[str, str] = field(default_factory=dict)  # relative path -> what it was
    whole: str = ""  # set when the whole submission was refused: why

    def reason(self, module: str) -> str | None:
        """Why the module ``module`` (``attention``, or ``pkg.mod``) was not taken, or None."""
        if self.whole:
            return self.whole
        path = module.replace(".", "/")
        for name in (f"{path}.py", path):
            if name in self.refused:
                return self.refused[name]
            if name in self.skipped:
                return self.skipped[name]
        return None

    def notes(self) -> list[str]:
        """One line per thing not taken, for the terminal."""
        if self.whole:
            return [self.whole]
        return [*self.refused.values(), *self.skipped.values()]

    def to_json(self) -> dict:
        return {"files": list(self.files), "refused": dict(self.refused), "skipped": dict(self.skipped),
                "whole": self.whole}


def read_submission(src: str | os.PathLike, deadline: float | None = None) -> tuple[Intake, dict[str, bytes]]:
    """Walk ``src`` by the rules above: the intake notes, and relative path -> contents of
    each file taken. ``deadline`` (``time.monotonic()``): raise ``IntakeTimeout`` after it."""
    src = os.fspath(src)
    intake = Intake(source=src)
    taken: dict[str, bytes] = {}
    label = clean_name(os.path.basename(os.path.normpath(src)) or src)
    try:
        st = os.lstat(src)
    except OSError as exc:
        intake.whole = f"refused: the submission folder {clean_name(src)} cannot be read ({exc.strerror or exc})"
        return intake, taken
    if stat.S_ISLNK(st.st_mode):
        intake.whole = (f"refused: link outside your submission ({label} -> {_link_text(src)}): the submission "
                        f"folder is a symbolic link, which the grader does not follow; hand in the folder itself")
        return intake, taken
    if not stat.S_ISDIR(st.st_mode):
        intake.whole = f"refused: the submission {clean_name(src)} is {_kind(st.st_mode)}, not a folder"
        return intake, taken
    try:
        root_fd = os.open(src, _DIR_FLAGS)
    except OSError as exc:  # swapped for a link or a file since the lstat
        intake.whole = f"refused: the submission folder {clean_name(src)} cannot be opened ({exc.strerror or exc})"
        return intake, taken
    try:
        if not _same(os.fstat(root_fd), st):
            intake.whole = f"refused: the submission folder {clean_name(src)} changed while it was being read"
            return intake, taken
        walk = _Walk(intake, taken, os.path.realpath(src), deadline)
        walk.folder(root_fd, "", 0)
        walk.finish()
    finally:
        os.close(root_fd)
    return intake, taken


def stage_submission(src: str | os.PathLike, dst: str | os.PathLike, deadline: float | None = None) -> Intake:
    """Copy what intake takes from ``src`` into the new folder ``dst`` (regular files and
    folders only, private to the grader) and return the notes. ``dst`` must not exist."""
    intake, taken = read_submission(src, deadline)
    dst = os.fspath(dst)
    os.mkdir(dst, 0o700)
    for rel, data in taken.items():
        path = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return intake


def fingerprint(src: str | os.PathLike, deadline: float | None = None) -> str:
    """A hash of what intake takes from ``src`` (and of what it refused): a re-run of
    ``grade-class`` skips a student whose hash is unchanged. Reads nothing intake would not."""
    intake, taken = read_submission(src, deadline)
    digest = hashlib.sha256()
    for rel in sorted(taken):
        digest.update(b"file\0" + rel.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(hashlib.sha256(taken[rel]).digest())
    for what, notes in (("refused", intake.refused), ("skipped", intake.skipped), ("whole", {"": intake.whole})):
        for rel in sorted(notes):
            digest.update(f"{what}\0{rel}\0{notes[rel]}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


class _Walk:
    """One walk over a submission by folder descriptors, so no path is looked up twice."""

    def __init__(self, intake: Intake, taken: dict[str, bytes], root_real: str, deadline: float | None):
        self.intake, self.taken, self.root_real, self.deadline = intake, taken, root_real, deadline
        self.entries = 0
        self.total = 0
        self.over_cap: list[tuple[str, str]] = []  # (relative path, which cap)

    def folder(self, dir_fd: int, prefix: str, depth: int):
        with os.scandir(dir_fd) as it:
            names = []
            for entry in it:
                self.entries += 1
                if self.entries > MAX_ENTRIES:
                    self.intake.skipped[prefix or "."] = (f"skipped: the submission holds more than {MAX_ENTRIES} "
                                                          f"files and folders; the rest were not looked at")
                    break
                names.append(entry.name)
        for name in sorted(names):
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise IntakeTimeout(f"reading the submission's files did not finish in time (at {clean_name(prefix + name)})")
            if name.startswith(".") or name in IGNORED_DIRS:
                continue
            self.entry(dir_fd, name, prefix + name, depth)

    def entry(self, dir_fd: int, name: str, rel: str, depth: int):
        shown = clean_name(rel)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return  # gone since the listing
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            self.link(dir_fd, name, rel)
        elif stat.S_ISDIR(mode):
            if name.endswith(".py"):
                self.intake.skipped[rel] = f"skipped: {shown} is a folder, not a file"
            elif depth + 1 >= MAX_DEPTH:
                self.intake.skipped[rel] = f"skipped: {shown} is nested more than {MAX_DEPTH} folders deep"
            else:
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    return  # swapped for a link since the stat: not followed
                try:
                    if _same(os.fstat(fd), st):
                        self.folder(fd, rel + "/", depth + 1)
                finally:
                    os.close(fd)
        elif stat.S_ISREG(mode):
            if name.endswith(".py"):
                self.take(rel, lambda: os.open(name, _FILE_FLAGS, dir_fd=dir_fd), st)
        elif name.endswith(".py"):  # a FIFO, socket or device: never opened
            self.intake.skipped[rel] = f"skipped: {shown} is {_kind(mode)}, not a regular file (not opened)"

    def link(self, dir_fd: int, name: str, rel: str):
        shown = clean_name(rel)
        try:
            target_text = clean_name(os.readlink(name, dir_fd=dir_fd))
        except OSError:
            return
        # the walk entered real folders only, so this path names the link itself
        real = os.path.realpath(os.path.join(self.root_real, rel))
        try:
            st = os.stat(real, follow_symlinks=False)  # realpath resolved every link: none is left
        except OSError:
            st = None
        is_dir = st is not None and stat.S_ISDIR(st.st_mode)
        if not (name.endswith(".py") or is_dir):
            return  # a link the grader would not take even as a file: nothing to say
        if not (real == self.root_real or real.startswith(self.root_real + os.sep)):
            self.intake.refused[rel] = (f"refused: link outside your submission ({shown} -> {target_text}): {shown} "
                                        f"is a symbolic link to a place outside the submission folder, which the "
                                        f"grader does not read; hand in the {'folder' if is_dir else 'file'} itself")
        elif st is not None and stat.S_ISREG(st.st_mode):
            self.take(rel, lambda: os.open(real, _FILE_FLAGS), st)  # a copy of the file it names
        elif is_dir:
            self.intake.skipped[rel] = (f"skipped: {shown} is a link to a folder ({shown} -> {target_text}); "
                                        f"links to folders are not followed")
        else:
            what = "a broken link" if st is None else f"a link to {_kind(st.st_mode)}"
            self.intake.skipped[rel] = f"skipped: {shown} is {what} ({shown} -> {target_text}), not a regular file"

    def take(self, rel: str, opener, expected: os.stat_result):
        shown = clean_name(rel)
        if len(self.taken) >= MAX_FILES:
            self.over_cap.append((rel, f"more than {MAX_FILES} .py files"))
            return
        if expected.st_size > MAX_FILE_BYTES:
            self.intake.refused[rel] = (f"refused: {shown} is {expected.st_size / MiB:.1f} MiB, more than the "
                                        f"{MAX_FILE_BYTES // MiB} MiB a file may hold")
            return
        try:
            fd = opener()
        except OSError as exc:
            self.intake.skipped[rel] = f"skipped: {shown} could not be opened ({exc.strerror or exc})"
            return
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            # checked again on what was opened: the name may have been swapped in between
            if not stat.S_ISREG(st.st_mode) or not _same(st, expected):
                self.intake.skipped[rel] = f"skipped: {shown} changed while it was being read"
                return
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            self.intake.refused[rel] = f"refused: {shown} is more than the {MAX_FILE_BYTES // MiB} MiB a file may hold"
            return
        if self.total + len(data) > MAX_TOTAL_BYTES:
            self.over_cap.append((rel, f"more than {MAX_TOTAL_BYTES // MiB} MiB of .py files in all"))
            return
        self.total += len(data)
        self.taken[rel] = data
        self.intake.files.append(rel)

    def finish(self):
        """Name the files a cap left out (the first few one by one, the rest counted)."""
        for rel, cap in self.over_cap[:MAX_NAMED]:
            self.intake.refused[rel] = (f"refused: {clean_name(rel)} was not taken: the submission holds {cap} "
                                        f"(the files are taken in name order)")
        if len(self.over_cap) > MAX_NAMED:
            rest = len(self.over_cap) - MAX_NAMED
            self.intake.refused[f"({rest} more files)"] = f"refused: {rest} more files were not taken for the same reason"


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _link_text(path: str) -> str:
    try:
        return clean_name(os.readlink(path))
    except OSError:
        return "?"


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a link"), (stat.S_ISREG, "a file")):
        if test(mode):
            return what
    return "not a regular file"
