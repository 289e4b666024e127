"""The wait for the GIL, measured by watchdog threads as they wake up.

A thread that sleeps for a set time and then wakes is late by the time it was runnable but not
running (the OS run queue), plus the time it waited to take the GIL back, plus a little timer
slack. `WakeClock.wait` times each of its calling thread's sleeps and subtracts the run-queue
time (the second field of the thread's own schedstat), so that a busy machine is not called
contention; what remains is the GIL wait a thread wanting to run Python met at that moment.
Without schedstat (not Linux) the raw lateness is counted and `runqueue_known` says so.

Every wake-up of a watchdog costs tens of microseconds of CPU (measured: see
docs/sampling.md), so the loop watchdogs' own timed waits are measured too, and the dedicated
`GilWatchdog` thread only wakes often while no loop watchdog is doing that work.

Standard library only, relative imports only, Python 3.9 compatible (see `watchdog`).
"""

from __future__ import annotations

import functools
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .background import Background
from .schedstat import SchedStat, ThreadCpu, on_gil
from .threadlooks import ThreadLooks

SPARE_INTERVAL = 1.0  # the GIL watchdog's sleep while loop watchdogs measure for it
# Each sleep is drawn from (1 - JITTER, 1 + JITTER) times the interval: at a fixed period the
# wake-ups (and the thread looks they carry) lock onto the GIL's own 5 ms timeouts, and what
# they meet is not what a thread waking at any moment meets (see collectors/gillooks.py).
JITTER = 0.5
# How long each attempt keeps the GIL; two attempts must agree (see `gil_futex`).
CALIBRATION_HOLDS_US = (2000, 2000, 4000, 4000, 8000, 8000)


class GilMeter:
    """The sum of what `WakeClock`s measured since the last `drain()`; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runqueue_known = True
        self._reset()

    def _reset(self) -> None:
        self._seconds = 0.0
        self._wait = 0.0
        self._wakes = 0
        self._max_wait = 0.0

    def add(self, elapsed: float, wait: float, runqueue_known: bool) -> None:
        with self._lock:
            self._seconds += elapsed
            self._wait += wait
            self._wakes += 1
            self._max_wait = max(self._max_wait, wait)
            self.runqueue_known = self.runqueue_known and runqueue_known

    def drain(self) -> dict[str, Any] | None:
        """`{"seconds", "wait_seconds", "acquisitions", "max_wait_ms", "runqueue_known"}`;
        None before the first wake-up."""
        with self._lock:
            if not self._wakes:
                return None
            summary = {"seconds": round(self._seconds, 6), "wait_seconds": round(self._wait, 6),
                       "acquisitions": self._wakes,
                       "max_wait_ms": round(self._max_wait * 1000.0, 3),
                       "runqueue_known": self.runqueue_known}
            self._reset()
        return summary


class WakeClock:
    """Timed waits of one thread, each measured into a `GilMeter`. Use from that thread."""

    def __init__(self, meter: GilMeter) -> None:
        self.meter = meter
        self._stat: SchedStat | None = None
        self._queued_ns = 0
        # The GIL wait of the last wake-up (seconds; None before the first): where it is short
        # of a switch interval, no thread held the GIL then.
        self.last_wait: float | None = None

    def bind(self) -> None:
        """Open the calling thread's schedstat (call first, from the thread itself)."""
        self._stat = SchedStat.open(threading.get_native_id())
        read = self._stat.read() if self._stat is not None else None
        self._queued_ns = read[1] if read is not None else 0

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        """Sleep `timeout` seconds unless `stop` is set first; True when stopped."""
        before = time.perf_counter()
        # Event.wait rather than time.sleep: a stop is seen at once, and a stack sampler sees
        # the thread parked in threading's wait, which it knows as idle.
        if stop.wait(timeout):
            return True
        elapsed = time.perf_counter() - before
        late = elapsed - timeout
        stat = self._stat
        read = stat.read() if stat is not None else None
        if read is not None:
            late -= (read[1] - self._queued_ns) / 1e9  # runnable, but no CPU for it
            self._queued_ns = read[1]
        self.last_wait = max(0.0, late)
        self.meter.add(elapsed, self.last_wait, read is not None)
        return False

    def close(self) -> None:
        if self._stat is not None:
            self._stat.close()
            self._stat = None


