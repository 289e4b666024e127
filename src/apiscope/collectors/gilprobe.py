"""A low-rate probe of which threads are on-CPU and which hold the GIL.

py-spy's raw format (what `StackSampler` records at 100 Hz) carries no per-sample activity:
with `--idle` a thread sleeping in `time.sleep` inside a handler and a thread computing in that
handler look the same. `py-spy dump --json` does say, per thread, `active` (py-spy's on-CPU
verdict, from the OS thread state) and `owns_gil`. This probe runs one dump every `interval`
seconds per process and the sampler matches its snapshots to the recorded stacks by
(pid, tid, leaf frame): a stack the probe saw mostly off-CPU is BLOCKED, mostly on-CPU is
RUNNING, and its `gil` is what the probe saw. Stacks the probe never saw keep `gil=None`.

Dumps run with `--nonblocking` by default: a blocking dump would ptrace-stop the target while
the recording py-spy is stopping it too, and each collision costs the recording one sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from apiscope.collectors.pyspy import dump_argv
from apiscope.collectors.threads import Activity, LeafKey
from apiscope.model import Frame


@dataclass(frozen=True, slots=True)
class ThreadSnapshot:
    """One thread as one `py-spy dump` saw it."""

    ts: float
    pid: int
    tid: int
    name: str
    active: bool
    owns_gil: bool
    leaf: Frame | None


@dataclass(frozen=True, slots=True)
class DumpResult:
    returncode: int
    stdout: str
    cpu_seconds: float  # py-spy's own user+system time for this dump


RunDump = Callable[[Sequence[str], float], DumpResult]


def parse_dump_json(text: str, ts: float, default_pid: int = 0) -> list[ThreadSnapshot]:
    """`py-spy dump --json` output (a list of threads, frames leaf first) as snapshots."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return []
    if not isinstance(data, list):
        return []
    return [snap for item in data if (snap := _snapshot(item, ts, default_pid)) is not None]


def _snapshot(item: Any, ts: float, default_pid: int) -> ThreadSnapshot | None:
    if not isinstance(item, dict):
        return None
    # Same id the raw format prints: the OS thread id, else the pthread id.
    tid = item.get("os_thread_id") or item.get("thread_id") or 0
    frames = item.get("frames") or []
    leaf = _frame(frames[0]) if frames and isinstance(frames[0], dict) else None
    return ThreadSnapshot(ts=ts, pid=int(item.get("pid") or default_pid), tid=int(tid),
                          name=str(item.get("thread_name") or ""),
                          active=bool(item.get("active")), owns_gil=bool(item.get("owns_gil")),
                          leaf=leaf)


def _frame(raw: dict[str, Any]) -> Frame:
    return Frame(str(raw.get("name", "")), str(raw.get("filename") or ""),
                 int(raw.get("line") or 0))


def activity_index(snapshots: Iterable[ThreadSnapshot]) -> dict[LeafKey, Activity]:
    seen: Counter[LeafKey] = Counter()
    active: Counter[LeafKey] = Counter()
    gil: Counter[LeafKey] = Counter()
    for snap in snapshots:
        if snap.leaf is None:
            continue
        key = (snap.pid, snap.tid, snap.leaf)
        seen[key] += 1
        active[key] += snap.active
        gil[key] += snap.owns_gil
    return {key: Activity(n, active[key], gil[key]) for key, n in seen.items()}


def run_dump(argv: Sequence[str], timeout: float) -> DumpResult:
    """Run one dump, reaping it with wait4 to learn its own CPU time."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    killer = threading.Timer(timeout, proc.kill)  # a hung dump must not stall the probe
    killer.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return DumpResult(proc.returncode, out.decode(errors="replace"),
                      usage.ru_utime + usage.ru_stime)


class ActivityProbe:
    """Periodic `py-spy dump --json` of the given processes, buffered until taken."""

    def __init__(self, pyspy: str, *, interval: float = 0.5, nonblocking: bool = True,
                 run: RunDump = run_dump, clock: Callable[[], float] = time.time,
                 timeout: float = 5.0) -> None:
        self._pyspy = pyspy
        self._interval = interval
        self._nonblocking = nonblocking
        self._run = run
        self._clock = clock
        self._timeout = timeout
        self._buffer: list[ThreadSnapshot] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dumps = 0
        self.failures = 0
        self.cpu_seconds = 0.0  # py-spy's CPU over all dumps: the probe's overhead

    def start(self, pids: Callable[[], Iterable[int]]) -> None:
        self._thread = threading.Thread(target=self._loop, args=(pids,), daemon=True,
                                        name="apiscope-activity-probe")
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def probe_once(self, pid: int) -> list[ThreadSnapshot]:
        ts = self._clock()
        argv = dump_argv(self._pyspy, pid, nonblocking=self._nonblocking)
        result = self._run(argv, self._timeout)
        self.dumps += 1
        self.cpu_seconds += result.cpu_seconds
        snaps = parse_dump_json(result.stdout, ts, pid) if result.returncode == 0 else []
        if not snaps:
            self.failures += 1
        with self._lock:
            self._buffer.extend(snaps)
        return snaps

    def take(self, until: float) -> list[ThreadSnapshot]:
        """Remove and return the snapshots taken before `until` (epoch seconds)."""
        with self._lock:
            taken = [s for s in self._buffer if s.ts < until]
            self._buffer = [s for s in self._buffer if s.ts >= until]
        return taken

    def _loop(self, pids: Callable[[], Iterable[int]]) -> None:
        while not self._stop.wait(self._interval):
            # py-spy's dump --subprocesses --json lists only the parent's threads: one dump
            # per process instead.
            for pid in list(pids()):
                if self._stop.is_set():
                    return
                self.probe_once(pid)
