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

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .background import Background
from .schedstat import SchedStat, ThreadCpu

SPARE_INTERVAL = 1.0  # the GIL watchdog's sleep while loop watchdogs measure for it


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
        self.meter.add(elapsed, max(0.0, late), read is not None)
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

    def _run(self) -> None:
        clock = WakeClock(self.meter)
        try:
            self.cpu.bind()
            clock.bind()
            while True:
                timeout = SPARE_INTERVAL if self.others_measuring() else self.interval
                if clock.wait(self._stop, timeout):
                    return
                self.cpu.report()
        except Exception:  # never into the app: this watchdog just ends
            self.errors += 1
        finally:
            clock.close()
            self.cpu.close()


def has_gil() -> bool:
    """False on a free-threaded build running without the GIL: nothing to wait for."""
    check = getattr(sys, "_is_gil_enabled", None)
    return bool(check()) if check is not None else True
