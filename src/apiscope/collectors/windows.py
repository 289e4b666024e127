"""From the file one py-spy wrote to a `StackWindow`: parsed, measured, split.

Each window ends with the kernel's reading of every sampled thread's CPU and run-queue time
(`threadcpu.py`); the difference from the reading at its start is what each thread used in it.
Threads that were busy in a window are looked at in the next for a wait on the GIL (`gillooks`).
Windows recorded without `--idle` teach how much each leaf line runs (`oncpu.ActivityShares`),
and every window's samples are split into running, runnable and blocked by those shares and the
measured time (`oncpu.split_samples`). The first windows wait for the first one recorded
without `--idle`: until then nothing is known of which lines run.

A window that cannot be read or split is counted (`SamplerStats.failed_windows`, with the last
error) and the next one goes on: no stack ends a session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from apiscope.collectors.gillooks import GilLooks
from apiscope.collectors.native import native_cpu
from apiscope.collectors.oncpu import ActivityShares, ThreadBudget, line_times, split_samples
from apiscope.collectors.pyspy import parse_raw, parse_summary
from apiscope.collectors.samplerstats import ErrorWindow, SamplerStats, window_loss
from apiscope.collectors.spy import SpyExit
from apiscope.collectors.threadcpu import (
    CpuReading,
    CpuUsage,
    ThreadCpuReader,
    unmeasured_cpu,
    usage,
)
from apiscope.collectors.threads import is_waiting, thread_roles
from apiscope.collectors.trace import (
    Trace,
    merge_traces,
    raw_as_trace,
)
from apiscope.model import Frame, StackSample, StackWindow, ThreadRole

GIL_WATCH_SHARE = 0.005  # a thread's CPU share of a window that gets it looked at next window


@dataclass(frozen=True, slots=True)
class MeasuredWindow:
    """A window read and measured, waiting to be split into samples."""

    trace: Trace
    errors: int
    start: float
    end: float
    rate_hz: int
    roles: dict[tuple[int, int], ThreadRole]
    used: CpuUsage
    active_only: bool = False  # recorded without --idle: only active samples shown
    gil: dict[tuple[int, int], tuple[int, int]] | None = None  # (looks, on the GIL), `gillooks`
    failed_at: tuple[float, ...] = ()  # when reads failed, as py-spy logged them
    holders: dict[tuple[int, int], int] | None = None  # looks finding each holding the GIL

    def idle(self, pid: int, tid: int, frames: tuple[Frame, ...]) -> bool:
        return is_waiting(frames, self.roles.get((pid, tid), ThreadRole.OTHER))


class WindowMeter:
    """Turns the windows of one sampled process (and its children) into `StackWindow`s, in
    order, for `on_window`."""

    def __init__(self, pid: int, on_window: Callable[[StackWindow], None], stats: SamplerStats,
                 cpu_reader: ThreadCpuReader, *, learns: bool = True,
                 reads_root: bool = True) -> None:
        self.pid = pid
        # Whether `pid` itself is read (False: a master whose workers are sampled apart).
        self._root = {pid} if reads_root else set()
        self.pids: set[int] = set(self._root)  # the processes whose threads are read
        self._next: set[int] = set()  # the processes the window now starting samples
        # CPU seconds of workers the window now starting samples that exited before the one
        # ending was measured: theirs to report, not the ending window's.
        self._carried: dict[int, float] = {}
        self._gone: set[int] = set()  # read at the last window's end and gone by then
        # The processes seen serving (an event loop or a request pool thread) in a window so
        # far, less those gone: a master, a reloader or multiprocessing's resource tracker
        # serve nothing.
        self.serving: set[int] = set()
        self._on_window = on_window
        self.stats = stats
        self._cpu = cpu_reader
        self._mark = CpuReading()
        self._shares = ActivityShares()
        self._learns = learns  # some windows are recorded without --idle to learn from
        self._pending: list[MeasuredWindow] = []
        self.gil = GilLooks()  # looks once an agent says where its GIL is (`note_gil`)

    def begin(self, children: Iterable[int] = ()) -> None:
        """The reading the first window is measured from."""
        self.pids |= set(children)
        self._mark = self._cpu.read(self.pids, parents=(self.pid,))

    def expect(self, pids: Iterable[int]) -> None:
        """The processes the window starting now samples (a py-spy per worker), so that a
        worker started since the last reading (a recycled one) is measured from its first
        window on: read now if the last reading missed it (the window before it may have ended
        already, its workers gone), and at the end of the window before it."""
        self._next = set(pids)
        new = self._next - set(self._mark.processes)
        if new:
            now = self._cpu.read(new)
            mark = self._mark
            # The new workers' figures join the mark; its reaped children's and the host's
            # stay as read at the window's start.
            self._mark = replace(mark, threads={**mark.threads, **now.threads},
                                 processes={**mark.processes, **now.processes},
                                 runqueue={**mark.runqueue, **now.runqueue})

    def add(self, text: str | Sequence[tuple[str, int]], result: SpyExit, start: float,
            end: float, rate_hz: int, active_only: bool = False) -> None:
        """Measure a window py-spy wrote (its text, or the text of each py-spy of a group with
        the process it sampled); deliver it (and any waiting) once lines are known. Raises
        only when delivering fails (the store's failure is not ours to swallow)."""
        parts = [(text, self.pid)] if isinstance(text, str) else list(text)
        try:
            measured = self._measure(parts, result, start, end, rate_hz, active_only)
        except Exception as exc:  # a bug of ours must not end the session: count, go on
            self.failed(exc)
            return
        self._pending.append(measured)
        if self.stats.activity_windows or not self._learns:
            self.flush()

    def asleep(self, sites: Iterable[tuple[str, int]]) -> None:
        """Lines measured asleep by the agent's loop watchdog (`ActivityShares.asleep`)."""
        self._shares.asleep(sites)

    def busy(self, sites: Iterable[tuple[str, int]]) -> None:
        """Lines measured busy by the agent's looks (`ActivityShares.busy`)."""
        self._shares.busy(sites)

    def failed(self, exc: Exception) -> None:
        self.stats.failed_windows += 1
        self.stats.last_failure = f"{type(exc).__name__}: {exc}"

    def flush(self) -> None:
        """Split and deliver the windows measured so far."""
        pending, self._pending = self._pending, []
        for measured in pending:
            try:
                window = self._split(measured)
            except Exception as exc:
                self.failed(exc)
                continue
            self._on_window(window)

    def _measure(self, parts: Sequence[tuple[str, int]], result: SpyExit, start: float,
                 end: float, rate_hz: int, active_only: bool) -> MeasuredWindow:
        """Parse a window and take the kernel's reading at its end; learn from its lines."""
        traces = [raw_as_trace(parse_raw(text, default_pid=pid), rate_hz)
                  for text, pid in parts]
        trace = traces[0] if len(traces) == 1 else merge_traces(traces)
        summary = parse_summary(result.stdout)
        # A worker first sampled now is read now and measured from the next window on; one the
        # next window samples is read now too, and one gone is measured by its parent.
        pids = self.pids | self._next | {s.pid for s in trace.segments}
        mark = self._cpu.read(pids, parents=(self.pid,))
        used = usage(self._mark, mark)
        self._mark = mark
        sampled = {s.pid for s in trace.segments}
        for pid, seconds in self._carried.items():
            used.processes.setdefault(pid, seconds)
        # py-spy can take a few samples of a worker exiting as the window starts: one found
        # gone by the last window's reading was measured to its end there, used nothing since.
        for pid in (sampled & self._gone) - used.processes.keys():
            used.processes[pid] = 0.0
        gone = pids - set(mark.processes)
        # A worker read as the next window launched and gone already (reaped): what it used
        # since is the next window's, which sampled it (windows overlap while they hand over).
        self._carried = {pid: used.processes.pop(pid) for pid in self._next & gone
                         if pid in used.processes and pid not in sampled}
        self._gone = gone
        # The GIL looks since the last window; from now on, at the threads busy in this one.
        gil = self.gil.drain()
        holders = self.gil.drain_holders()
        self.gil.watch(used.threads, GIL_WATCH_SHARE * (end - start))
        roles = thread_roles(StackSample(seg.pid, seg.tid, "", seg.frames, 1)
                             for seg in trace.segments)
        # A process seen serving serves until it exits: a window that did not see it so (one
        # sampled without --idle sees no idle loop; at 1 Hz a quiet worker may give no sample
        # at all) must not halve the capacity the budget is measured against.
        self.serving = (self.serving - gone) | {
            pid for (pid, _), role in roles.items() if role is not ThreadRole.OTHER}
        measured = MeasuredWindow(trace, summary.errors if summary else 0, start, end, rate_hz,
                                  roles, used, active_only, gil, result.failed_at, holders)
        self._shares.observe(line_times(trace.segments, measured.idle), end - start,
                             active=active_only)
        self.stats.activity_windows += active_only
        # Exited workers drop out of the processes whose threads are read.
        self.pids = self._root | sampled
        self._next = set()
        return measured

    def _split(self, m: MeasuredWindow) -> StackWindow:
        budgets = {key: ThreadBudget(cpu, m.used.runqueue.get(key, 0.0))
                   for key, cpu in m.used.threads.items()}
        samples = split_samples(m.trace.segments, m.rate_hz, m.idle, self._shares, budgets,
                                max(m.end - m.start, 1e-9), active_only=m.active_only,
                                unmeasured=unmeasured_cpu(m.used))
        window = StackWindow(start=m.start, end=m.end, rate_hz=m.rate_hz, samples=samples,
                             errors=m.errors, threads=m.roles, thread_cpu=m.used.threads,
                             process_cpu=m.used.processes, thread_runqueue=m.used.runqueue,
                             active_only=m.active_only, thread_gil=m.gil or {},
                             gil_holders=m.holders or {},
                             native_cpu=native_cpu(samples, m.rate_hz, m.used.threads,
                                                   m.used.processes, m.roles),
                             host_busy=m.used.host_busy, thread_born=m.used.born)
        self._account(window, m.trace.bad_events, m.failed_at)
        return window

    def _account(self, window: StackWindow, bad_lines: int,
                 failed_at: tuple[float, ...] = ()) -> None:
        loss = window_loss(window)
        stats = self.stats
        stats.windows += 1
        stats.stored += loss.stored
        stats.expected += loss.expected
        stats.errors += loss.errors
        if loss.errors:
            stats.error_windows.append(ErrorWindow(window.start, window.end, window.rate_hz,
                                                   loss.errors, failed_at))
        stats.bad_lines += bad_lines
        stats.sampled_seconds += window.end - window.start
