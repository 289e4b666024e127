"""Each thread's wait for the GIL, read from the kernel: how often it is blocked on the GIL.

A thread waiting for the GIL is blocked in a futex on a word of the interpreter's GIL state
(its condition variable, or the switch's beside it). The agent learns that word's address in
its own process by making a thread wait for the GIL on purpose (`agent/gilwatch.gil_futex`)
and reports it with each pull. `GilLooks` then reads `/proc/PID/task/TID/syscall` of the busy
threads of each such process every `interval`, from this process: a thread blocked in that
system call on a word within `GIL_SPAN` bytes of the address is waiting for the GIL; any other
state (running, a socket, a lock, a sleep) is not. The share of looks in that state is the
thread's measured GIL wait in the window. Reading from outside costs the target nothing: no
GIL taken, no signal; the kernel answers "running" at once for a thread on a CPU.

Where the agent also learnt where the GIL's state lies (`agent/gilwatch.gil_holder_layout`),
a look that finds a thread of a process waiting for the GIL also reads, from
`/proc/PID/mem`, which thread holds it then: the state's `locked` word and the thread state
that took it last, whose ident the agent's list turns into a thread id. Those looks count as
the holder's (`drain_holders`), so a flag can point at the code that keeps the GIL from the
waiting threads rather than at the waiting threads' own lines. Reading another process's
memory, as py-spy does, takes nothing from it and cannot make it fail.

Only threads that used CPU in the last window are looked at (a thread waiting for the GIL
also runs between its waits), which keeps the looks to the few busy threads of a server.

Nor are the threads of a quiet process: one whose agent's GIL watchdog (`agent/gilwatch.py`)
waited on average at most `QUIET_SHARE` of the switch interval per wake-up in each of its last
`QUIET_SAMPLES` reports, which it does only when no thread holds the GIL for long while others
want it. Each look not taken there counts as a look that found no wait for the GIL (what the
watchdog measured), so a window's share stays a share of the whole window rather than of its
loud moments; and while every watched process is quiet the looking thread wakes only every
`QUIET_INTERVAL`. A periodic wake-up is the most of what looking costs.
"""

from __future__ import annotations

import os
import random
import struct
import threading
import time
from collections import deque
from collections.abc import Mapping

from apiscope.agent.schedstat import GIL_SPAN
from apiscope.agent.schedstat import on_gil as on_gil_state
from apiscope.model import SWITCH_INTERVAL

ThreadKey = tuple[int, int]  # (pid, tid)

INTERVAL = 0.04  # seconds between looks at each watched thread, on average
# Each wait between looks is drawn from (1 - JITTER, 1 + JITTER) times the interval. Looks at a
# fixed period lock onto the GIL's own: a thread waiting for the GIL wakes every switch
# interval (5 ms), and a look whose timer fired with its timeout found it awake. At a fixed
# 5 ms, two threads taking turns (each blocked on the GIL half of the time, by their
# schedstat) were found waiting 7-17% of the looks; drawn, 49%.
JITTER = 0.5
MAX_WATCHED = 64  # threads per process looked at, at most (the busiest ones)
QUIET_SHARE = 0.15  # of SWITCH_INTERVAL: the watchdog's mean wait below which a process is quiet
QUIET_SAMPLES = 3  # the watchdog's latest reports that must all be quiet
QUIET_MIN_WAKES = 3  # watchdog wake-ups in those reports, at least, to say anything
QUIET_INTERVAL = 0.5  # seconds between wake-ups while every watched process is quiet
# The GIL state's first words: the switch interval, the thread state that took it last, and
# whether it is held (see agent/gilwatch.gil_holder_layout); a thread's ident.
HOLDER_STATE = struct.Struct("=QQi")
IDENT = struct.Struct("=Q")


