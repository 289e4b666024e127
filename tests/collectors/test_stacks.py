"""StackSampler's window rotation and ending, driven by a scripted stand-in for py-spy.

The live behaviour against real servers is in test_stacks_live.py; these tests pin down the
rotation logic (no gap, final window on stop, target exit, failures) deterministically.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from apiscope.collectors.samplerstats import EndReason, window_loss
from apiscope.collectors.spy import SpyExit
from apiscope.collectors.stacks import StackSampler
from apiscope.collectors.threadcpu import CpuReading, ThreadCpuReader
from apiscope.errors import TargetError
from apiscope.model import SampleState, StackSample, StackWindow, ThreadRole
from tests.support import wait_until

LOOP_STACK = ("thread (10): MainThread;"
              "BaseEventLoop.run_forever (/usr/lib/python3.11/asyncio/base_events.py:607);"
              "BaseEventLoop._run_once (/usr/lib/python3.11/asyncio/base_events.py:1884);"
              "EpollSelector.select (/usr/lib/python3.11/selectors.py:468)")
HANDLER_STACK = ("thread (10): MainThread;"
                 "BaseEventLoop.run_forever (/usr/lib/python3.11/asyncio/base_events.py:607);"
                 "handler (/srv/app.py:7)")


DEFAULT_OUTPUT = f"{LOOP_STACK} 45\n{HANDLER_STACK} 4\n"  # 0.9 s and 0.08 s at 50 Hz
ACTIVE_OUTPUT = f"{HANDLER_STACK} 8\n"  # without --idle, idle threads are left out


@dataclass
class Behaviour:
    ready: bool = True
    output: str | None = DEFAULT_OUTPUT
    ends_alone: bool = False  # like py-spy when the target exits: file written, exit 0
    stderr: str = ""
    returncode: int = 0
    errors: int = 2


class FakeSpy:
    def __init__(self, argv: Sequence[str], behaviour: Behaviour) -> None:
        self.argv = list(argv)
        self.output = Path(argv[argv.index("--output") + 1])
        self.behaviour = behaviour
        self.ended = False
        self.interrupted = False
        if behaviour.ends_alone:
            self._end()

    def _end(self) -> None:
        if not self.ended and self.behaviour.output is not None:
            # Without --idle py-spy leaves idle threads out: the loop's selector wait here.
            active_only = "--idle" not in self.argv and self.behaviour.output == DEFAULT_OUTPUT
            self.output.write_text(ACTIVE_OUTPUT if active_only else self.behaviour.output)
        self.ended = True

    def wait_ready(self, timeout: float) -> bool:
        return self.behaviour.ready

    def poll(self) -> int | None:
        return self.behaviour.returncode if self.ended else None

    def interrupt(self) -> None:
        self.interrupted = True
        self._end()

    def cpu_seconds(self) -> float:
        return 0.01

    def finish(self, timeout: float) -> SpyExit:
        self._end()
        errors = self.behaviour.errors
        summary = f"py-spy> Wrote raw flamegraph data. Samples: 98 Errors: {errors}\n"
        return SpyExit(self.behaviour.returncode, summary if self.behaviour.ready else "",
                       self.behaviour.stderr)


class Spawner:
    """Hands out FakeSpy processes: scripted behaviours first, then the default."""

    def __init__(self, *script: Behaviour) -> None:
        self.script = list(script)
        self.spies: list[FakeSpy] = []

    def __call__(self, argv: Sequence[str]) -> FakeSpy:
        spy = FakeSpy(argv, self.script.pop(0) if self.script else Behaviour())
        self.spies.append(spy)
        return spy


class Collected:
    def __init__(self) -> None:
        self.windows: list[StackWindow] = []
        self.ends: list[tuple[EndReason, Exception | None]] = []
        self.lock = threading.Lock()

    def window(self, window: StackWindow) -> None:
        with self.lock:
            self.windows.append(window)

    def end(self, reason: EndReason, error: Exception | None) -> None:
        self.ends.append((reason, error))


class FakeCpu(ThreadCpuReader):
    """The kernel's figures for thread (10, 10): on a CPU `fraction` of the time."""

    def __init__(self, fraction: float = 0.5, fail: bool = False) -> None:
        super().__init__()
        self.fraction = fraction
        self.fail = fail
        self.reads = 0

    def read(self, pids: object, parents: object = ()) -> CpuReading:
        self.reads += 1
        if self.fail and self.reads > 1:
            raise RuntimeError("unreadable")
        now = time.time() * self.fraction
        return CpuReading({(10, 10): now}, {10: now})


def sampler(spawner: Spawner, got: Collected, *, alive: bool = True,
            cpu: ThreadCpuReader | None = None, **options: object) -> StackSampler:
    return StackSampler(10, on_window=got.window, on_end=got.end, spawn=spawner,
                        pyspy="/bin/py-spy", alive=lambda pid: alive, window_seconds=0.02,
                        cpu_reader=cpu or FakeCpu(), **options)  # type: ignore[arg-type]


