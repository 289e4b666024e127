"""WindowMeter: a window py-spy wrote becomes a measured, split StackWindow, in order, and only
once a window recorded without --idle has taught which lines run."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from apiscope.collectors.samplerstats import FailedReads, SamplerStats
from apiscope.collectors.spy import SpyExit
from apiscope.collectors.threadcpu import CpuReading, ThreadCpuReader
from apiscope.collectors.windows import WindowMeter
from apiscope.model import SampleState, StackWindow

WORK = ("thread (10): MainThread;"
        "BaseEventLoop.run_forever (/usr/lib/python3.11/asyncio/base_events.py:607);"
        "handler (/srv/app.py:7)")
SELECT = ("thread (10): MainThread;"
          "BaseEventLoop.run_forever (/usr/lib/python3.11/asyncio/base_events.py:607);"
          "BaseEventLoop._run_once (/usr/lib/python3.11/asyncio/base_events.py:1884);"
          "EpollSelector.select (/usr/lib/python3.11/selectors.py:468)")
EXIT = SpyExit(0, "", "")


class SteppedCpu(ThreadCpuReader):
    """Thread (10, 10) uses `per_read` CPU seconds between two reads."""

    def __init__(self, per_read: float, fail_at: int = 0) -> None:
        super().__init__()
        self.per_read = per_read
        self.total = 0.0
        self.reads = 0
        self.fail_at = fail_at

    def read(self, pids: Iterable[int], parents: Iterable[int] = ()) -> CpuReading:
        self.reads += 1
        if self.reads == self.fail_at:
            raise RuntimeError("unreadable")
        reading = CpuReading({(10, 10): self.total}, {10: self.total})
        self.total += self.per_read
        return reading


def meter(cpu: ThreadCpuReader) -> tuple[WindowMeter, list[StackWindow], SamplerStats]:
    got: list[StackWindow] = []
    stats = SamplerStats()
    m = WindowMeter(10, got.append, stats, cpu)
    m.begin()
    return m, got, stats


def test_windows_wait_for_one_without_idle_then_come_in_order_measured() -> None:
    m, got, stats = meter(SteppedCpu(0.1))
    idle_window = f"{SELECT} 90\n{WORK} 10\n"
    m.add(idle_window, EXIT, 0.0, 1.0, 100)
    assert got == []  # nothing known yet of which lines run
    m.add(f"{WORK} 10\n", EXIT, 1.0, 2.0, 100, active_only=True)
    assert [w.start for w in got] == [0.0, 1.0] and stats.windows == 2
    first = got[0]
    assert first.thread_cpu == {(10, 10): 0.1}
    running = {s.frames[-1].function: s.count for s in first.samples
               if s.state is SampleState.RUNNING}
    # The 0.1 s measured (10 samples) goes mostly to the line that works; one window has taught
    # little yet, so the selector's stack keeps a little of it.
    assert sum(running.values()) == 10 and running["handler"] >= 7


def test_an_unreadable_window_is_counted_and_the_next_one_goes_on() -> None:
    m, got, stats = meter(SteppedCpu(0.1, fail_at=3))  # the reading at the 2nd window's end
    m.add(f"{WORK} 10\n", EXIT, 0.0, 1.0, 100, active_only=True)
    m.add(f"{WORK} 10\n", EXIT, 1.0, 2.0, 100, active_only=True)
    m.add(f"{WORK} 5\n", EXIT, 2.0, 3.0, 100, active_only=True)
    assert [w.start for w in got] == [0.0, 2.0]
    assert stats.failed_windows == 1 and stats.last_failure == "RuntimeError: unreadable"


def test_failed_reads_are_kept_by_window_and_those_of_a_paused_target_told_apart() -> None:
    def spy(errors: int) -> SpyExit:  # its closing line, no failure logged
        return SpyExit(0, f"Samples: 90 Errors: {errors}\n", "")

    m, _, stats = meter(SteppedCpu(0.1))
    m.add(f"{WORK} 90\n", spy(40), 0.0, 1.0, 100, active_only=True)
    m.add(f"{WORK} 40\n", spy(0), 1.0, 9.0, 5, active_only=True)
    m.add(f"{WORK} 40\n", spy(3), 9.0, 17.0, 5, active_only=True)
    assert stats.errors == 43
    assert [(w.start, w.end, w.rate_hz, w.errors) for w in stats.error_windows] == [
        (0.0, 1.0, 100, 40), (9.0, 17.0, 5, 3)]
    # A debugger that held the target from 0.5 s to 1.2 s explains at most the 50 reads of
    # the first window due meanwhile (all 40 failed), none of the third's.
    assert stats.failed_reads([(0.5, 1.2)]) == FailedReads(sampler=3, paused=40)
    assert stats.failed_reads([(0.9, 1.2)]) == FailedReads(sampler=33, paused=10)
    assert stats.failed_reads([]) == FailedReads(sampler=43, paused=0)


def test_failed_reads_logged_with_their_times_are_told_apart_by_them() -> None:
    # 40 reads failed one per 10 ms from 0.5 s (a debugger held the target), then a burst of
    # 20 within 2 ms at 1.5 s: py-spy, behind, made up what it owed against a process held by
    # another tracer. The burst stands for one interval without a sample, not 20.
    failed = (tuple(0.5 + i * 0.01 for i in range(40))
              + tuple(1.5 + i * 0.0001 for i in range(20)))
    m, _, stats = meter(SteppedCpu(0.1))
    m.add(f"{WORK} 90\n", SpyExit(0, "Samples: 90 Errors: 60\n", "", failed_at=failed),
          0.0, 2.0, 100, active_only=True)
    assert stats.errors == 60  # py-spy's count, as it said
    assert stats.failed_reads([(0.5, 0.9)]) == FailedReads(sampler=1, paused=40)
    # one logged a moment after the pause's end is still the pause's
    assert stats.failed_reads([(0.5, 0.85)]) == FailedReads(sampler=1, paused=40)
    assert stats.failed_reads([]) == FailedReads(sampler=41, paused=0)


def test_failed_reads_beyond_those_logged_are_bounded_by_the_rate() -> None:
    # 30 of 50 failed reads have times (the rest were not logged): 20 fall in the pause; of
    # the other 20, the pause explains up to the reads due in it (100 Hz x 0.3 s = 30, less 20).
    failed = tuple(1.0 + i * 0.01 for i in range(20)) + tuple(5.0 + i * 0.01 for i in range(10))
    m, _, stats = meter(SteppedCpu(0.1))
    m.add(f"{WORK} 90\n", SpyExit(0, "Samples: 90 Errors: 50\n", "", failed_at=failed),
          0.0, 9.0, 100, active_only=True)
    assert stats.failed_reads([(1.0, 1.3)]) == FailedReads(sampler=10 + 10, paused=20 + 10)




def test_the_processes_serving_requests_are_told_from_a_master() -> None:
    # A gunicorn master (pid 1, its arbiter asleep) and a worker (pid 10, its event loop): the
    # budget counts a core for the worker only.
    master = ("thread (1): MainThread;Arbiter.run (/srv/venv/lib/python3.11/site-packages/"
              "gunicorn/arbiter.py:209);Arbiter.sleep (/srv/venv/lib/python3.11/site-packages/"
              "gunicorn/arbiter.py:357)")
    m, _, _ = meter(SteppedCpu(0.1))
    assert m.serving == set()
    m.add([(f"{master} 100\n", 1), (f"{SELECT} 90\n{WORK} 10\n", 10)], EXIT, 0.0, 1.0, 100)
    assert m.serving == {10} and m.pids >= {1, 10}
    # A window sampled without --idle sees nothing of an idle worker: it serves all the same
    # (counted for nothing there, each such window read the cost of two workers as twice
    # what it was).
    m.add([(f"{master} 100\n", 1), (f"{SELECT} 90\n{WORK} 10\n", 10),
           (f"{SELECT} 50\n{WORK} 50\n", 11)], EXIT, 1.0, 2.0, 100)
    assert m.serving == {10, 11}
    m.add([(f"{master} 10\n", 1), (f"{WORK} 50\n", 11)], EXIT, 2.0, 3.0, 100, active_only=True)
    assert m.serving == {10, 11}


class ProcessTable(ThreadCpuReader):
    """The kernel's figures for whichever processes live now (`cpu`: pid -> its one thread's
    cumulative seconds) and what master 1 has reaped."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu: dict[int, float] = {}
        self.reaped = 0.0
        self.host: tuple[int, int] | None = None  # the host's (busy, all) ticks

    def read(self, pids: Iterable[int], parents: Iterable[int] = ()) -> CpuReading:
        live = {pid: self.cpu[pid] for pid in pids if pid in self.cpu}
        return CpuReading({(pid, pid): s for pid, s in live.items()}, live,
                          reaped={1: self.reaped} if 1 in set(parents) else {}, host=self.host)


