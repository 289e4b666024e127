"""The kernel's account of each thread's CPU time: what was running, measured, not guessed.

py-spy's raw output says which stack each thread showed at each sample, not whether the thread
was on a CPU then: a thread sleeping in `time.sleep`, waiting on a socket inside psycopg or
hashing in argon2's C code can show the very same Python line as one computing there. The kernel
knows: `/proc/PID/task/TID/schedstat` holds the nanoseconds each thread spent on a CPU (its first
field) and waiting in the run queue for one (its second). Read at every window's edges, the
difference is the CPU time each thread used in that window; `oncpu.py` then decides how many of
the thread's samples were running. The run-queue time tells a thread that was slow because the
host had no free CPU from one that was slow in its own code.

Where schedstat is missing (kernels without CONFIG_SCHED_INFO), `/proc/PID/task/TID/stat`'s
utime + stime is used instead, in clock ticks (usually 10 ms): coarser, still measured.
The process's own total (`/proc/PID/stat`) includes threads that ended within the window, which
the per-thread figures cannot.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

ThreadKey = tuple[int, int]  # (pid, tid)

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class CpuReading:
    """Cumulative CPU seconds of each thread and each process at one instant, and each
    thread's seconds waiting in the run queue for a CPU (where schedstat exists)."""

    threads: dict[ThreadKey, float] = field(default_factory=dict)
    processes: dict[int, float] = field(default_factory=dict)
    runqueue: dict[ThreadKey, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CpuUsage:
    """CPU seconds used, and run-queue seconds waited, between two readings."""

    threads: dict[ThreadKey, float] = field(default_factory=dict)
    processes: dict[int, float] = field(default_factory=dict)
    runqueue: dict[ThreadKey, float] = field(default_factory=dict)


def _stat_ticks(text: str) -> float | None:
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    _, _, rest = text.rpartition(")")
    fields = rest.split()
    if len(fields) < 13:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)


class ThreadCpuReader:
    """Reads the CPU time of every thread of the given processes from `proc_root`."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self.failures = 0  # processes that could not be read (gone, or no permission)

    def read(self, pids: Iterable[int]) -> CpuReading:
        threads: dict[ThreadKey, float] = {}
        processes: dict[int, float] = {}
        runqueue: dict[ThreadKey, float] = {}
        for pid in pids:
            base = f"{self.proc_root}/{pid}"
            try:
                tids = os.listdir(f"{base}/task")
                total = _stat_ticks(_read(f"{base}/stat"))
            except OSError:
                self.failures += 1
                continue
            if total is not None:
                processes[pid] = total
            for name in tids:
                if not name.isdigit():
                    continue
                seconds, waited = self._thread_seconds(f"{base}/task/{name}")
                if seconds is not None:
                    threads[(pid, int(name))] = seconds
                if waited is not None:
                    runqueue[(pid, int(name))] = waited
        return CpuReading(threads, processes, runqueue)

    @staticmethod
    def _thread_seconds(path: str) -> tuple[float | None, float | None]:
        """(CPU seconds, run-queue seconds) of one thread, None where unknown."""
        try:
            on_cpu, waited = _read(f"{path}/schedstat").split()[:2]
            return int(on_cpu) / 1e9, int(waited) / 1e9
        except (OSError, ValueError):
            pass
        try:
            return _stat_ticks(_read(f"{path}/stat")), None
        except (OSError, ValueError):
            return None, None  # the thread ended between listing and reading


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def usage(before: CpuReading, after: CpuReading) -> CpuUsage:
    """CPU used from `before` to `after`, for processes read both times. A thread first seen in
    `after` started within the window, so all of its CPU time so far counts."""
    threads = {key: max(0.0, now - before.threads.get(key, 0.0))
               for key, now in after.threads.items() if key[0] in before.processes}
    processes = {pid: max(0.0, now - before.processes[pid])
                 for pid, now in after.processes.items() if pid in before.processes}
    runqueue = {key: max(0.0, now - before.runqueue.get(key, 0.0))
                for key, now in after.runqueue.items() if key[0] in before.processes}
    return CpuUsage(threads, processes, runqueue)


def unmeasured_cpu(used: CpuUsage) -> dict[int, float]:
    """Per process, the CPU seconds its own total holds beyond its measured threads': threads
    that ended within the window (or started and ended in it)."""
    measured: dict[int, float] = {}
    for (pid, _), seconds in used.threads.items():
        measured[pid] = measured.get(pid, 0.0) + seconds
    return {pid: max(0.0, total - measured.get(pid, 0.0))
            for pid, total in used.processes.items()}
