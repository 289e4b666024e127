"""gil_contention: threads spending a large share of their samples waiting for the GIL.

Only one thread runs Python at a time; the others that want to wait in the interpreter, off-CPU.
The flag is about code that runs in *several threads at once* (sync `def` handlers in the thread
pool): an endpoint is considered only when its samples show it on two or more handler threads
(loop and pool workers) of one process in one sampling window. Two ways to see the waits:

- GIL state known (an activity probe saw `owns_gil` for the stack): per endpoint, the share of
  its GIL-known samples that waited, i.e. had `gil` False at a *CPU line* while another thread
  of the process ran Python in that window (seen holding the GIL, or RUNNING at a stack the
  probe did not catch). A CPU line is a leaf line that threads were seen holding the GIL at,
  or on-CPU at (acquiring it), in at least `CPU_LINE_GIL_SHARE` of its GIL-known samples:
  pure Python gives up the GIL only when another thread asks for it, so not holding it there
  means waiting for it. A line where threads sleep or do I/O (the GIL released) is never a CPU
  line, so a pool of threads sleeping in a legacy client is not contention. The bar is low
  because contention itself lowers it: with four threads runnable at one line, each holds the
  GIL about a quarter of the time (measured on the sample app's forecast: 16 % to 74 %).
  Its blind spot is a line that both computes and does I/O, whose I/O waits count as GIL waits
  when another thread ran Python meanwhile.
- GIL state unknown (no probe, or a stack the probe never saw): the RUNNING samples beyond the
  window's ticks (the most samples any one thread got in it) cannot all have held the GIL, so
  the excess waited; it is spread over the window's RUNNING samples of unknown GIL state.
  Counted only in windows where at least two worker threads ran and, without a probe and when
  resource samples exist, the process used at least `GIL_BUSY_CORES` of a core in that window:
  someone must hold the GIL for others to wait for it, so worker threads all sleeping at a
  `time.sleep` line (RUNNING, for a sampler without an activity probe) are not mistaken for
  contention. A lower bound; its blind spot is C code that releases the GIL (hashing,
  compression, numpy), which it takes for Python code.

The share is the probe's (waited over GIL-known samples) when the probe saw `GIL_MIN_KNOWN`
of the endpoint's samples, its instants being a fair sample of the endpoint's time; else the
known and inferred waits over every judged sample (GIL state known, or RUNNING).
Windows of the session's warm-up (`stats.warmup_end`) are left out: a healthy app that
computes and caches a result per key contends while its cache fills, once.

The location is the endpoint's hottest line among the samples that held (or most likely held)
the GIL.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from apiscope.analysis.context import HANDLER_ROLES, AnalysisContext, Attributed, Flag
from apiscope.analysis.flags import frame_location, make_flag, pct, where
from apiscope.analysis.stats import measured_cores, warmup_end, window_ticks
from apiscope.analysis.thresholds import grade
from apiscope.model import Frame, SampleState, ThreadRole

GIL_BUSY_CORES = 0.7
CPU_LINE_GIL_SHARE = 0.1
GIL_MIN_KNOWN = 30  # probe-judged samples enough to take the probe's share over the estimate

SUGGESTION = ("move CPU-bound Python out of threads into processes (ProcessPoolExecutor, more"
              " workers) or into code that releases the GIL; fewer threads contend less")


@dataclass
class Tally:
    """What one endpoint's samples showed."""

    known: int = 0  # samples whose GIL state the probe saw
    known_waited: int = 0
    unknown: int = 0  # RUNNING samples of unknown GIL state
    inferred_waited: float = 0.0
    holders: list[Attributed] = field(default_factory=list)

    @property
    def judged(self) -> int:
        return self.known + self.unknown

    def share(self) -> float:
        """The probe's share when it saw enough (its instants are a fair sample of the
        endpoint's time), else the inferred lower bound over every judged sample."""
        if self.known >= GIL_MIN_KNOWN:
            return self.known_waited / self.known
        total = self.judged
        return (self.known_waited + self.inferred_waited) / total if total else 0.0


def _active_by_window(ctx: AnalysisContext) -> dict[tuple[float, int], list[Attributed]]:
    """The busy handler-thread samples per (window, pid), after the warm-up."""
    by_window: dict[tuple[float, int], list[Attributed]] = defaultdict(list)
    steady = warmup_end(ctx)
    for a in ctx.samples:
        if a.active and a.role in HANDLER_ROLES and a.window >= steady:
            by_window[(a.window, a.sample.pid)].append(a)
    return by_window


def _leaf(a: Attributed) -> Frame | None:
    return a.sample.frames[-1] if a.sample.frames else None


def cpu_lines(samples: list[Attributed]) -> set[tuple[int, Frame | None]]:
    """(pid, leaf) lines threads were seen holding the GIL at, or on-CPU at, often enough to
    be CPU work."""
    held: Counter[tuple[int, Frame | None]] = Counter()
    known: Counter[tuple[int, Frame | None]] = Counter()
    for a in samples:
        if a.sample.gil is not None:
            key = (a.sample.pid, _leaf(a))
            known[key] += a.sample.count
            # on-CPU without the GIL at a Python line is a thread acquiring it: CPU work too
            busy = a.sample.gil or a.sample.state is SampleState.RUNNING
            held[key] += a.sample.count if busy else 0
    return {key for key, n in known.items() if held[key] >= CPU_LINE_GIL_SHARE * n}