class GilWatchdog(Background):
    """A daemon thread that wakes every `interval` to measure the GIL wait; every
    `SPARE_INTERVAL` instead while `others_measuring()` says loop watchdogs do it."""

    thread_name = "apiscope-gil-watchdog"

    def __init__(self, meter: GilMeter, interval: float,
                 others_measuring: Callable[[], bool] = lambda: False) -> None:
        super().__init__()
        self.meter = meter
        self.interval = interval
        self.others_measuring = others_measuring
        self.errors = 0
        self.cpu = ThreadCpu()
        self.futex: tuple[int, int] | None = None  # see `gil_futex`, learnt in a thread of its own
        self.holder: tuple[int, int] | None = None  # see `gil_holder_layout`, learnt with it
        self.looks = ThreadLooks()  # where threads sleep, looked at on its wake-ups

    def _run(self) -> None:
        clock = WakeClock(self.meter)
        # Learnt beside the measuring, not before it: with threads in pure Python taking turns
        # on the GIL, each attempt waits for the GIL several times (seconds in all).
        learner = threading.Thread(target=self._learn, name="apiscope-gil-learn", daemon=True)
        try:
            self.cpu.bind()
            learner.start()
            clock.bind()
            while True:
                timeout = SPARE_INTERVAL if self.others_measuring() else self.interval
                if clock.wait(self._stop, timeout * random.uniform(1 - JITTER, 1 + JITTER)):
                    return
                self.cpu.report()
                self.looks.maybe_look(time.monotonic(), self.futex)
        except Exception:  # never into the app: this watchdog just ends
            self.errors += 1
        finally:
            clock.close()
            self.cpu.close()
            if learner.is_alive():  # no thread of ours outlives the watchdog
                learner.join(5.0)

    def _learn(self) -> None:
        try:
            futex = gil_futex()
            self.holder = gil_holder_layout(futex[1]) if futex is not None else None
            self.futex = futex
        except Exception:  # never into the app: the GIL's address stays unknown
            self.errors += 1


def gil_futex() -> tuple[int, int] | None:
    """(system call number, address) of the futex a thread of this process waits on while it
    waits for the GIL; None where that cannot be learnt (not Linux, no ctypes, no GIL).

    Learnt by making it happen: a helper thread is released while this thread keeps the GIL
    through a foreign call that does not release it (`ctypes.PyDLL`), so the helper wakes up
    and waits for the GIL; this thread then reads the helper's current system call from
    `/proc/self/task/TID/syscall`, still holding the GIL. A reader outside the process (the
    collector) then tells a thread waiting for the GIL from one waiting on anything else by
    this address. Each attempt keeps the GIL for a few milliseconds: one attempt when its word
    lies in the interpreter's data, else until two agree (at most six), once per process."""
    if not has_gil() or not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held during its calls
        usleep, pread = libc.usleep, libc.pread
        usleep.argtypes, usleep.restype = [ctypes.c_uint], ctypes.c_int
        pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
        pread.restype = ctypes.c_ssize_t
        buffer = ctypes.create_string_buffer(256)
    except Exception:  # no ctypes, or a libc without these: nothing to learn it with
        return None

    def read_held(fd: int) -> bytes:
        count = pread(fd, buffer, len(buffer), 0)
        return buffer.raw[:max(0, count)]

    # An attempt can catch the helper on another word (woken, it may block on the lock behind
    # the event for a moment before it reaches the GIL), and a wrong word would make every wait
    # for the GIL in the session look like a wait on a lock. The GIL's state is a static of the
    # interpreter, in the data of its executable or libpython; a lock is allocated. A word in a
    # file's mapping is kept at once; any other needs a second attempt to agree.
    learnt: list[tuple[int, int]] = []
    for hold_us in CALIBRATION_HOLDS_US:
        found = _calibrate(functools.partial(usleep, hold_us), read_held)
        if found is None:
            continue
        if _in_mapped_file(found[1]) or any(on_gil(found, seen) for seen in learnt):
            return found
        learnt.append(found)
    return None


# How far before the futex word the GIL's state may begin, and how much of a thread state is
# searched for its thread's ident (bytes).
GIL_STATE_BACK = 200
THREAD_STATE_SCAN = 256


