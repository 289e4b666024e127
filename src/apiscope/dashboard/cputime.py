"""Measured CPU time for the dashboard: the report's CPU shares, over any time range.

A RUNNING sample stands for its thread's CPU seconds in that window (the kernel's figure shared
out over the thread's RUNNING samples there, `SessionReader.running_cpu`), so a handler that
sleeps or waits on I/O costs nothing whatever its stack shows. `CpuIndex` keeps those seconds
per block of windows, thread and stack, read incrementally like `SampleIndex`'s counts: a
window's figures depend on that window alone, so blocks add up exactly.

The shares themselves are not computed here: `cpu_context` hands the seconds of a range to the
analysis's own functions (`analysis.cpu`), so the dashboard shows the report's figures by
construction rather than by a second copy of the formula.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from itertools import groupby

from apiscope.analysis.attribution import (
    RouteMatcher,
    dispatch_lines,
    is_tool_work,
    offloaded_work,
    passes_on,
    request_frame,
)
from apiscope.analysis.context import AnalysisContext, Attributed, SessionData
from apiscope.analysis.thresholds import Thresholds
from apiscope.model import (
    Frame,
    OffloadLooks,
    RouteInfo,
    SampleState,
    StackSample,
    ThreadCpu,
    ThreadRole,
    WindowInfo,
)
from apiscope.sessionmeta import SessionMeta
from apiscope.store.reader import SessionReader, StackCpu

ThreadStack = tuple[int, int, int]  # pid, tid, stack id
FramesOf = Callable[[int], tuple[Frame, ...]]
Blocks = Callable[[float | None, float | None], tuple[list[int], list[int]]]


class CpuIndex:
    """CPU seconds of the RUNNING samples per block of windows, thread and stack; and apart,
    the CPU of threads Python does not run, on the stacks that waited for it (stack 0: not
    placed)."""

    def __init__(self, reader: SessionReader, block: int,
                 lock: threading.RLock | None = None) -> None:
        self._reader = reader
        self._block = block  # windows per block: the sample index's, so ranges split alike
        self._lock = lock or threading.RLock()
        self._blocks: dict[int, dict[ThreadStack, float]] = {}
        self._native: dict[int, dict[ThreadStack, float]] = {}
        self._last = 0

    def refresh(self, windows: Sequence[WindowInfo]) -> None:
        """Read the CPU of the windows (listed in id order) not read yet."""
        with self._lock:
            new = [w.id for w in windows if w.id > self._last]
            for block, ids in groupby(new, key=lambda wid: (wid - 1) // self._block):
                chosen = list(ids)
                rows = self._reader.running_cpu(after_window=chosen[0] - 1,
                                                upto_window=chosen[-1])
                _add(self._blocks.setdefault(block, {}),
                     (((r.pid, r.tid, r.stack_id), r.seconds) for r in rows))
                native = self._reader.native_cpu(after_window=chosen[0] - 1,
                                                 upto_window=chosen[-1])
                _add(self._native.setdefault(block, {}),
                     (((r.pid, r.tid, r.stack_id), r.seconds) for _, r in native))
            if new:
                self._last = new[-1]

    def seconds(self, since: float | None, until: float | None,
                blocks_in: Blocks) -> dict[ThreadStack, float]:
        """CPU seconds per thread and stack over the windows starting in [since, until);
        `blocks_in` splits the range into whole blocks and the windows of partial ones."""
        def read(first: int, last: int) -> Iterable[StackCpu]:
            return self._reader.running_cpu(since, until, after_window=first - 1,
                                            upto_window=last)
        return self._over(self._blocks, read, since, until, blocks_in)

    def native(self, since: float | None, until: float | None,
               blocks_in: Blocks) -> dict[ThreadStack, float]:
        """The native threads' CPU seconds per waiting thread and stack over the range."""
        def read(first: int, last: int) -> Iterable[StackCpu]:
            return (r for _, r in self._reader.native_cpu(since, until, after_window=first - 1,
                                                          upto_window=last))
        return self._over(self._native, read, since, until, blocks_in)

    def _over(self, blocks: dict[int, dict[ThreadStack, float]],
              read: Callable[[int, int], Iterable[StackCpu]], since: float | None,
              until: float | None, blocks_in: Blocks) -> dict[ThreadStack, float]:
        """The whole blocks' figures, and those of the partial ones' windows read anew."""
        with self._lock:
            whole, edge = blocks_in(since, until)
            out: dict[ThreadStack, float] = {}
            for block in whole:
                _add(out, blocks.get(block, {}).items())
            for first, last in _runs(edge):
                _add(out, (((r.pid, r.tid, r.stack_id), r.seconds) for r in read(first, last)))
            return out


def _add(into: dict[ThreadStack, float], items: Iterable[tuple[ThreadStack, float]]) -> None:
    for key, seconds in items:
        into[key] = into.get(key, 0.0) + seconds