def worker_stack(pid: int) -> str:
    return WORK.replace("thread (10)", f"thread ({pid})")


def master_of(cpu: dict[int, float]) -> tuple[ProcessTable, list[StackWindow], WindowMeter]:
    """A meter of master 1's workers (`cpu`: their CPU seconds so far), begun."""
    table = ProcessTable()
    table.cpu = dict(cpu)
    got: list[StackWindow] = []
    m = WindowMeter(1, got.append, SamplerStats(), table, reads_root=False)
    m.begin(list(cpu))
    return table, got, m


def test_a_recycled_worker_is_measured_from_its_first_window_and_the_old_one_to_its_end() -> None:
    """gunicorn's --max-requests: worker 10 exits within window 2, worker 11 (born within
    window 1) is first sampled in window 2. Both are measured there: 11 from the reading at
    window 1's end (the launch of window 2 named it), 10 by what the master reaped."""
    table, got, m = master_of({10: 1.0})
    table.cpu = {10: 1.5, 11: 0.75}  # 11 has started (its import)
    m.expect([10, 11])  # window 2 launches with both
    m.add([(f"{worker_stack(10)} 10\n", 10)], EXIT, 0.0, 1.0, 100, active_only=True)
    table.cpu = {11: 1.0}  # 10 exited at 2.25 s of CPU and was reaped
    table.reaped = 2.25
    m.add([(f"{worker_stack(10)} 5\n", 10), (f"{worker_stack(11)} 10\n", 11)], EXIT, 1.0,
          2.0, 100, active_only=True)
    # 11 read from the launch on: nothing used in window 1 (it was not sampled there).
    assert [w.process_cpu for w in got] == [{10: 0.5, 11: 0.0}, {10: 0.75, 11: 0.25}]
    assert got[1].thread_cpu == {(11, 11): 0.25}