def gil_holder_layout(futex_address: int) -> tuple[int, int] | None:
    """(address of the GIL's state, offset of the thread ident in a thread state), which a
    reader outside the process uses to tell which thread holds the GIL while others wait for
    it (`collectors/gillooks.py`); None where they cannot be told apart for sure.

    CPython's GIL state begins, from 3.9 to 3.13, with the switch interval in microseconds
    (`unsigned long`), the thread state that took the GIL last (a pointer) and whether the
    GIL is held (an `int`); its condition variable, on whose futex a waiting thread blocks
    (`gil_futex`), comes some 70 bytes later. Found by what they read while this thread holds
    the GIL, as it does while it runs Python: the interval `sys.getswitchinterval()` says,
    this thread's own state, and 1. The ident (`threading.get_ident()`) is found in this
    thread's state the same way. Nothing is written; only words of the interpreter's own
    state, and of this thread's, are read. Call it on a thread of this process."""
    try:
        import ctypes

        current = ctypes.pythonapi.PyThreadState_Get
        current.restype = ctypes.c_void_p
        me = current()
        if not me:
            return None
        interval = round(sys.getswitchinterval() * 1e6)
        aligned = (futex_address - 8) & ~7
        found = [base for base in range(aligned, futex_address - GIL_STATE_BACK, -8)
                 if ctypes.c_ulong.from_address(base).value == interval
                 and ctypes.c_void_p.from_address(base + 8).value == me
                 and ctypes.c_int.from_address(base + 16).value == 1]
        ident = threading.get_ident()
        offsets = [offset for offset in range(0, THREAD_STATE_SCAN, 8)
                   if ctypes.c_ulong.from_address(me + offset).value == ident]
    except Exception:  # no ctypes, or an interpreter unlike these: the holder stays unknown
        return None
    if len(found) != 1 or len(offsets) != 1:
        return None
    return found[0], offsets[0]


def thread_idents() -> list[list[int]]:
    """[ident, native thread id] of this process's threads that `threading` knows."""
    return [[t.ident, t.native_id] for t in threading.enumerate()
            if t.ident is not None and t.native_id is not None]


def _in_mapped_file(address: int, maps: str = "/proc/self/maps") -> bool:
    """Whether `address` lies in a mapping of a file (not the heap, a stack or anonymous
    memory); False when the mappings cannot be read."""
    try:
        with open(maps, "rb") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                low, _, high = fields[0].partition(b"-")
                if int(low, 16) <= address < int(high, 16):
                    path = fields[5].strip() if len(fields) > 5 else b""
                    return path.startswith(b"/")
    except (OSError, ValueError, IndexError):
        pass
    return False


def _calibrate(hold: Callable[[], object], read_held: Callable[[int], bytes],
               ) -> tuple[int, int] | None:
    go, ready = threading.Event(), threading.Event()
    native: list[int] = []

    def helper() -> None:
        native.append(threading.get_native_id())
        ready.set()
        go.wait(2.0)  # parked on the event's lock; released, it needs the GIL to go on

    thread = threading.Thread(target=helper, name="apiscope-gil-calibration", daemon=True)
    thread.start()
    try:
        if not ready.wait(2.0):
            return None
        fd = os.open(f"/proc/self/task/{native[0]}/syscall", os.O_RDONLY)
        try:
            parked = None
            for _ in range(200):  # until the helper is blocked in the event's futex
                parked = _syscall_of(os.pread(fd, 256, 0))
                if parked is not None:
                    break
                time.sleep(0.001)
            if parked is None:
                return None
            go.set()
            hold()  # the GIL held all along: the helper wakes up and waits for it
            waiting = _syscall_of(read_held(fd))
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        go.set()
        thread.join(2.0)
    # The same call (futex) on another word than the event's lock: the GIL's.
    if waiting is None or waiting[0] != parked[0] or waiting[1] == parked[1]:
        return None
    return waiting


def _syscall_of(text: bytes) -> tuple[int, int] | None:
    """(number, first argument) of a blocked thread's system call; None when it is running
    or not in a system call."""
    fields = text.split()
    try:
        number, first = int(fields[0]), int(fields[1], 16)
    except (IndexError, ValueError):  # "running"
        return None
    return (number, first) if number >= 0 else None


def has_gil() -> bool:
    """False on a free-threaded build running without the GIL: nothing to wait for."""
    check = getattr(sys, "_is_gil_enabled", None)
    return bool(check()) if check is not None else True