def test_windows_rotate_without_gap_and_stop_delivers_the_last() -> None:
    spawner, got = Spawner(), Collected()
    s = sampler(spawner, got, rate_hz=50)
    s.start()
    wait_until(lambda: len(got.windows) >= 5, what="five windows")
    s.stop()
    assert s.end_reason is EndReason.STOPPED and s.error is None
    assert got.ends == [(EndReason.STOPPED, None)]
    # Every py-spy started was stopped with SIGINT and its file became one window.
    assert len(got.windows) == len(spawner.spies) == s.stats.windows
    assert all(spy.interrupted for spy in spawner.spies)
    for before, after in zip(got.windows, got.windows[1:], strict=False):
        assert after.start <= before.end  # the next one samples before this one stops
    window = got.windows[1]  # the first with --idle
    assert window.rate_hz == 50 and window.errors == 2
    assert window.threads == {(10, 10): ThreadRole.LOOP}
    counts = {(s.frames[-1].function, s.state): s.count for s in window.samples}
    # 0.9 s at the selector and 0.08 s in the handler, at 50 Hz; the kernel says the thread ran
    # half the window: the handler's line runs (it shows as much without --idle), the rest
    # of the measured time goes to the selector (the loop's own C work there).
    assert counts[("handler", SampleState.RUNNING)] == 4
    assert counts[("EpollSelector.select", SampleState.RUNNING)] in range(19, 24)
    assert sum(counts.values()) == 49
    assert window.thread_cpu and abs(window.thread_cpu[(10, 10)]
                                     - 0.5 * (window.end - window.start)) < 0.02
    # 49 samples a window; the windows without --idle hold the handler's 8 (at 100 Hz) alone
    assert s.stats.stored == 49 * len(got.windows) - 41 * s.stats.activity_windows
    assert len(s.stats.handovers) == len(got.windows) - 1
    argv = spawner.spies[0].argv
    assert argv[:4] == ["/bin/py-spy", "record", "--pid", "10"]
    # the 1st window, then every 4th, without --idle: py-spy's view of which threads are active
    assert ["--idle" in spy.argv for spy in spawner.spies[:5]] == [False, True, True, True, False]
    assert s.stats.activity_windows == len(spawner.spies[0::4])
    assert argv[-2:] == ["--duration", "30"]  # only a bound for when apiscope dies


def test_target_exit_ends_the_sampler_cleanly_with_its_last_window() -> None:
    spawner = Spawner(Behaviour(), Behaviour(ends_alone=True))
    got = Collected()
    s = sampler(spawner, got, alive=False)
    s.start()
    assert s.wait(10)
    assert s.end_reason is EndReason.TARGET_EXITED and s.error is None
    assert got.ends == [(EndReason.TARGET_EXITED, None)]
    assert len(got.windows) == 2
    assert not s.running


def test_permission_denied_at_start_is_a_target_error_naming_the_fixes() -> None:
    denied = Behaviour(ready=False, output=None, returncode=1, stderr=(
        "Permission Denied: Try running again with elevated permissions by going "
        "'sudo env \"PATH=$PATH\" !!'\n"))
    got = Collected()
    s = sampler(Spawner(denied), got)
    with pytest.raises(TargetError) as info:
        s.start()
    assert "kernel.yama.ptrace_scope" in info.value.message
    assert "--cap-add SYS_PTRACE" in info.value.message
    assert not s.running and got.windows == []


def test_a_target_that_is_gone_at_start() -> None:
    gone = Behaviour(ready=False, output=None, returncode=1,
                     stderr="Error: Failed to get process executable name. Check that the "
                            "process is running.\n")
    with pytest.raises(TargetError, match="not running"):
        sampler(Spawner(gone), Collected(), alive=False).start()


BROKEN = Behaviour(ready=False, output=None, returncode=1,
                   stderr="Error: Failed to find python version from target process\n")


def test_a_failed_mid_session_start_is_retried_while_the_old_one_samples() -> None:
    got = Collected()
    s = sampler(Spawner(Behaviour(), BROKEN, BROKEN), got)
    s.start()
    wait_until(lambda: len(got.windows) >= 2, what="windows after the retries")
    s.stop()
    assert s.end_reason is EndReason.STOPPED
    assert s.stats.launch_retries == 2
    for before, after in zip(got.windows, got.windows[1:], strict=False):
        assert after.start <= before.end  # still no gap


