"""The lines the application's threads sleep at, by the kernel's word, with their stacks.

From outside, a thread blocked in a system call shows only its Python stack; whether it slept
there or ran is the kernel's to say. `ThreadLooks.look` takes every thread's current frame
(`sys._current_frames`) and reads each thread's system call (`/proc/self/task/TID/syscall`)
twice, without letting go of the GIL (the reads are libc's, called through ctypes' PyDLL): other
threads run no Python meanwhile (unless one waited a whole switch interval, 5 ms, and was let in
between two reads), so a thread found in the same sleep or I/O call both times is blocked at its
leaf line, and one found on a CPU both times (C code that released the GIL) runs there. One
found waiting for the GIL both times (once its futex is known) wants to run Python there. A
thread running Python is found as one of these two: the look holds the GIL, so that thread has
just handed it over, and is on its way back to waiting for it (on a CPU) or waiting. Any other
futex (a lock, a queue) is none of these, nor is a thread whose state changed between the
reads.
Holding the GIL for the whole look (a few microseconds a thread) matters on a busy event loop:
reading through `os.pread`, which lets go of it, would make the loop hand the GIL over twice
per thread looked at.

Counts per leaf line (file, line) go out with each pull: the collector then never counts a line
its threads sleep at as running, wherever py-spy sees it, and counts a line they are always
found busy at (on a CPU or waiting for the GIL) among the first to have run (see
`collectors/oncpu.py`): a `time.sleep` in a sync handler on a pool thread that also computes
does not take that thread's CPU, and a loop of Python in a pool thread that mostly waits for the
GIL is not taken for a line that seldom runs. The looks ride on the GIL watchdog's wake-ups, at
most every `LOOK_INTERVAL`, over at most `MAX_THREADS` threads each (taken in turns); the
agent's own threads are skipped. Measured: 1.8 ms for a look at 40 sleeping threads (three
system calls per read, two reads per thread), so at most about 1.5 ms of the GIL held once a
second, 0.15% of a core.

A thread found busy whose stack is work a handler handed to a pool (`offload.request_of`)
also counts a look on the request it works for (`offloaded` of the middleware's request),
which the middleware adds to its route's when the request ends.

Standard library only, relative imports only, Python 3.9 compatible (see `watchdog`).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from .offload import past_timing, request_of
from .paths import AppFiles
from .schedstat import native_id, syscall_state

LOOK_INTERVAL = 1.0  # seconds between looks, at least
MAX_THREADS = 32  # threads read per look (each costs ~20 us of GIL held)
MAX_LINES = 512  # lines counted between two pulls; further new lines are dropped
ASLEEP, RUNNING, GIL = 0, 1, 2  # the columns of a line's counts
_COLUMN = {"sleep": ASLEEP, "io": ASLEEP, "cpu": RUNNING, "gil": GIL}


class ThreadLooks:
    """Looks at the process's threads when `maybe_look` is called (from one thread);
    `drain()` hands over [file, line, asleep, running, gil] per line since the last drain
    (thread-safe)."""

    def __init__(self, interval: float = LOOK_INTERVAL, max_threads: int = MAX_THREADS) -> None:
        self.interval = interval
        self.max_threads = max_threads
        self.errors = 0
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], list[int]] = {}
        self._last: float | None = None
        self._turn = 0
        # libc's reads, loaded on the first look (in the looking thread, not at the agent's
        # start in the target's main thread); None when unavailable.
        self._read_all: Callable[[list[int]], list[bytes]] | None = None
        self._loaded = False
        self._app_files: AppFiles | None = None

    def maybe_look(self, now: float, gil: tuple[int, int] | None = None) -> None:
        """Look, unless the last look was less than `interval` ago. Never raises."""
        if self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        try:
            self.look(gil)
        except Exception:  # never into the app: this look is lost
            self.errors += 1

    def look(self, gil: tuple[int, int] | None = None) -> None:
        if not self._loaded:
            self._read_all, self._loaded = _gil_holding_reader(), True
            self._app_files = AppFiles()
        if self._read_all is None or self._app_files is None:
            return  # no way to read without letting go of the GIL: no looks
        threads = self._threads()
        seen, served = _pair([(t.ident, native_id(t) or 0) for t in threads], gil,
                             self._read_all, self._app_files.is_app)
        for request in served:  # work handed to a pool, busy for this request (see `offload`)
            try:
                request.offloaded += 1
            except AttributeError:  # a request object of another agent's making
                pass
        with self._lock:
            for key, column in seen:
                counts = self._counts.get(key)
                if counts is None:
                    if len(self._counts) >= MAX_LINES:
                        continue
                    counts = self._counts[key] = [0, 0, 0]
                counts[column] += 1

    def drain(self) -> list[list[object]]:
        with self._lock:
            counts, self._counts = self._counts, {}
        return [[file, line, *found] for (file, line), found in sorted(counts.items())]

    def _threads(self) -> list[threading.Thread]:
        """Up to `max_threads` of the process's threads, not the agent's, in turns."""
        own = threading.get_ident()
        threads = [t for t in threading.enumerate()
                   if t.ident != own and t.native_id is not None
                   and not t.name.startswith("apiscope-")]
        if len(threads) > self.max_threads:
            start = self._turn % len(threads)
            threads = (threads + threads)[start:start + self.max_threads]
            self._turn = start + self.max_threads
        return threads


def _pair(threads: list[tuple[int | None, int]], gil: tuple[int, int] | None,
          read_all: Callable[[list[int]], list[bytes]],
          is_app: Callable[[str, str], bool] = lambda file, function: False,
          ) -> tuple[list[tuple[tuple[str, int], int]], list[Any]]:
    """Each thread's leaf line with what it did there (a column of `_COLUMN`), for those whose
    state held still around the taking of the frames, and the requests whose work handed to a
    pool the busy ones run (`offload.request_of`). Runs holding the GIL all along
    (`read_all`): letting go of it between reads would make a busy event loop hand it over
    dozens of times a look."""
    frames = sys._current_frames()
    try:
        native_ids = [native_id for _, native_id in threads]
        first, second = read_all(native_ids), read_all(native_ids)
        seen = []
        served = []
        for (ident, _), before, after in zip(threads, first, second):  # noqa: B905 (3.9)
            state = syscall_state(before, gil) if before else None
            column = _COLUMN.get(state) if state is not None else None
            if column is None:
                continue
            frame = past_timing(frames.get(ident))  # type: ignore[arg-type]
            if frame is None or not after or syscall_state(after, gil) != state:
                continue
            seen.append(((frame.f_code.co_filename, frame.f_lineno or 0), column))
            if column != ASLEEP:
                try:
                    request = request_of(frame, is_app)
                except Exception:  # a frame whose locals cannot be read: the line still counts
                    request = None
                if request is not None:
                    served.append(request)
        return seen, served
    finally:
        del frames  # frames keep their locals alive


def _gil_holding_reader() -> Callable[[list[int]], list[bytes]] | None:
    """`/proc/self/task/TID/syscall` of each thread, read through libc functions called with
    the GIL held (ctypes' PyDLL): no other thread runs Python, nor changes its frame, during a
    read. None where ctypes or those functions are missing."""
    try:
        import ctypes

        libc = ctypes.PyDLL(None)
        c_open, c_pread, c_close = libc.open, libc.pread, libc.close
    except Exception:
        return None
    c_open.argtypes, c_open.restype = [ctypes.c_char_p, ctypes.c_int], ctypes.c_int
    c_pread.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long]
    c_pread.restype = ctypes.c_ssize_t
    c_close.argtypes, c_close.restype = [ctypes.c_int], ctypes.c_int
    buffer = ctypes.create_string_buffer(128)

    def read_all(native_ids: list[int]) -> list[bytes]:
        out = []
        for tid in native_ids:
            fd = c_open(b"/proc/self/task/%d/syscall" % tid, os.O_RDONLY)
            if fd < 0:
                out.append(b"")
                continue
            try:
                size = c_pread(fd, buffer, 127, 0)
                out.append(buffer.raw[:size] if size > 0 else b"")
            finally:
                c_close(fd)
        return out

    return read_all


__all__ = ["LOOK_INTERVAL", "ThreadLooks"]
