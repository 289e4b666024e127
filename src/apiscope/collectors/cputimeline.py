"""Each thread's CPU and run-queue time, read every few tens of milliseconds.

The kernel keeps, per thread, the nanoseconds it ran on a CPU and the nanoseconds it waited
in the run queue for one (`/proc/PID/task/TID/schedstat`). Read at 1 s windows they tell how
much a thread ran, not *when*; read every `interval` (25 ms by default) they tell it well
enough to match against the time-stamped stacks py-spy records: a stack a thread showed for
a stretch of time was on a CPU for the CPU time the thread used in that stretch.

A background thread keeps one file descriptor per thread open and re-reads it with `pread`
(about a microsecond each; the task list is scanned again every `rescan` seconds), and keeps
`memory` seconds of readings. `usage()` answers, for one thread and one span of time, how
many of its seconds it ran and how many it waited for a CPU; the rest it was off-CPU for a
reason of its own (sleeping, I/O, a lock, the GIL).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

ThreadKey = tuple[int, int]
Reading = tuple[float, float, float]  # (wall time, CPU seconds, run-queue seconds)


class CpuTimeline:
    """Per-thread readings of CPU and run-queue time at a fixed interval, kept for a while."""

    def __init__(self, pids: Callable[[], Iterable[int]], *, interval: float = 0.025,
                 memory: float = 10.0, rescan: float = 0.5, proc_root: str = "/proc",
                 clock: Callable[[], float] = time.time) -> None:
        self._pids = pids
        self.interval = interval
        self.rescan = rescan
        self.proc_root = proc_root
        self._clock = clock
        self._keep = max(8, int(memory / interval))
        self._readings: dict[ThreadKey, deque[Reading]] = {}
        self._fds: dict[ThreadKey, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reads = 0
        self.cpu_seconds = 0.0  # this reader's own CPU time: part of apiscope's cost

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="apiscope-cpu-timeline")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _run(self) -> None:
        scanned = 0.0
        started = time.thread_time()
        while not self._stop.is_set():
            now = self._clock()
            if now - scanned >= self.rescan:
                self._scan()
                scanned = now
            self.read_once()
            self.cpu_seconds = time.thread_time() - started
            self._stop.wait(self.interval)

    def _scan(self) -> None:
        for pid in list(self._pids()):
            try:
                tids = os.listdir(f"{self.proc_root}/{pid}/task")
            except OSError:
                continue
            for name in tids:
                key = (pid, int(name))
                if name.isdigit() and key not in self._fds:
                    try:
                        self._fds[key] = os.open(
                            f"{self.proc_root}/{pid}/task/{name}/schedstat", os.O_RDONLY)
                    except OSError:
                        pass

    def read_once(self) -> None:
        """Read every known thread once (the background thread calls this)."""
        ts = self._clock()
        gone = []
        batch: list[tuple[ThreadKey, Reading]] = []
        for key, fd in self._fds.items():
            try:
                fields = os.pread(fd, 128, 0).split()
                batch.append((key, (ts, int(fields[0]) / 1e9, int(fields[1]) / 1e9)))
            except (OSError, ValueError, IndexError):
                gone.append(key)  # the thread ended
        for key in gone:
            os.close(self._fds.pop(key))
        with self._lock:
            for key, reading in batch:
                ring = self._readings.get(key)
                if ring is None:
                    ring = self._readings[key] = deque(maxlen=self._keep)
                ring.append(reading)
        self.reads += 1

    # -- queries ------------------------------------------------------------------------------

    def usage(self, key: ThreadKey, start: float, end: float) -> tuple[float, float] | None:
        """(seconds on a CPU, seconds waiting for one) of thread `key` within [start, end);
        None without readings around that span."""
        return self.usages(key, [(start, end)])[0]

    def usages(self, key: ThreadKey,
               spans: list[tuple[float, float]]) -> list[tuple[float, float] | None]:
        """`usage` for many spans of one thread at once, in one pass over its readings.

        Each reading interval's CPU and run-queue time is spread evenly over the interval. A
        span partly outside the readings kept is judged on the part inside (scaled to the
        whole) when that part is at least half of it, else it gets None.
        """
        with self._lock:
            ring = self._readings.get(key)
            readings = list(ring) if ring else []
        out: list[tuple[float, float] | None] = [None] * len(spans)
        if len(readings) < 2:
            return out
        times = [r[0] for r in readings]
        for index in sorted(range(len(spans)), key=lambda i: spans[i][0]):
            whole = spans[index][1] - spans[index][0]
            start, end = max(spans[index][0], times[0]), min(spans[index][1], times[-1])
            if whole <= 0 or end - start < 0.5 * whole:
                continue
            scale = whole / (end - start)
            i = max(0, bisect.bisect_right(times, start) - 1)
            ran = waited = 0.0
            while i + 1 < len(readings) and readings[i][0] < end:
                (t0, c0, q0), (t1, c1, q1) = readings[i], readings[i + 1]
                lo, hi = max(start, t0), min(end, t1)
                if hi > lo and t1 > t0:
                    part = (hi - lo) / (t1 - t0)
                    ran += max(0.0, c1 - c0) * part
                    waited += max(0.0, q1 - q0) * part
                i += 1
            out[index] = (ran * scale, waited * scale)
        return out

    def threads(self) -> list[ThreadKey]:
        with self._lock:
            return list(self._readings)
