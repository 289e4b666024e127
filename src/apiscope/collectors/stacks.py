"""Continuous stack sampling of a live process with py-spy.

py-spy cannot stream: `record` writes its file only when it ends. So the sampler runs one
`py-spy record` per window, stopped with SIGINT, and rotates them: when a window is due, it
starts the next py-spy, waits until that one prints "Sampling process..." (it has attached),
and only then sends SIGINT to the current one, which takes its last sample, writes its file
and exits. The seam between two windows is thus the difference between the new py-spy's first
sample and the old one's last, measured at about +/-10 ms (one sample per thread, either way;
docs/sampling.md), instead of a whole py-spy start-up (20 ms to seconds).

py-spy records in its raw format, which counts each thread's samples per stack, so how long
each thread showed each stack (`trace.py`); the 1st window and every `activity_every`-th after
it are recorded
without `--idle`, so that py-spy's own view of which threads are active teaches how much each
leaf line runs. Each window py-spy wrote becomes a `StackWindow` in `windows.py`: measured
against each thread's CPU and run-queue time at its edges (`threadcpu.py`), and split by those
shares (`oncpu.py`). A window that cannot be read or classified is counted and sampling goes
on with the next one: no stack ends a session.

The sampler ends on `stop()` (the last window is delivered), or when py-spy stops on its own
because the target exited (`end_reason` TARGET_EXITED: a normal end for `attach`), or on a
failure it cannot recover from (`end_reason` FAILED, `error` set).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from apiscope.collectors.budget import OverheadBudget, WindowCost
from apiscope.collectors.oncpu import LineLooks, SleepLooks, asleep_leaves
from apiscope.collectors.pyspy import (
    RecordOptions,
    exited_message,
    failure_error,
    find_pyspy,
    record_argv,
)
from apiscope.collectors.samplerstats import EndReason, SamplerStats
from apiscope.collectors.spy import (
    PopenSpy,
    SpawnSpy,
    SpyGroup,
    SpyProcess,
    target_alive,
    target_stopped,
)
from apiscope.collectors.threadcpu import ThreadCpuReader
from apiscope.collectors.windows import WindowMeter
from apiscope.errors import TargetError
from apiscope.lifetime import Reaper
from apiscope.model import LoopStall, StackWindow

MIN_STOP_GAP = 0.5  # seconds: a stop seen for less is not reported as a gap
STOP_POLL = 0.25  # seconds between looks at whether the target is stopped, within a window


@dataclass(slots=True)
class _Run:
    proc: SpyProcess
    outputs: list[tuple[int, Path]]  # (the process sampled, the file its py-spy writes)
    started: float
    rate_hz: int  # what this py-spy samples at: the budget may change it window by window
    active_only: bool = False  # recorded without --idle (see oncpu.py)
    seconds: float = 1.0  # the window's length: the budget may lengthen it
    startup_cpu: float = 0.0  # py-spy's CPU time until it began sampling
    paid: float = 0.0  # of its CPU time, what the budget has already accounted


class StackSampler:
    """Samples `pid` (and its child processes when `subprocesses`) in windows of py-spy."""

    def __init__(self, pid: int, *, on_window: Callable[[StackWindow], None],
                 rate_hz: int = 100, subprocesses: bool = False, nonblocking: bool = False,
                 window_seconds: float = 1.0, spawn: SpawnSpy = PopenSpy,
                 clock: Callable[[], float] = time.time, pyspy: str | None = None,
                 alive: Callable[[int], bool] = target_alive,
                 cpu_reader: ThreadCpuReader | None = None,
                 activity_every: int = 4, budget: OverheadBudget | None = None,
                 agent_cpu: Callable[[], float] | None = None, ready_timeout: float = 15.0,
                 on_end: Callable[[EndReason, Exception | None], None] | None = None,
                 workers: Callable[[], Iterable[int]] | None = None) -> None:
        self.pid = pid
        # A master's workers, listed again at each window: each gets a py-spy of its own
        # (see `SpyGroup`); None: `pid` is sampled (with its subprocesses when asked).
        self._workers = workers
        # Under a budget, the first window (before any cost is known) samples at its opening
        # rate, not at the rate asked for: see `OverheadBudget.first_rate`.
        first = budget.first_rate() if budget is not None else rate_hz
        self.options = RecordOptions(rate_hz=first, subprocesses=subprocesses,
                                     nonblocking=nonblocking)
        self.window_seconds = window_seconds
        self._on_end = on_end
        self._spawn = spawn
        self._clock = clock
        self._pyspy = pyspy
        self._alive = alive
        # Every `activity_every`-th window is recorded without --idle: py-spy's own view of
        # which threads are active teaches how much each line runs (see oncpu.py).
        self.activity_every = activity_every
        self.stats = SamplerStats()
        self._meter = WindowMeter(pid, on_window, self.stats, cpu_reader if cpu_reader is not None
                                  else ThreadCpuReader(),
                                  learns=activity_every > 0, reads_root=workers is None)
        self._sleeps = SleepLooks()  # the agents' looks at their threads (`note_sleeps`)
        self._stalled_asleep: set[tuple[str, int]] = set()  # loop stalls' (`note_stalls`)
        # The overhead budget (None: the rate asked for, always); `agent_cpu` is the agents'
        # own CPU seconds so far, which the budget pays for too.
        self.budget = budget
        if budget is not None:
            budget.base_window = window_seconds
        self._agent_cpu = agent_cpu
        self._agent_cpu_mark = 0.0
        self._collector_cpu_mark = time.process_time()
        self._next_seconds = window_seconds  # the next window's length
        self._exit_cpu = 0.0  # py-spy's CPU writing the last window out, not yet paid for
        self._ready_timeout = ready_timeout
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._reaper: Reaper | None = None
        self._stopped_since: float | None = None  # when the target was first seen stopped
        self._stopped_last = 0.0  # when it was last seen stopped
        self._count = 0
        self.launch_attempts = 3  # per mid-session py-spy start (the first one gets one)
        self.end_reason: EndReason | None = None
        self.error: Exception | None = None

    # -- public -----------------------------------------------------------------------------

    def start(self) -> None:
        """Attach (the first py-spy must start sampling) and sample in the background.

        Raises `ToolMissingError` without py-spy and `TargetError` when the target cannot be
        sampled (gone, not Python, ptrace denied): nothing runs in the background then.
        """
        if self._pyspy is None:
            self._pyspy = find_pyspy()
        self._tmp = tempfile.TemporaryDirectory(prefix="apiscope-stacks-")
        self._reaper = reaper = Reaper(self._tmp.name)  # removes it even after a kill -9
        try:
            first = self._launch()
        except BaseException:
            self._tmp.cleanup()
            reaper.close()
            raise
        self._meter.begin(self._current_workers() or self._children())
        self._thread = threading.Thread(target=self._run, args=(first,), daemon=True,
                                        name="apiscope-stack-sampler")
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """End sampling; the window in progress is delivered before this returns."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the sampler has ended (stopped, target exited, failed)."""
        return self._done.wait(timeout)

    def note_stalls(self, stalls: Iterable[LoopStall]) -> None:
        """The agent's loop stalls: a line its kernel looks found asleep is split as one that
        does not run, from the next window on (see `oncpu.asleep_leaves`)."""
        sites = asleep_leaves(stalls)
        if sites:
            self._meter.asleep(sites)
            self._stalled_asleep |= sites

    def asleep_lines(self) -> list[tuple[str, int]]:
        """The lines the agents' looks found asleep (in a sleep or I/O by the kernel's word),
        by all the looks so far. Windows split before a line was found asleep may have given it
        some of its thread's CPU; the analysis, which reads these from the session, never takes
        it for a line that computes."""
        return sorted(self._sleeps.asleep() | self._stalled_asleep)

    def note_sleeps(self, looks: Iterable[LineLooks]) -> None:
        """The agent's looks at its threads: a line they sleep at by the kernel's word is split
        as one that does not run, one they are always busy at as one that runs at least
        `oncpu.BUSY_SHARE` of its time, from the next window on (see `oncpu.SleepLooks`)."""
        sites = self._sleeps.add(looks)
        if sites:
            self._meter.asleep(sites)
        busy = self._sleeps.busy()
        if busy:
            self._meter.busy(busy)

    def note_gil(self, pid: int, futex: tuple[int, int]) -> None:
        """Where process `pid`'s GIL is (from its agent): its busy threads are looked at for
        waits on it from the next window on (see `gillooks`)."""
        if not self._meter.gil.knows(pid) and not self._done.is_set():
            self._meter.gil.note(pid, futex)

    def note_gil_holder(self, pid: int, layout: tuple[int, int],
                        idents: Mapping[int, int]) -> None:
        """How to read which thread of `pid` holds its GIL (from its agent, see `gillooks`)."""
        self._meter.gil.note_holder(pid, layout, idents)

    def note_gil_wait(self, pid: int, wait_seconds: float, wakes: int) -> None:
        """A report of process `pid`'s GIL watchdog: its threads are not looked at while it
        says the GIL is quiet (see `gillooks`)."""
        self._meter.gil.note_wait(pid, wait_seconds, wakes)

    def set_look_interval(self, seconds: float) -> None:
        """How often the busy threads are looked at for waits on the GIL (see `gillooks`)."""
        self._meter.gil.interval = seconds

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    # -- the sampling thread ----------------------------------------------------------------

    def _run(self, current: _Run) -> None:
        reason, error = EndReason.STOPPED, None
        try:
            reason = self._rotate(current)
        except Exception as exc:  # reported through end_reason/error, never lost
            alive = self._alive(self.pid)
            reason = EndReason.FAILED if alive else EndReason.TARGET_EXITED
            error = exc if alive else None
        finally:
            try:
                self._meter.flush()  # windows still waiting to learn from: what is known now
            except Exception as exc:  # the callback failed: the reason the sampler ends
                if error is None:
                    reason, error = EndReason.FAILED, exc
            self._meter.gil.stop()
            if self._tmp is not None:
                self._tmp.cleanup()
            if self._reaper is not None:
                self._reaper.close()
            self.end_reason, self.error = reason, error
            try:
                if self._on_end is not None:
                    self._on_end(reason, error)
            finally:
                self._done.set()

    def _rotate(self, current: _Run) -> EndReason:
        while True:
            due = current.started + current.seconds - self._clock()
            if self._wait_window(due, current):
                self._deliver(current, self._clock())
                return EndReason.STOPPED
            if current.proc.poll() is not None:
                # py-spy stopped by itself (each of a group): the target (or, with
                # --subprocesses, the whole tree; a group's workers) is gone, or py-spy failed.
                self._deliver(current, self._clock())
                if not self._alive(self.pid):
                    return EndReason.TARGET_EXITED
                resumed = self._resume(self._clock())
                if resumed is None:
                    return EndReason.STOPPED
                current = resumed
                continue
            self._plan(current)
            try:
                following = self._launch(self.launch_attempts)
            except Exception:
                end = self._clock()
                self._deliver(current, end)
                if self._stop.is_set():
                    return EndReason.STOPPED  # stop() came while the next one started
                if not target_stopped(self.pid):
                    raise
                resumed = self._resume(end)
                if resumed is None:
                    return EndReason.STOPPED
                current = resumed
                continue
            switch = self._clock()
            self._note_stop()  # attached again: a stop within the window ended
            self.stats.handovers.append(max(0.0, switch - following.started))
            try:
                self._deliver(current, switch)
            except BaseException:
                self._abandon(following)  # never leave a py-spy running behind us
                raise
            current = following

    def _wait_window(self, seconds: float, run: _Run | None = None) -> bool:
        """Wait out the window (True when stop() came), noting when the target is first seen
        stopped: py-spy goes on reading a stopped process's frozen stacks, so the gap starts
        there, not where the next py-spy fails to attach. A window of a py-spy per worker
        ends early when a worker it samples has exited and another serves in its place
        (gunicorn's `--max-requests`): the next window samples the new one from its start."""
        deadline = self._clock() + max(0.0, seconds)
        while True:
            if target_stopped(self.pid):
                self._stopped_last = self._clock()
                if self._stopped_since is None:
                    self._stopped_since = self._stopped_last
            left = deadline - self._clock()
            if left <= 0:
                return self._stop.is_set()
            if run is not None and self._replaced(run):
                self.stats.early_windows += 1
                return self._stop.is_set()
            if self._stop.wait(min(STOP_POLL, left)):
                return True

    def _replaced(self, run: _Run) -> bool:
        """Whether a worker `run` samples has exited and one it does not sample serves now
        (or all it samples have exited)."""
        if not isinstance(run.proc, SpyGroup):
            return False
        ended = run.proc.ended()
        if not ended:
            return False
        if len(ended) == len(run.proc.members):
            return True
        sampled = {pid for pid, _ in run.outputs}
        return bool(set(self._current_workers()) - sampled)

    def _note_stop(self) -> None:
        """A stop that began and ended within a window (long windows outlast short stops):
        py-spy went on reading the frozen stacks, so the time is a gap all the same, kept
        when it lasted more than a moment."""
        if self._stopped_since is not None and \
                self._stopped_last - self._stopped_since >= MIN_STOP_GAP:
            self.stats.gaps.append((self._stopped_since, self._stopped_last, "target stopped"))
        self._stopped_since = None

    def _resume(self, since: float) -> _Run | None:
        """The next py-spy after the last window ended at `since`. A stopped target (SIGSTOP)
        cannot be attached: wait until it continues and keep the time without samples as a
        gap (`stats.gaps`), never smoothed over. None when stop() comes first."""
        stopped = False
        if self._stopped_since is not None:
            since, self._stopped_since = min(since, self._stopped_since), None
        while True:
            while target_stopped(self.pid):
                stopped = True
                if self._stop.wait(0.1):
                    self.stats.gaps.append((since, self._clock(), "target stopped"))
                    return None
            try:
                run = self._launch(self.launch_attempts)
            except TargetError:
                if self._stop.is_set() or not target_stopped(self.pid):
                    raise
                continue  # stopped again while py-spy attached
            if stopped or run.started - since > 2 * self.window_seconds:
                self.stats.gaps.append((since, run.started, "target stopped" if stopped
                                        else "py-spy restarted"))
            return run

    def _launch(self, attempts: int = 1) -> _Run:
        """Start one py-spy and wait until it samples; retry while the target lives.

        Mid-session launches get several attempts: a new py-spy attaching while the running
        one holds the target ptrace-stopped can be refused ("Permission Denied" even as
        root), and a busy machine can make one start-up fail. The running py-spy keeps
        sampling meanwhile, so a retry costs no samples.
        """
        for attempt in range(1, attempts + 1):
            try:
                return self._launch_once()
            except TargetError:
                if attempt == attempts or not self._alive(self.pid) or self._stop.is_set():
                    raise
                self.stats.launch_retries += 1
        raise AssertionError("unreachable")

    def _launch_once(self) -> _Run:
        assert self._tmp is not None and self._pyspy is not None
        self._count += 1
        # The duration is only a safety bound: if apiscope dies without stopping it, py-spy
        # still ends by itself instead of tracing the server forever. Rotation uses SIGINT.
        bound = max(30, math.ceil(40 * self.window_seconds))
        # The 1st window, then every `activity_every`-th: a short session learns from the start
        # (and the 1st window's samples are all active ones, measured as such).
        active_only = self.activity_every > 0 and self._count % self.activity_every == 1
        options = dataclasses.replace(self.options, idle=not active_only)
        workers = self._current_workers()
        if workers:  # a py-spy per worker (see `SpyGroup`), the master not sampled
            options = dataclasses.replace(options, subprocesses=False)
            self._meter.expect(workers)
        spawned = self._clock()
        members = []
        for pid in workers or [self.pid]:
            output = Path(self._tmp.name) / f"window-{self._count}-{pid}.txt"
            argv = record_argv(self._pyspy, pid, str(output), options, duration=bound)
            members.append((pid, self._spawn(argv), output))
        group = SpyGroup(members) if workers else None
        proc = group if group is not None else members[0][1]
        if proc.wait_ready(self._ready_timeout):
            ready = self._clock()
            self.stats.startups.append(ready - spawned)
            kept = group.members if group is not None else members
            for member in members:
                if member not in kept:
                    member[2].unlink(missing_ok=True)  # a worker gone as its py-spy started
            return _Run(proc, [(pid, output) for pid, _, output in kept], ready,
                        self.options.rate_hz, active_only, self._next_seconds,
                        proc.cpu_seconds())
        proc.interrupt()
        result = proc.finish(5.0)
        for _, _, output in members:
            output.unlink(missing_ok=True)
        if not self._alive(self.pid) or exited_message(result.stderr):
            raise TargetError(f"process {self.pid} is not running (it may have exited).")
        raise failure_error(self.pid, result.returncode, result.stderr)

    def _current_workers(self) -> list[int]:
        """The worker processes to sample one by one, or none (sample `pid`, with its
        subprocesses when asked): a master whose workers cannot be listed now is sampled
        whole, as before."""
        if self._workers is None:
            return []
        try:
            return sorted(set(self._workers()))
        except Exception:  # a listing that failed: this window samples the master whole
            return []

    def _abandon(self, run: _Run) -> None:
        run.proc.interrupt()
        run.proc.finish(5.0)
        for _, output in run.outputs:
            output.unlink(missing_ok=True)

    def _deliver(self, run: _Run, end: float) -> None:
        spent = run.proc.cpu_seconds()
        run.proc.interrupt()
        result = run.proc.finish(10.0)
        total = max(spent, result.cpu_seconds)
        self.stats.pyspy_cpu_seconds += total
        # The rest is paid for with the next window planned (this one's plan was made while
        # it ran).
        self._exit_cpu += total - run.paid
        parts = []
        try:
            for pid, output in run.outputs:
                parts.append((output.read_text(errors="replace"), pid))
        except OSError:
            self.stats.dropped_windows += 1  # killed before writing: nothing honest to report
            return
        finally:
            for _, output in run.outputs:
                output.unlink(missing_ok=True)
        self._meter.add(parts, result, run.started, end, run.rate_hz, run.active_only)

    def _children(self) -> set[int]:
        if not self.options.subprocesses:
            return set()
        try:
            return {p.pid for p in psutil.Process(self.pid).children(recursive=True)}
        except psutil.Error:
            return set()

    def _plan(self, run: _Run) -> None:
        """Let the budget choose the rate and length of the window after `run`, from what
        `run` has cost so far (and the exit of the one before it)."""
        if self.budget is None:
            return
        agent = self._agent_cpu() if self._agent_cpu is not None else 0.0
        collector = time.process_time()
        spent = run.proc.cpu_seconds()
        run.paid = spent
        # The target's capacity: a core per serving process, no more than the machine has.
        serving = len(self._meter.serving) or len(self._meter.pids)
        cost = WindowCost(max(self._clock() - run.started, 1e-3), run.rate_hz,
                          spent + self._exit_cpu, max(0.0, agent - self._agent_cpu_mark),
                          len(self._meter.pids), startup_cpu=run.startup_cpu,
                          collector_cpu=max(0.0, collector - self._collector_cpu_mark),
                          capacity=float(max(1, min(serving, os.cpu_count() or 1))))
        self._agent_cpu_mark, self._collector_cpu_mark, self._exit_cpu = agent, collector, 0.0
        plan = self.budget.plan_after(cost)
        self.stats.rates.append(run.rate_hz)
        self._next_seconds = plan.seconds
        if plan.rate_hz != self.options.rate_hz:
            self.options = dataclasses.replace(self.options, rate_hz=plan.rate_hz)