def test_the_hosts_busy_share_is_kept_when_a_new_worker_is_read_as_its_window_starts() -> None:
    table = ProcessTable()
    table.cpu, table.host = {10: 1.0}, (100, 1000)
    got: list[StackWindow] = []
    m = WindowMeter(1, got.append, SamplerStats(), table, reads_root=False)
    m.begin([10])
    table.cpu, table.host = {10: 1.5, 11: 0.75}, (160, 1100)  # read for 11 only, mid-window
    m.expect([10, 11])
    table.host = (250, 1200)
    m.add([(f"{worker_stack(10)} 10\n", 10)], EXIT, 0.0, 1.0, 100, active_only=True)
    assert got[0].host_busy == pytest.approx(150 / 200)  # from the window's start, not 11's


def test_workers_started_after_a_window_ended_are_read_as_their_window_starts() -> None:
    """All the workers a window sampled exited within it: their py-spys ended it, and the next
    one starts for their successors only after it was measured."""
    table, got, m = master_of({10: 1.0})
    table.cpu, table.reaped = {}, 1.5  # 10 exited at 1.5 s
    m.add([(f"{worker_stack(10)} 10\n", 10)], EXIT, 0.0, 1.0, 100, active_only=True)
    table.cpu = {11: 0.75}
    m.expect([11])
    table.cpu = {11: 1.0}
    m.add([(f"{worker_stack(11)} 10\n", 11)], EXIT, 1.0, 2.0, 100, active_only=True)
    assert [w.process_cpu for w in got] == [{10: 0.5}, {11: 0.25}]


def test_a_worker_gone_between_its_window_launching_and_the_last_one_ending_is_measured() -> None:
    """Windows overlap while they hand over: the next one launches (and reads its new worker
    12) before the last one is measured. 12 served a few requests, was sampled by the new
    window and exited before the last one's reading: what it used after the launch is the new
    window's, where its samples are, never the last one's (where it was not sampled)."""
    table, got, m = master_of({10: 1.0})
    table.cpu = {10: 1.5, 12: 0.5}
    m.expect([10, 12])  # window 2 launches with both
    table.cpu, table.reaped = {10: 1.6}, 0.75  # 12 exited at 0.75 s of CPU and was reaped
    m.add([(f"{worker_stack(10)} 10\n", 10)], EXIT, 0.0, 1.0, 100, active_only=True)
    table.cpu = {10: 2.0}
    m.add([(f"{worker_stack(10)} 10\n", 10), (f"{worker_stack(12)} 2\n", 12)], EXIT, 1.0,
          2.0, 100, active_only=True)
    assert [w.process_cpu for w in got] == [pytest.approx({10: 0.6}),
                                            pytest.approx({10: 0.4, 12: 0.25})]


def test_a_worker_exiting_as_a_window_starts_is_measured_to_its_end_in_the_last_one() -> None:
    """Worker 10 exits just as window 2 starts: window 2's py-spy still took a couple of its
    samples, but the reading that ended window 1 found it gone and measured it to its end
    there. In window 2 it used nothing: measured (0), not left to a guess."""
    table, got, m = master_of({10: 1.0})
    table.cpu = {10: 1.5, 11: 0.5}
    m.expect([10, 11])  # window 2 launches with both
    table.cpu, table.reaped = {11: 0.6}, 1.75  # 10 exited at 1.75 s of CPU and was reaped
    m.add([(f"{worker_stack(10)} 10\n", 10)], EXIT, 0.0, 1.0, 100, active_only=True)
    table.cpu = {11: 1.0}
    m.add([(f"{worker_stack(10)} 2\n", 10), (f"{worker_stack(11)} 10\n", 11)], EXIT, 1.0,
          2.0, 100, active_only=True)
    assert [w.process_cpu for w in got] == [pytest.approx({10: 0.75, 11: 0.1}),
                                            pytest.approx({10: 0.0, 11: 0.4})]
    running = sum(s.count for s in got[1].samples
                  if s.pid == 10 and s.state is SampleState.RUNNING)
    assert running == 0
