"""gil_contention: threads spending a large share of their samples waiting for the GIL.

Only one thread runs Python at a time; the others that want to wait in the interpreter, off-CPU.
Two ways to see it, per sampling window, over the handler threads (loop and pool workers):

- GIL state known (an activity probe saw `owns_gil` for the stack): a non-waiting sample with
  `gil` False at a line that another thread was seen *holding* the GIL at in the same window.
  Several threads running the same code, one holding the GIL, the rest not, is contention; a
  thread sleeping or doing I/O at its own line (no holder there) is not.
- GIL state unknown: the RUNNING samples beyond the window's ticks (the most samples any one
  thread got in it) cannot all have held the GIL, so the excess waited. Counted only in windows
  where at least two worker threads ran and, when resource samples exist, the process used at
  least `GIL_BUSY_CORES` of a core in that window: someone must hold the GIL for others to wait
  for it, so worker threads all sleeping at a `time.sleep` line (RUNNING, for a sampler without
  an activity probe) are not mistaken for contention. A lower bound; its blind spot is C code
  that releases the GIL (hashing, compression, numpy), which it takes for Python code.

The share is waited samples over all non-waiting handler-thread samples. The location is the
hottest line among the samples that held (or most likely held) the GIL.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from apiscope.analysis.context import HANDLER_ROLES, AnalysisContext, Attributed, Flag
from apiscope.analysis.flags import frame_location, make_flag, pct, where
from apiscope.analysis.stats import measured_cores, window_ticks
from apiscope.analysis.thresholds import grade
from apiscope.model import Frame, SampleState, ThreadRole

GIL_BUSY_CORES = 0.7

SUGGESTION = ("move CPU-bound Python out of threads into processes (ProcessPoolExecutor, more"
              " workers) or into code that releases the GIL; fewer threads contend less")


def _active_by_window(ctx: AnalysisContext) -> dict[tuple[float, int], list[Attributed]]:
    """The busy handler-thread samples per (window, pid)."""
    by_window: dict[tuple[float, int], list[Attributed]] = defaultdict(list)
    for a in ctx.samples:
        if a.active and a.role in HANDLER_ROLES:
            by_window[(a.window, a.sample.pid)].append(a)
    return by_window


def _gil_held(ctx: AnalysisContext, window: float, pid: int) -> bool:
    """Whether the process was busy enough in the window for the GIL to be held throughout."""
    if not ctx.data.resources:
        return True
    end = next((w.end for w in ctx.data.windows if w.start == window), window + 1.0)
    cores = measured_cores(ctx.data.resources, pid, window, max(end, window + 1.0))
    return cores is not None and cores >= GIL_BUSY_CORES


def _leaf(a: Attributed) -> Frame | None:
    return a.sample.frames[-1] if a.sample.frames else None


def _known(samples: list[Attributed]) -> tuple[int, list[Attributed]]:
    """Waited samples and GIL holders among samples whose GIL state is known."""
    holders = [a for a in samples if a.sample.gil]
    held_at: dict[Frame | None, set[tuple[int, int]]] = defaultdict(set)
    for a in holders:
        held_at[_leaf(a)].add((a.sample.pid, a.sample.tid))
    waited = sum(a.sample.count for a in samples if a.sample.gil is False
                 and held_at.get(_leaf(a), set()) - {(a.sample.pid, a.sample.tid)})
    return waited, holders


def _inferred(samples: list[Attributed], ticks: int) -> tuple[int, list[Attributed]]:
    running = [a for a in samples if a.sample.gil is None and a.sample.state is SampleState.RUNNING]
    workers = {(a.sample.pid, a.sample.tid) for a in running if a.role is ThreadRole.WORKER}
    if len(workers) < 2:
        return 0, []
    excess = sum(a.sample.count for a in running) - ticks
    return max(0, excess), [a for a in running if a.role is ThreadRole.WORKER]


class GilContentionRule:
    kind = "gil_contention"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        ticks = window_ticks(ctx)
        waited = active = 0
        holders: list[Attributed] = []
        for (window, pid), samples in _active_by_window(ctx).items():
            active += sum(a.sample.count for a in samples)
            known_waited, known_holders = _known(samples)
            guessed, guessed_holders = 0, list[Attributed]()
            if ctx.activity_known or _gil_held(ctx, window, pid):
                guessed, guessed_holders = _inferred(samples, ticks.get(window, 0))
            waited += known_waited + guessed
            holders += known_holders + guessed_holders
        if not active:
            return []
        share = waited / active
        severity = grade(share, ctx.thresholds.gil_wait_share)
        if severity is None or waited < ctx.thresholds.gil_min_wait_samples:
            return []
        lines: Counter[tuple[str | None, Frame]] = Counter()
        for a in holders:
            if a.user is not None:
                lines[(a.endpoint, a.user)] += a.sample.count
        endpoint, frame = (None, None) if not lines else sorted(
            lines.items(), key=lambda kv: (-kv[1], kv[0][0] or "", kv[0][1].line))[0][0]
        loc = frame_location(frame)
        evidence = (f"{pct(share)} of the busy thread samples waited for the GIL"
                    f" ({waited} of {active}); the hottest GIL-holding line is {where(loc)}")
        metric = {"gil_wait_share": share, "waiting_samples": waited, "active_samples": active}
        return [make_flag(self.kind, severity, endpoint, loc, evidence, metric, SUGGESTION)]
