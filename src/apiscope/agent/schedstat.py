"""A thread's scheduler statistics from `/proc/self/task/<tid>/schedstat` (Linux).

The file holds three numbers: nanoseconds on a CPU, nanoseconds runnable but waiting in a run
queue, and the number of time slices. It is opened once and re-read with `os.pread` at
offset 0, which regenerates its content: one system call per reading, no allocation of a file
object. Elsewhere `open()` returns None and callers do without.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence


def native_id(thread: threading.Thread) -> int | None:
    """The kernel's id of a thread of this process. The main thread's is the process id: in a
    forked child (a gunicorn or `uvicorn --workers` worker) its `Thread.native_id` is still
    the parent's (Python 3.9 to 3.13 alike), which names no thread of the child."""
    if thread is threading.main_thread():
        return os.getpid()
    return thread.native_id


class SchedStat:
    """The schedstat file of one thread of this process, kept open."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def open(cls, native_id: int) -> SchedStat | None:
        try:
            fd = os.open(f"/proc/self/task/{native_id}/schedstat", os.O_RDONLY)
        except (OSError, AttributeError):
            return None
        stat = cls(fd)
        if stat.read() is None:  # present but unreadable or not in this format
            stat.close()
            return None
        return stat

    def read(self) -> tuple[int, int] | None:
        """(ns on CPU, ns waiting in the run queue); None once closed or when unreadable
        (the thread has exited)."""
        fd = self._fd
        if fd is None:
            return None
        try:
            fields = os.pread(fd, 128, 0).split()
            return int(fields[0]), int(fields[1])
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        _close(fd)


class ThreadCpu:
    """A watchdog thread's own CPU time, readable from any thread."""

    def __init__(self) -> None:
        self.stat: SchedStat | None = None
        self._last = 0.0  # seconds, as the thread itself last reported it (non-Linux)

    def bind(self) -> None:
        """Call from the thread itself."""
        self.stat = SchedStat.open(threading.get_native_id())
        self._last = time.thread_time()

    def report(self) -> None:
        """Call from the thread itself, now and then (only needed without schedstat)."""
        if self.stat is None:
            self._last = time.thread_time()

    def seconds(self) -> float:
        stat = self.stat
        if stat is not None:
            read = stat.read()
            if read is not None:
                self._last = read[0] / 1e9
        return self._last

    def close(self) -> None:
        self.seconds()  # keep the last figure once the file is gone
        if self.stat is not None:
            self.stat.close()
            self.stat = None


# The agent's own percentile, because the agent may import nothing of apiscope. It must match
# `apiscope.analysis.stats.percentile`: the same `q` in 0..1 over ascending values, landing
# between the same two neighbouring values. It picks one of the two (nearest rank) where the
# report interpolates between them, so a lag it sends is one a probe measured; both give the
# same figure at q = 0, at q = 1 and on one value. Change one, check the other and the test
# that compares them.
def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile of an ascending, non-empty sequence (`q` in 0..1)."""
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


# What a thread blocked in a system call is waiting for, by the call's number (Linux x86-64
# and arm64): the kernel says it in /proc/self/task/<tid>/syscall ("running" when the thread
# is not in a system call: on a CPU, or ready for one).
_SLEEPS = {35, 230, 101, 115}  # nanosleep, clock_nanosleep (x86-64; arm64: 101, 115)
_LOCKS = {202, 98}  # futex: a lock, a condition, the GIL (x86-64; arm64: 98)
# select and pselect6 (x86-64: 23, 270; arm64: 72), whose first argument is the number of file
# descriptors, and poll and ppoll (x86-64: 7, 271; arm64: 73), whose second is: with none, the
# call only waits out its timeout. Python before 3.11 sleeps so (`time.sleep` is a `select`
# on no file), and so do C libraries' portable sleeps.
_FD_COUNT_ARG = {23: 1, 270: 1, 72: 1, 7: 2, 271: 2, 73: 2}


def _syscall_kind(number: int, fields: list[bytes] | None = None) -> str:
    if number in _SLEEPS:
        return "sleep"
    if number in _LOCKS:
        return "lock"
    arg = _FD_COUNT_ARG.get(number)
    if arg is not None and fields is not None and len(fields) > arg and \
            int(fields[arg], 16) == 0:
        return "sleep"
    return "io"  # read, recv, poll, select, epoll, connect...: waiting on a file or socket


GIL_SPAN = 128  # bytes either side of the GIL's learnt futex word that are its state too


def on_gil(call: tuple[int, int], gil: tuple[int, int]) -> bool:
    """Whether a futex wait (system call, address) is on the GIL's state, whose (system call,
    address) was learnt (see `gilwatch.gil_futex`)."""
    return call[0] == gil[0] and abs(call[1] - gil[1]) <= GIL_SPAN


def syscall_state(text: bytes, gil: tuple[int, int] | None = None) -> str | None:
    """A `/proc/.../syscall` reading as a thread's state (see `SyscallState`)."""
    fields = text.split(None, 3)
    if not fields:
        return None
    first = fields[0]
    if first == b"running":
        return "cpu"
    try:
        kind = _syscall_kind(int(first), fields)
        if kind == "lock" and gil is not None and \
                on_gil((int(first), int(fields[1], 16)), gil):
            return "gil"
        return kind
    except (ValueError, IndexError):
        return None  # "-1 ..." (blocked outside a system call) or an unknown format


class SyscallState:
    """What one thread of this process is doing now: "cpu" (not in a system call), "sleep",
    "gil" (a futex on the GIL, once its address is known: see `gilwatch.gil_futex`), "lock"
    (any other futex: a lock or a condition) or "io"; None when unknown."""

    __slots__ = ("_fd",)

    def __init__(self, native_id: int) -> None:
        try:
            self._fd: int | None = os.open(f"/proc/self/task/{native_id}/syscall", os.O_RDONLY)
        except (OSError, AttributeError):
            self._fd = None

    def read(self, gil: tuple[int, int] | None = None) -> str | None:
        """The thread's state now; `gil`: the GIL's (system call, address), when known."""
        fd = self._fd
        if fd is None:
            return None
        try:
            text = os.pread(fd, 64, 0)
        except OSError:
            return None
        return syscall_state(text, gil)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        _close(fd)


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
