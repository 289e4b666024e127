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

The host's own busy share (`/proc/stat`: all CPUs, every process) is read at the same edges:
threads can wait in the run queue on a host with CPUs to spare (a wake-up's latency on a
virtual CPU, paid at each hand-over of the GIL), so only a busy host makes waiting for a CPU
the host's want of CPU.

A worker that exits within a window (gunicorn's `--max-requests`, a crash, a scale-down) cannot
be read at the window's end. Its parent's stat holds the CPU time of the children it reaped
(`cutime` + `cstime`): what it grew by in the window, less what the gone workers had used
when the window began, is what they used in it.
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
    reaped: dict[int, float] = field(default_factory=dict)  # per parent: its reaped children's
    host: tuple[int, int] | None = None  # the host's (busy, all) clock ticks, all CPUs


@dataclass(frozen=True, slots=True)
class CpuUsage:
    """CPU seconds used, and run-queue seconds waited, between two readings."""

    threads: dict[ThreadKey, float] = field(default_factory=dict)
    processes: dict[int, float] = field(default_factory=dict)
    runqueue: dict[ThreadKey, float] = field(default_factory=dict)
    host_busy: float | None = None  # the share of the host's CPU time in use, all CPUs
    # Threads first read at the end, of processes read at the start: started in the window.
    born: frozenset[ThreadKey] = frozenset()


def host_ticks(text: str) -> tuple[int, int] | None:
    """(busy, all) clock ticks of the host from `/proc/stat`'s first line (`cpu  user nice
    system idle iowait irq softirq steal ...`): idle and iowait are not busy; guest time is
    already in user and nice."""
    fields = text.split("\n", 1)[0].split()
    if len(fields) < 6 or fields[0] != "cpu":
        return None
    try:
        ticks = [int(f) for f in fields[1:9]]
    except ValueError:
        return None
    every = sum(ticks)
    return every - ticks[3] - ticks[4], every


def _stat_ticks(text: str, children: bool = False) -> float | None:
    """utime + stime (fields 14 and 15) in seconds; `children`: cutime + cstime (16 and 17),
    the CPU time of the children the process has reaped."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    _, _, rest = text.rpartition(")")
    fields = rest.split()
    if len(fields) < 15:
        return None
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / _TICKS


class ThreadCpuReader:
    """Reads the CPU time of every thread of the given processes from `proc_root`."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self.failures = 0  # processes that could not be read (gone, or no permission)

    def read(self, pids: Iterable[int], parents: Iterable[int] = ()) -> CpuReading:
        """The threads and totals of `pids`, and the reaped children's CPU of `parents`."""
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
        # The parents after their children: a worker found gone above was reaped before this
        # read, so its CPU is in its parent's figure (read first, a worker reaped between the
        # two reads was in neither).
        reaped: dict[int, float] = {}
        for parent in parents:
            try:
                seconds = _stat_ticks(_read(f"{self.proc_root}/{parent}/stat"), children=True)
            except (OSError, ValueError):
                continue
            if seconds is not None:
                reaped[parent] = seconds
        try:
            host = host_ticks(_read(f"{self.proc_root}/stat"))
        except OSError:
            host = None
        return CpuReading(threads, processes, runqueue, reaped, host)

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
    `after` started within the window, so all of its CPU time so far counts. Processes read
    before and gone after (reaped by a parent read both times) share what the parents' reaped
    time grew by beyond what they had used before: evenly when several went at once (the
    parent's figure is one sum), none when it did not grow (not reaped yet, or not a child of a
    parent read)."""
    threads = {key: max(0.0, now - before.threads.get(key, 0.0))
               for key, now in after.threads.items() if key[0] in before.processes}
    processes = {pid: max(0.0, now - before.processes[pid])
                 for pid, now in after.processes.items() if pid in before.processes}
    runqueue = {key: max(0.0, now - before.runqueue.get(key, 0.0))
                for key, now in after.runqueue.items() if key[0] in before.processes}
    gone = [pid for pid in before.processes if pid not in after.processes]
    grown = sum(max(0.0, now - before.reaped[parent])
                for parent, now in after.reaped.items() if parent in before.reaped)
    if gone and grown > 0:
        used = max(0.0, grown - sum(before.processes[pid] for pid in gone))
        processes.update((pid, used / len(gone)) for pid in gone)
    host_busy = None
    if before.host is not None and after.host is not None and after.host[1] > before.host[1]:
        busy = (after.host[0] - before.host[0]) / (after.host[1] - before.host[1])
        host_busy = min(1.0, max(0.0, busy))
    born = frozenset(key for key in threads if key not in before.threads)
    return CpuUsage(threads, processes, runqueue, host_busy, born)


def unmeasured_cpu(used: CpuUsage) -> dict[int, float]:
    """Per process, the CPU seconds its own total holds beyond its measured threads': threads
    that ended within the window (or started and ended in it)."""
    measured: dict[int, float] = {}
    for (pid, _), seconds in used.threads.items():
        measured[pid] = measured.get(pid, 0.0) + seconds
    return {pid: max(0.0, total - measured.get(pid, 0.0))
            for pid, total in used.processes.items()}