class GilLooks:
    """Looks at watched threads in a daemon thread; `drain()` hands over (looks, GIL looks)
    per thread since the last drain. Thread-safe."""

    def __init__(self, interval: float = INTERVAL, proc_root: str = "/proc") -> None:
        self.interval = interval
        self.proc_root = proc_root
        self._lock = threading.Lock()
        self._futex: dict[int, tuple[int, int]] = {}  # pid -> (system call number, address)
        self._refused: set[int] = set()  # processes whose threads may not be read
        self._watched: tuple[ThreadKey, ...] = ()
        self._counts: dict[ThreadKey, list[int]] = {}
        self._fds: dict[ThreadKey, int] = {}  # used by the looking thread only
        # pid -> the GIL watchdog's latest reports, (wait seconds, wake-ups) each
        self._waits: dict[int, deque[tuple[float, int]]] = {}
        self._last_look: float | None = None  # used by the looking thread only
        # pid -> (address of the GIL's state, offset of a thread state's ident), and the
        # agent's {ident: native thread id} (see the module docstring)
        self._holder: dict[int, tuple[int, int]] = {}
        self._idents: dict[int, dict[int, int]] = {}
        self._mem: dict[int, int] = {}  # pid -> /proc/PID/mem, used by the looking thread only
        self._held: dict[ThreadKey, int] = {}  # looks that found (pid, tid) holding the GIL
        self._unread: set[int] = set()  # processes whose GIL state could not be read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def note(self, pid: int, futex: tuple[int, int]) -> None:
        """The GIL's futex in process `pid` (from its agent); starts looking on the first."""
        with self._lock:
            self._futex[pid] = futex
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="apiscope-gil-looks",
                                                daemon=True)
                self._thread.start()

    def note_holder(self, pid: int, layout: tuple[int, int], idents: Mapping[int, int]) -> None:
        """Where process `pid`'s GIL state lies and how its threads' idents map to thread ids
        (from its agent, at each pull): looks that find a thread waiting for the GIL read who
        holds it from then on."""
        with self._lock:
            if pid in self._futex and pid not in self._unread:
                self._holder[pid] = layout
                self._idents[pid] = dict(idents)

    def note_wait(self, pid: int, wait_seconds: float, wakes: int) -> None:
        """One report of process `pid`'s GIL watchdog: it waited `wait_seconds` for the GIL
        over `wakes` wake-ups (see `quiet`)."""
        with self._lock:
            self._waits.setdefault(pid, deque(maxlen=QUIET_SAMPLES)).append((wait_seconds, wakes))

    def quiet(self, pid: int) -> bool:
        """Whether `pid`'s GIL watchdog waited so little lately that its threads need no looks."""
        with self._lock:
            reports = list(self._waits.get(pid, ()))
        if len(reports) < QUIET_SAMPLES or sum(n for _, n in reports) < QUIET_MIN_WAKES:
            return False  # not measured enough: look
        # Each report quiet, not their mean: one loud report opens the looks for a while.
        return all(w <= QUIET_SHARE * SWITCH_INTERVAL * n for w, n in reports)

    def knows(self, pid: int) -> bool:
        """Told of `pid` already (looking at it, or refused reading it)."""
        return pid in self._futex or pid in self._refused

    def watch(self, cpu: Mapping[ThreadKey, float], min_seconds: float) -> None:
        """Look, from now on, at the threads of known processes that used at least
        `min_seconds` of CPU in the window just measured (`cpu`), the busiest first."""
        busy = sorted(((sec, key) for key, sec in cpu.items()
                       if sec >= min_seconds and key[0] in self._futex), reverse=True)
        per_pid: dict[int, int] = {}
        keys = []
        for _, key in busy:
            if per_pid.get(key[0], 0) < MAX_WATCHED:
                per_pid[key[0]] = per_pid.get(key[0], 0) + 1
                keys.append(key)
        self._watched = tuple(sorted(keys))

    def drain(self) -> dict[ThreadKey, tuple[int, int]]:
        """(looks, looks that found the thread waiting for the GIL) per thread since the last
        drain."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return {key: (looks, gil) for key, (looks, gil) in counts.items()}

    def drain_holders(self) -> dict[ThreadKey, int]:
        """Looks, since the last drain, that found a thread of a process waiting for the GIL
        and read which thread held it: per (pid, holder's tid), tid 0 for a holder the agent
        did not name (a thread `threading` does not know)."""
        with self._lock:
            held, self._held = self._held, {}
        return held

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)

    # -- the looking thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            interval = self.interval
            while not self._stop.wait(interval * random.uniform(1 - JITTER, 1 + JITTER)):
                interval = QUIET_INTERVAL if self.look() else self.interval
        finally:
            for fd in [*self._fds.values(), *self._mem.values()]:
                _close(fd)
            self._fds.clear()
            self._mem.clear()

    def look(self, now: float | None = None) -> bool:
        """One look at every watched thread of a process that is not quiet; the looks since
        the last one at the others, counted as finding no wait. True when every watched
        process was quiet (nothing was read)."""
        now = time.monotonic() if now is None else now
        last, self._last_look = self._last_look, now
        # The looks a quiet process's threads would have had since the last one.
        skipped = max(1, round((now - last) / self.interval)) if last is not None else 1
        watched = self._watched
        for key in [k for k in self._fds if k not in watched]:
            _close(self._fds.pop(key))
        quiet = {pid: self.quiet(pid) for pid in {key[0] for key in watched}}
        seen: list[tuple[ThreadKey, int, bool]] = []
        for key in watched:
            futex = self._futex.get(key[0])
            if futex is None:
                continue
            if quiet[key[0]]:
                seen.append((key, skipped, False))
                continue
            state = self._read(key)
            if state is not None:
                seen.append((key, 1, on_gil(state, futex)))
        # Who holds the GIL while a thread of its process waits for it.
        holders = [(pid, self._read_holder(pid)) for pid in
                   sorted({key[0] for key, _, waiting in seen if waiting})
                   if pid in self._holder]
        with self._lock:
            for key, looks, waiting in seen:
                counts = self._counts.setdefault(key, [0, 0])
                counts[0] += looks
                counts[1] += waiting
            for pid, tid in holders:
                if tid is not None:
                    self._held[(pid, tid)] = self._held.get((pid, tid), 0) + 1
        return all(quiet.values())

    def _read_holder(self, pid: int) -> int | None:
        """The thread id of the thread holding process `pid`'s GIL now (0: one its agent did
        not name); None when the GIL is between two holders or cannot be read."""
        layout = self._holder.get(pid)
        if layout is None:
            return None
        base, offset = layout
        fd = self._mem.get(pid)
        try:
            if fd is None:
                fd = os.open(f"{self.proc_root}/{pid}/mem", os.O_RDONLY)
                self._mem[pid] = fd
            _, last, locked = HOLDER_STATE.unpack(os.pread(fd, HOLDER_STATE.size, base))
        except (OSError, struct.error):  # not ours to read, or gone: stop asking this process
            self.errors += 1
            with self._lock:
                self._unread.add(pid)
                self._holder.pop(pid, None)
            if fd is not None:
                _close(self._mem.pop(pid, fd))
            return None
        if locked != 1 or not last:
            return None
        try:
            ident = IDENT.unpack(os.pread(fd, IDENT.size, last + offset))[0]
        except (OSError, struct.error):  # the thread state freed as its thread ended
            return None
        return self._idents.get(pid, {}).get(ident, 0)

    def _read(self, key: ThreadKey) -> bytes | None:
        fd = self._fds.get(key)
        try:
            if fd is None:
                fd = os.open(f"{self.proc_root}/{key[0]}/task/{key[1]}/syscall", os.O_RDONLY)
                self._fds[key] = fd
            return os.pread(fd, 128, 0)
        except PermissionError:  # not ours to read (Yama's ptrace_scope): the whole process
            self.errors += 1
            self._refused.add(key[0])
            self._futex.pop(key[0], None)
            return None
        except OSError:  # the thread ended: stop looking at it
            self.errors += 1
            if fd is not None:
                _close(self._fds.pop(key, fd))
            return None


def on_gil(state: bytes, futex: tuple[int, int]) -> bool:
    """Whether a `/proc/.../syscall` reading is a thread blocked on the GIL's futex (the
    agent's own test of a wait on the GIL, `schedstat.on_gil`, on the reading's call)."""
    fields = state.split(maxsplit=2)
    try:
        call = int(fields[0]), int(fields[1], 16)
    except (IndexError, ValueError):  # "running", or no system call
        return False
    return on_gil_state(call, futex)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


__all__ = ["GIL_SPAN", "GilLooks", "on_gil"]