def test_py_spy_failing_mid_session_ends_as_failed_after_delivering() -> None:
    got = Collected()
    s = sampler(Spawner(Behaviour(), BROKEN, BROKEN, BROKEN), got)
    s.start()
    assert s.wait(10)
    assert s.end_reason is EndReason.FAILED
    assert isinstance(s.error, TargetError)
    assert "Failed to find python version" in s.error.message
    assert len(got.windows) == 1  # the window in progress was not lost


def test_a_window_without_output_is_dropped_and_counted() -> None:
    got = Collected()
    s = sampler(Spawner(Behaviour(output=None)), got)
    s.start()
    wait_until(lambda: len(got.windows) >= 1, what="a window after the dropped one")
    s.stop()
    assert s.stats.dropped_windows == 1
    assert s.stats.windows == len(got.windows)


def test_stop_from_the_window_callback_does_not_deadlock() -> None:
    holder: list[StackSampler] = []
    got = Collected()

    def on_window(window: StackWindow) -> None:
        got.window(window)
        holder[0].stop()

    s = StackSampler(10, on_window=on_window, spawn=Spawner(), pyspy="/bin/py-spy",
                     alive=lambda pid: True, window_seconds=0.02)
    holder.append(s)
    s.start()
    assert s.wait(10)
    assert s.end_reason is EndReason.STOPPED


def test_window_loss_counts_every_thread() -> None:
    def sample(tid: int, count: int) -> StackSample:
        return StackSample(1, tid, "t", (), count)

    window = StackWindow(start=100.0, end=102.0, rate_hz=100,
                         samples=(sample(1, 150), sample(1, 40), sample(2, 200)), errors=3)
    loss = window_loss(window)
    assert (loss.expected, loss.stored, loss.errors) == (400.0, 390, 3)
    # Recorded without --idle, threads show only while active: no loss can be told.
    active = dataclasses.replace(window, active_only=True)
    loss = window_loss(active)
    assert (loss.expected, loss.stored, loss.errors) == (390.0, 390, 3)


def test_a_thread_that_ended_within_the_window_is_expected_what_it_showed() -> None:
    def sample(tid: int, count: int) -> StackSample:
        return StackSample(1, tid, "t", (), count)

    # Thread 3 served one request and ended: the kernel had no reading of it at the end.
    window = StackWindow(start=100.0, end=102.0, rate_hz=100,
                         samples=(sample(1, 190), sample(2, 200), sample(3, 4)),
                         thread_cpu={(1, 1): 0.5, (1, 2): 0.1})
    loss = window_loss(window)
    assert (loss.expected, loss.stored) == (404.0, 394)
    # Without kernel readings (the process could not be read) every thread is expected whole.
    assert window_loss(dataclasses.replace(window, thread_cpu={})).expected == 600.0


def test_a_thread_that_started_within_the_window_is_expected_what_it_showed() -> None:
    def sample(tid: int, count: int) -> StackSample:
        return StackSample(1, tid, "t", (), count)

    # Thread 3 was opened for a database connection late in the window (aiosqlite does so).
    window = StackWindow(start=100.0, end=102.0, rate_hz=100,
                         samples=(sample(1, 190), sample(2, 200), sample(3, 30)),
                         thread_cpu={(1, 1): 0.5, (1, 2): 0.1, (1, 3): 0.01},
                         thread_born=frozenset({(1, 3)}))
    loss = window_loss(window)
    assert (loss.expected, loss.stored) == (430.0, 420)
    assert window_loss(dataclasses.replace(window, thread_born=frozenset())).expected == 600.0


def test_a_failing_callback_ends_the_sampler_and_leaves_no_py_spy_running() -> None:
    spawner = Spawner()

    def on_window(window: StackWindow) -> None:
        raise ValueError("store is full")

    s = StackSampler(10, on_window=on_window, spawn=spawner, pyspy="/bin/py-spy",
                     alive=lambda pid: True, window_seconds=0.02)
    s.start()
    assert s.wait(10)
    assert s.end_reason is EndReason.FAILED and isinstance(s.error, ValueError)
    assert len(spawner.spies) <= 3 and all(spy.ended for spy in spawner.spies)


def test_a_window_that_cannot_be_classified_is_counted_and_sampling_goes_on() -> None:
    spawner, got = Spawner(), Collected()
    s = sampler(spawner, got, cpu=FakeCpu(fail=True))
    s.start()
    wait_until(lambda: s.stats.failed_windows >= 3, what="three failed windows")
    s.stop()
    assert s.end_reason is EndReason.STOPPED and s.error is None
    assert got.windows == [] and s.stats.last_failure == "RuntimeError: unreadable"


