"""ResourceCollector over fake processes and fake clocks: the CPU % arithmetic and exits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from apiscope.collectors.resources import CONNECTIONS_EVERY, ResourceCollector, cpu_percent
from apiscope.collectors.target import Target
from apiscope.model import ProcessInfo
from tests.support import FakeClock


class FakeProcess:
    """The psutil.Process methods the collector reads, with values a test sets."""

    def __init__(self, pid: int, *, cmdline: list[str] | None = None) -> None:
        self.pid = pid
        self.user = 0.0
        self.system = 0.0
        self.rss = 50_000_000
        self.threads = 3
        self.fds = 12
        self.gone = False
        self.zombie = False
        self.deny_io = False
        self.kids: list[FakeProcess] = []
        self._cmdline = cmdline or ["python", "-m", "gunicorn", "app:app"]

    def _check(self) -> None:
        if self.gone:
            raise psutil.NoSuchProcess(self.pid)

    @contextmanager
    def oneshot(self) -> Iterator[None]:
        yield

    def status(self) -> str:
        self._check()
        return psutil.STATUS_ZOMBIE if self.zombie else psutil.STATUS_SLEEPING

    def is_running(self) -> bool:
        return not self.gone

    def cpu_times(self) -> Any:
        self._check()
        return SimpleNamespace(user=self.user, system=self.system)

    def memory_info(self) -> Any:
        self._check()
        return SimpleNamespace(rss=self.rss)

    def num_threads(self) -> int:
        self._check()
        return self.threads

    def num_fds(self) -> int:
        self._check()
        return self.fds

    def num_ctx_switches(self) -> Any:
        return SimpleNamespace(voluntary=7, involuntary=2)

    def io_counters(self) -> Any:
        if self.deny_io:
            raise psutil.AccessDenied(self.pid)
        return SimpleNamespace(read_bytes=4096, write_bytes=8192)

    def cmdline(self) -> list[str]:
        self._check()
        return self._cmdline

    def children(self) -> list[FakeProcess]:
        self._check()
        return [k for k in self.kids if not k.gone]


class FakeOS:
    """A process table for `proc_factory`."""

    def __init__(self, *procs: FakeProcess) -> None:
        self.procs = {p.pid: p for p in procs}

    def __call__(self, pid: int) -> FakeProcess:
        proc = self.procs.get(pid)
        if proc is None or proc.gone:
            raise psutil.NoSuchProcess(pid)
        return proc


def target_of(pids: list[int], master: int | None = None) -> Target:
    infos = [ProcessInfo(pid=p, ppid=master, role="worker", command="x", first_seen=0.0)
             for p in pids]
    return Target(pid=master or pids[0], pids=pids, master_pid=master, server="gunicorn",
                  command="x", python_version="3.11.7", processes=infos)


def collector(os_: FakeOS, target: Target, mono: FakeClock) -> ResourceCollector:
    return ResourceCollector(target, proc_factory=os_, clock=FakeClock(5e8), monotonic=mono,
                             connections=lambda pids: {p: 2 for p in pids})


def test_cpu_percent_is_cpu_seconds_over_wall_seconds_in_percent_of_one_core() -> None:
    assert cpu_percent(10.0, 100.0, 10.5, 101.0) == pytest.approx(50.0)
    assert cpu_percent(10.0, 100.0, 13.0, 102.0) == pytest.approx(150.0)  # 1.5 cores
    assert cpu_percent(10.0, 100.0, 10.0, 100.0) == 0.0  # the clock did not move
    assert cpu_percent(10.0, 100.0, 2.0, 101.0) == 0.0  # a reused PID: CPU time went back


def test_collect_measures_cpu_between_calls_from_the_baseline_taken_when_tracked() -> None:
    proc = FakeProcess(10)
    proc.user, proc.system = 4.0, 1.0
    mono = FakeClock()
    rc = collector(FakeOS(proc), target_of([10]), mono)

    mono.advance(2.0)
    proc.user += 0.6
    proc.system += 0.4
    (first,) = rc.collect()
    assert first.cpu_percent == pytest.approx(50.0)  # 1 s of CPU in 2 s
    assert (first.pid, first.rss_bytes, first.threads, first.fds) == (10, 50_000_000, 3, 12)
    assert (first.connections, first.ctx_voluntary, first.ctx_involuntary) == (2, 7, 2)
    assert (first.read_bytes, first.write_bytes) == (4096, 8192)
    assert first.ts == 5e8

    mono.advance(0.5)
    proc.user += 1.0  # two threads busy for the half second
    (second,) = rc.collect()
    assert second.cpu_percent == pytest.approx(200.0)

    mono.advance(1.0)
    (idle,) = rc.collect()
    assert idle.cpu_percent == 0.0


def test_figures_the_os_refuses_read_as_zero() -> None:
    proc = FakeProcess(10)
    proc.deny_io = True
    rc = collector(FakeOS(proc), target_of([10]), FakeClock())
    (sample,) = rc.collect()
    assert (sample.read_bytes, sample.write_bytes) == (0, 0)
    assert sample.rss_bytes > 0


def test_a_process_vanishing_between_calls_is_reported_once_as_exited() -> None:
    a, b = FakeProcess(10), FakeProcess(11)
    rc = collector(FakeOS(a, b), target_of([10, 11]), FakeClock())
    assert {s.pid for s in rc.collect()} == {10, 11}

    b.gone = True
    assert [s.pid for s in rc.collect()] == [10]
    assert rc.alive_pids() == [10]
    changes = rc.refresh()
    assert changes.exited == [11] and changes.new == []
    assert rc.refresh().exited == []


def test_a_zombie_worker_counts_as_exited() -> None:
    a = FakeProcess(10)
    rc = collector(FakeOS(a), target_of([10]), FakeClock())
    a.zombie = True
    assert rc.refresh().exited == [10]
    assert rc.collect() == [] and rc.alive_pids() == []


def test_a_pid_gone_before_tracking_is_exited_at_the_first_refresh() -> None:
    a = FakeProcess(10)
    rc = collector(FakeOS(a), target_of([10, 99]), FakeClock())
    assert rc.alive_pids() == [10]
    assert rc.refresh().exited == [99]


def test_refresh_finds_a_masters_new_workers_and_its_exited_ones() -> None:
    master = FakeProcess(1)
    old, tracker = FakeProcess(2), FakeProcess(
        3, cmdline=["python", "-c", "from multiprocessing.resource_tracker import main;main(6)"])
    master.kids = [old, tracker]
    fake_os = FakeOS(master, old, tracker)
    rc = collector(fake_os, target_of([2], master=1), FakeClock())
    assert rc.alive_pids() == [1, 2]
    assert rc.refresh() == rc.refresh()  # nothing changed: no new, no exited

    old.gone = True
    new = FakeProcess(4)
    master.kids.append(new)
    fake_os.procs[4] = new
    changes = rc.refresh()
    assert changes.exited == [2]
    assert [(i.pid, i.ppid, i.role) for i in changes.new] == [(4, 1, "worker")]
    assert rc.alive_pids() == [1, 4]
    assert {s.pid for s in rc.collect()} == {1, 4}


def test_sockets_are_counted_every_few_samples_and_for_each_new_process() -> None:
    master, first = FakeProcess(1), FakeProcess(2)
    master.kids = [first]
    fake_os = FakeOS(master, first)
    counted: list[list[int]] = []
    sockets = {1: 1, 2: 5}

    def count(pids: list[int]) -> dict[int, int]:
        counted.append(sorted(pids))
        return {p: sockets.get(p, 0) for p in pids}

    rc = ResourceCollector(target_of([2], master=1), proc_factory=fake_os, clock=FakeClock(5e8),
                           monotonic=FakeClock(), connections=count)
    assert {s.pid: s.connections for s in rc.collect()} == {1: 1, 2: 5}
    sockets[2] = 9
    for _ in range(CONNECTIONS_EVERY - 1):  # the samples between repeat the last count
        assert {s.pid: s.connections for s in rc.collect()} == {1: 1, 2: 5}
    assert len(counted) == 1
    assert {s.pid: s.connections for s in rc.collect()} == {1: 1, 2: 9}
    assert len(counted) == 2

    second = FakeProcess(3)
    master.kids.append(second)
    fake_os.procs[3] = second
    sockets[3] = 4
    rc.refresh()
    assert {s.pid: s.connections for s in rc.collect()} == {1: 1, 2: 9, 3: 4}  # counted now
    assert counted[-1] == [1, 2, 3]