def _multi_threaded(windows: dict[tuple[float, int], list[Attributed]]) -> set[str]:
    """Endpoints seen on two or more handler threads of a process within one window."""
    threads: dict[tuple[float, int, str], set[int]] = defaultdict(set)
    for (window, pid), samples in windows.items():
        for a in samples:
            if a.endpoint is not None:
                threads[(window, pid, a.endpoint)].add(a.sample.tid)
    return {endpoint for (_, _, endpoint), tids in threads.items() if len(tids) >= 2}


def tallies(ctx: AnalysisContext,
            windows: dict[tuple[float, int], list[Attributed]]) -> dict[str, Tally]:
    """Per endpoint that ran in several threads at once: its waits, known and inferred."""
    every = [a for samples in windows.values() for a in samples]
    lines = cpu_lines(every)
    eligible = _multi_threaded(windows)
    ticks = window_ticks(ctx)
    out: dict[str, Tally] = defaultdict(Tally)
    for (window, pid), samples in windows.items():
        # Threads that ran Python in the window: seen holding the GIL, or RUNNING with its
        # state unknown (a stack the probe did not catch, such as the loop's framework code).
        holders = {a.sample.tid for a in samples if a.sample.gil or (
            a.sample.gil is None and a.sample.state is SampleState.RUNNING)}
        inferred = _inferred_waits(ctx, window, pid, samples, ticks.get(window, 0))
        for a in samples:
            if a.endpoint is None or a.endpoint not in eligible:
                continue
            tally = out[a.endpoint]
            if a.sample.gil is None:
                if a.sample.state is SampleState.RUNNING:
                    tally.unknown += a.sample.count
                    tally.inferred_waited += inferred * a.sample.count
                    tally.holders.append(a)
                continue
            tally.known += a.sample.count
            if a.sample.gil:
                tally.holders.append(a)
            elif (a.sample.pid, _leaf(a)) in lines and holders - {a.sample.tid}:
                tally.known_waited += a.sample.count
    return dict(out)


def _inferred_waits(ctx: AnalysisContext, window: float, pid: int, samples: list[Attributed],
                    ticks: int) -> float:
    """The share of each RUNNING sample of unknown GIL state that must have waited (see the
    module docstring): the window's running samples beyond its ticks, spread over them."""
    running = [a for a in samples if a.sample.state is SampleState.RUNNING]
    workers = {a.sample.tid for a in running if a.role is ThreadRole.WORKER}
    unknown = sum(a.sample.count for a in running if a.sample.gil is None)
    if len(workers) < 2 or not unknown:
        return 0.0
    if not ctx.activity_known and not _gil_held(ctx, window, pid):
        return 0.0
    excess = sum(a.sample.count for a in running) - ticks
    return min(1.0, max(0, excess) / unknown)


def _gil_held(ctx: AnalysisContext, window: float, pid: int) -> bool:
    """Whether the process was busy enough in the window for the GIL to be held throughout."""
    if not ctx.data.resources:
        return True
    end = next((w.end for w in ctx.data.windows if w.start == window), window + 1.0)
    cores = measured_cores(ctx.data.resources, pid, window, max(end, window + 1.0))
    return cores is not None and cores >= GIL_BUSY_CORES


class GilContentionRule:
    kind = "gil_contention"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        found = tallies(ctx, _active_by_window(ctx))
        flags = []
        for endpoint in sorted(found):
            flag = self._flag(ctx, endpoint, found[endpoint])
            if flag is not None:
                flags.append(flag)
        return flags

    def _flag(self, ctx: AnalysisContext, endpoint: str, tally: Tally) -> Flag | None:
        if not tally.judged:
            return None
        share = tally.share()
        waited = share * tally.judged
        severity = grade(share, ctx.thresholds.gil_wait_share)
        if severity is None or waited < ctx.thresholds.gil_min_wait_samples:
            return None
        lines: Counter[tuple[str | None, Frame]] = Counter()
        for a in tally.holders:
            if a.user is not None:
                lines[(a.endpoint, a.user)] += a.sample.count
        route, frame = (endpoint, None) if not lines else sorted(
            lines.items(), key=lambda kv: (-kv[1], kv[0][0] or "", kv[0][1].line))[0][0]
        loc = frame_location(frame)
        evidence = (f"{pct(share)} of {endpoint}'s thread samples waited for the GIL"
                    f" (about {waited:.0f} of {tally.judged}) while another thread held it;"
                    f" the hottest GIL-holding line is {where(loc)}")
        metric = {"gil_wait_share": share, "waiting_samples": round(waited),
                  "active_samples": tally.judged, "probe_samples": tally.known}
        return make_flag(self.kind, severity, route, loc, evidence, metric, SUGGESTION)