def test_a_budget_lowers_the_rate_of_the_next_windows_to_what_it_affords() -> None:
    from apiscope.collectors.budget import FIRST_RATE, LAST_RESORT_RATE, OverheadBudget

    spawner, got = Spawner(), Collected()
    # Each fake py-spy reports 10 ms of CPU over a ~20 ms window: far above a 2% budget.
    s = sampler(spawner, got, rate_hz=100, budget=OverheadBudget(0.02, 100, min_rate=5))
    s.start()
    wait_until(lambda: len(got.windows) >= 5, what="five windows")
    s.stop()
    assert got.windows[0].rate_hz == FIRST_RATE  # no cost known yet: the opening rate
    # The floor, then, since even it costs more than the budget (twice), the last resort.
    rates = [int(spy.argv[spy.argv.index("--rate") + 1]) for spy in spawner.spies]
    assert rates[0] == FIRST_RATE and rates[1:3] == [5, 5] and rates[-1] == LAST_RESORT_RATE
    assert got.windows[-1].rate_hz == LAST_RESORT_RATE
    assert s.budget is not None and s.budget.over_budget


class WorkerSpy(FakeSpy):
    """A py-spy of one worker (no --subprocesses): its threads carry the worker's pid."""

    def _end(self) -> None:
        if not self.ended and self.behaviour.output is not None:
            self.output.write_text(ACTIVE_OUTPUT if "--idle" not in self.argv
                                   else f"{LOOP_STACK} 90\n{HANDLER_STACK} 8\n")
        self.ended = True


class WorkerSpawner(Spawner):
    def __call__(self, argv: Sequence[str]) -> FakeSpy:
        pid = int(argv[argv.index("--pid") + 1])
        behaviour = self.script.pop(0) if self.script and pid == 22 else Behaviour()
        spy = WorkerSpy(argv, behaviour)
        self.spies.append(spy)
        return spy


class WorkersCpu(ThreadCpuReader):
    """Thread 10 of each process read runs half the time; remembers which were read."""

    def __init__(self) -> None:
        super().__init__()
        self.read_pids: set[int] = set()

    def read(self, pids: object, parents: object = ()) -> CpuReading:
        wanted = set(pids)  # type: ignore[call-overload]
        self.read_pids |= wanted
        now = time.time() * 0.5
        return CpuReading({(pid, 10): now for pid in wanted}, {pid: now for pid in wanted})


def test_a_masters_workers_get_a_py_spy_each_and_make_one_window() -> None:
    # Worker 22's second py-spy cannot start (its worker exits as it attaches): that window
    # comes with worker 21's samples alone.
    spawner = WorkerSpawner(Behaviour(), Behaviour(ready=False, output=None, returncode=1))
    got, cpu = Collected(), WorkersCpu()
    s = sampler(spawner, got, rate_hz=50, cpu=cpu, subprocesses=True,
                workers=lambda: [22, 21])
    s.start()
    wait_until(lambda: len(got.windows) >= 4, what="four windows")
    s.stop()
    assert s.end_reason is EndReason.STOPPED
    for spy in spawner.spies:
        assert "--subprocesses" not in spy.argv  # a py-spy per worker, none on the master
    assert sorted(int(spy.argv[spy.argv.index("--pid") + 1])
                  for spy in spawner.spies[:2]) == [21, 22]
    assert 10 not in cpu.read_pids  # the master serves nothing: neither sampled nor read
    idle_windows = [w for w in got.windows[1:] if w.threads]
    by_window = [{pid for pid, _ in w.threads} for w in idle_windows]
    assert {21} in by_window and {21, 22} in by_window, by_window
    both = next(w for w in idle_windows if len(w.threads) == 2)
    assert both.threads == {(21, 10): ThreadRole.LOOP, (22, 10): ThreadRole.LOOP}
    assert both.errors == 4  # each py-spy's two failed reads


def test_a_recycled_worker_is_sampled_as_soon_as_it_serves_not_a_window_later() -> None:
    """gunicorn's --max-requests: worker 22 exits (its py-spy ends by itself) and 23 takes its
    place. The window ends there, long before its time, and the next samples 23."""
    spawner = WorkerSpawner(Behaviour(ends_alone=True))
    got, serving = Collected(), [22, 21]
    # No window would end by its length within the test.
    s = StackSampler(10, on_window=got.window, on_end=got.end, spawn=spawner,  # type: ignore[arg-type]
                     pyspy="/bin/py-spy", alive=lambda pid: True, window_seconds=30.0,
                     cpu_reader=WorkersCpu(), rate_hz=50, subprocesses=True,
                     workers=lambda: list(serving))
    s.start()
    try:
        wait_until(lambda: len(spawner.spies) >= 2, what="the first window's py-spys")
        time.sleep(0.3)
        assert len(spawner.spies) == 2 and not got.windows  # 21 still sampled: no successor yet
        serving[:] = [21, 23]
        wait_until(lambda: any("23" == spy.argv[spy.argv.index("--pid") + 1]
                               for spy in spawner.spies), timeout=3, what="a py-spy for 23")
    finally:
        s.stop()
    assert s.stats.early_windows >= 1 and got.windows