def _runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive window ids as (first, last) pairs."""
    runs: list[tuple[int, int]] = []
    for wid in sorted(ids):
        if runs and runs[-1][1] == wid - 1:
            runs[-1] = (runs[-1][0], wid)
        else:
            runs.append((wid, wid))
    return runs


# The route table, the endpoints served and the app's directories, if given.
_RoutesKey = tuple[list[RouteInfo], frozenset[str], 'tuple[str, ...] | None']


class StackFacts:
    """What the analysis asks of a stack (endpoint, application frame, tool work), worked out
    once per stack id with the analysis's own attribution, until the route table or the set
    of endpoints served changes."""

    def __init__(self, frames_of: FramesOf) -> None:
        self._frames_of = frames_of
        self._routes: _RoutesKey | None = None
        self.matcher = RouteMatcher([])
        self._facts: dict[int, tuple[str | None, Frame | None, bool, int | None, bool]] = {}

    def use(self, routes: list[RouteInfo], served: Collection[str] = (),
            roots: Sequence[str] | None = None) -> bool:
        """The route table, the endpoints that served requests and the app's directories
        (`RouteMatcher`); True when they changed (what `learn` taught is then gone)."""
        key = (list(routes), frozenset(served), None if roots is None else tuple(roots))
        if key == self._routes:
            return False
        self._routes = key
        self.matcher = RouteMatcher(*key)
        self._facts.clear()
        return True

    def learn(self, labelled: Iterable[tuple[Sequence[Frame], str]]) -> bool:
        """`RouteMatcher.learn` for the current routes; True when what it knew changed."""
        changed = self.matcher.learn(labelled)
        if changed:
            self._facts.clear()
        return changed

    def of(self, stack_id: int) -> tuple[str | None, Frame | None, bool, int | None, bool]:
        """(endpoint, application frame, tool work, the handler's frame index, work handed to
        a pool) of a stack."""
        found = self._facts.get(stack_id)
        if found is None:
            frames = self._frames_of(stack_id)
            index, endpoint = self.matcher.handler_at(frames) or (None, None)
            found = self._facts[stack_id] = (endpoint,
                                             request_frame(frames, index, self.matcher.roots),
                                             is_tool_work(frames), index,
                                             endpoint is None and offloaded_work(
                                                 frames, self.matcher.roots))
        return found


def cpu_context(per: Mapping[ThreadStack, float], process_cpu: Mapping[int, float],
                facts: StackFacts, roles: Mapping[tuple[int, int], str],
                frames_of: FramesOf, offloaded: Sequence[OffloadLooks] = (),
                native: Mapping[ThreadStack, float] | None = None) -> AnalysisContext:
    """An analysis context holding only what `analysis.cpu` reads: one attributed entry per
    thread and stack with its CPU seconds, the processes' measured CPU ({} when not
    measured: the analysis then counts the samples' own seconds, as for older sessions), and
    the agent's looks at work handed to pools, and the native threads' CPU on the stacks that
    waited for it."""
    # The middleware lines passing requests on, as the report finds them (over the stacks of
    # the range here): where no handler runs below one, the work is the framework's.
    passing = dispatch_lines(((frames_of(s), facts.of(s)[3]) for _, _, s in per),
                             facts.matcher.roots)
    samples = []
    for (pid, tid, stack_id), seconds in sorted(per.items()):
        endpoint, user, tool, index, pooled = facts.of(stack_id)
        if passes_on(user, index, passing):
            user = None
        role = ThreadRole(roles.get((pid, tid), ThreadRole.OTHER.value))
        sample = StackSample(pid, tid, "", frames_of(stack_id), 1, SampleState.RUNNING)
        samples.append(Attributed(0.0, sample, role, endpoint, user, 0.0, tool=tool,
                                  cpu=seconds, offloaded=pooled))
    for (pid, tid, stack_id), seconds in sorted((native or {}).items()):
        if stack_id:
            endpoint = facts.of(stack_id)[0]
            sample = StackSample(pid, tid, "", frames_of(stack_id), 1, SampleState.BLOCKED)
            samples.append(Attributed(0.0, sample, ThreadRole.OTHER, endpoint, None, 0.0,
                                      native=seconds))
    data = SessionData(meta=SessionMeta(), routes=[], roles={}, windows=[], samples=[], requests=[],
                       resources=[], threadpool=[], profiles=[], start=0.0, end=0.0,
                       process_cpu=[ThreadCpu(0.0, pid, 0, s) for pid, s in
                                    sorted(process_cpu.items())], offloaded=list(offloaded),
                       native=[(0.0, pid, tid, (), s)
                               for (pid, tid, _), s in sorted((native or {}).items())])
    return AnalysisContext(data, Thresholds(), facts.matcher, samples, {})
