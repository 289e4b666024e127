"""Per-process resource figures of the target (psutil), and the worker set as it changes.

`ResourceCollector` follows the prometheus-client collector shape: `collect()` returns one
`ResourceSample` per live process; OS access (`proc_factory`) and both clocks are passed in so
tests can use fakes. `refresh()` notices gunicorn or uvicorn workers that appeared (to be
sampled and injected too) and processes that exited (marked, never an error).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from apiscope.collectors.proctree import command_of, socket_inodes, worker_children
from apiscope.collectors.target import ProcFactory, Target
from apiscope.model import ProcessInfo, ResourceSample

Clock = Callable[[], float]
ConnectionCounter = Callable[[Sequence[int]], dict[int, int]]
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess)
# Counting a process's sockets reads the link of each of its file descriptors: on a worker
# holding a few hundred that was a tenth of the collector's polling CPU, done every second.
CONNECTIONS_EVERY = 5


def inet_socket_counts(pids: Sequence[int], proc_root: Path = Path("/proc")) -> dict[int, int]:
    """How many TCP/UDP sockets each process holds: its socket fds that are not Unix sockets.

    The cheap variant of psutil's `net_connections("inet")`: reading /proc/net/tcp makes the
    kernel walk its whole socket hash table (measured: 9 ms with 4,000 TIME_WAIT entries on
    the machine, even for a process with one socket), while /proc/net/unix is small. Netlink
    and other rare socket kinds are counted as inet.
    """
    unix_by_netns: dict[str, frozenset[int]] = {}
    counts: dict[int, int] = {}
    for pid in pids:
        base = proc_root / str(pid)
        try:
            sockets = socket_inodes(pid, str(proc_root))
            if sockets:
                netns = os.readlink(base / "ns" / "net")
                if netns not in unix_by_netns:
                    unix_by_netns[netns] = _unix_inodes(base / "net" / "unix")
                sockets -= unix_by_netns[netns]
            counts[pid] = len(sockets)
        except OSError:
            counts[pid] = 0  # gone, or not ours to read
    return counts


def _unix_inodes(table: Path) -> frozenset[int]:
    lines = table.read_bytes().decode("ascii", "replace").splitlines()[1:]
    return frozenset(int(fields[6]) for fields in (line.split() for line in lines)
                     if len(fields) > 6 and fields[6].isdigit())


@dataclass(frozen=True)
class ProcessChanges:
    """What `refresh()` found since the last call."""

    new: list[ProcessInfo]
    exited: list[int]


@dataclass
class _Tracked:
    """A watched process and the CPU time it had used at the previous reading."""

    proc: psutil.Process
    cpu_seconds: float
    at: float  # monotonic time of that reading


class ResourceCollector:
    """Collects psutil figures for the target's processes: the master (if any) and workers."""

    def __init__(self, target: Target, *, proc_factory: ProcFactory = psutil.Process,
                 clock: Clock = time.time, monotonic: Clock = time.monotonic,
                 connections: ConnectionCounter | None = inet_socket_counts) -> None:
        self._proc_factory = proc_factory
        self._clock = clock
        self._monotonic = monotonic
        self._connections = connections
        self._master = target.master_pid
        self._server = target.server
        self._tracked: dict[int, _Tracked] = {}
        self._gone: list[int] = []  # vanished since the last refresh(), in order
        self._conns: dict[int, int] = {}  # sockets per process, at the last count
        self._collects = 0
        watched = [target.master_pid] if target.master_pid is not None else []
        for pid in [*watched, *target.pids]:
            self._track(pid)

    def alive_pids(self) -> list[int]:
        """The processes still watched (exits are noticed by collect() and refresh())."""
        return sorted(self._tracked)

    def collect(self) -> list[ResourceSample]:
        """One sample per live process; the CPU % covers the time since its previous reading.
        Sockets are counted every `CONNECTIONS_EVERY` samples (and for a process new since
        the last count); the samples between repeat the last count."""
        stale = self._collects % CONNECTIONS_EVERY == 0 or not self._conns.keys() >= \
            self._tracked.keys()
        if self._connections and stale:
            self._conns = self._connections(list(self._tracked))
        self._collects += 1
        conns = self._conns
        samples = []
        for pid in list(self._tracked):
            sample = self._sample(pid, conns.get(pid, 0))
            if sample is not None:
                samples.append(sample)
        return samples

    def refresh(self) -> ProcessChanges:
        """Workers that appeared under the master, and processes that exited, since last time."""
        for pid, tracked in list(self._tracked.items()):
            if not _running(tracked.proc):
                self._forget(pid)
        new = self._new_workers()
        exited, self._gone = self._gone, []
        return ProcessChanges(new=new, exited=exited)

    # -- internals ------------------------------------------------------------------------------

    def _track(self, pid: int) -> bool:
        try:
            proc = self._proc_factory(pid)
            cpu = _cpu_seconds(proc)
        except _GONE:
            self._gone.append(pid)
            return False
        except psutil.AccessDenied:
            return False  # not ours to read: check_ptrace said so already
        self._tracked[pid] = _Tracked(proc=proc, cpu_seconds=cpu, at=self._monotonic())
        return True

    def _forget(self, pid: int) -> None:
        if self._tracked.pop(pid, None) is not None:
            self._gone.append(pid)

    def _new_workers(self) -> list[ProcessInfo]:
        master = self._tracked.get(self._master) if self._master is not None else None
        if master is None:
            return []
        found = []
        for child in worker_children(master.proc, self._server):
            if child.pid in self._tracked:
                continue
            try:
                command = command_of(child.cmdline())
            except _GONE:
                continue  # started and died between two refreshes: nothing to sample
            if self._track(child.pid):
                found.append(ProcessInfo(pid=child.pid, ppid=master.proc.pid, role="worker",
                                         command=command, first_seen=self._clock()))
        return found

    def _sample(self, pid: int, conns: int) -> ResourceSample | None:
        tracked = self._tracked[pid]
        proc = tracked.proc
        try:
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.ZombieProcess(pid)
                now = self._monotonic()
                cpu = _cpu_seconds(proc)
                rss = proc.memory_info().rss
                threads = proc.num_threads()
                ctx = proc.num_ctx_switches()
                fds = _or_zero(proc.num_fds)
                read_bytes, write_bytes = _io_bytes(proc)
        except _GONE:
            self._forget(pid)
            return None
        except psutil.AccessDenied:
            return None  # the basic figures were refused: skip this round, keep watching
        percent = cpu_percent(tracked.cpu_seconds, tracked.at, cpu, now)
        tracked.cpu_seconds, tracked.at = cpu, now
        return ResourceSample(ts=self._clock(), pid=pid, cpu_percent=percent, rss_bytes=rss,
                              threads=threads, fds=fds, connections=conns,
                              ctx_voluntary=ctx.voluntary, ctx_involuntary=ctx.involuntary,
                              read_bytes=read_bytes, write_bytes=write_bytes)


def cpu_percent(before_seconds: float, before_at: float, now_seconds: float,
                now_at: float) -> float:
    """CPU used between two readings as a percentage of one core (200 = two cores busy).

    A clock that did not advance, or CPU time that went backwards (a reused PID), gives 0
    rather than a division by zero or a negative figure.
    """
    elapsed = now_at - before_at
    used = now_seconds - before_seconds
    if elapsed <= 0 or used < 0:
        return 0.0
    return 100.0 * used / elapsed


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running()) and proc.status() != psutil.STATUS_ZOMBIE
    except _GONE:
        return False
    except psutil.AccessDenied:
        return True


def _or_zero(read: Callable[[], int]) -> int:
    try:
        return read()
    except (psutil.AccessDenied, NotImplementedError):
        return 0


def _io_bytes(proc: psutil.Process) -> tuple[int, int]:
    # /proc/PID/io needs ptrace-read rights, and some kernels lack task I/O accounting.
    try:
        io = proc.io_counters()
    except (psutil.AccessDenied, NotImplementedError, AttributeError):
        return 0, 0
    return int(io.read_bytes), int(io.write_bytes)
