"""Stack samples held for fast slicing while the session grows.

A session of a million samples must answer a new filter within a fraction of a second, so the
samples table is read once, aggregated by SQLite into blocks of consecutive sampling windows
(one count per block, thread, stack, state and GIL flag), and kept in memory. A time range uses
the blocks it covers whole and asks SQLite only for the windows at its two edges. New windows
are read incrementally, keyed by the last window id seen.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from apiscope.analysis.attribution import runs_own_code
from apiscope.model import Frame, RouteInfo, SampleState, WindowInfo
from apiscope.store.reader import SessionReader

HANDLER_ROLES = frozenset({"loop", "worker"})  # the threads that run request handlers
BLOCK = 32  # windows per in-memory block
CACHE_SIZE = 64  # remembered slices

Series = tuple[int, int, str, bool | None]  # pid, tid, state (as stored), gil
EndpointOf = Callable[[Sequence[Frame]], "str | None"]
MatcherFactory = Callable[[Sequence[RouteInfo], frozenset[str]], EndpointOf]


@dataclass(frozen=True, slots=True)
class SampleSlice:
    """Which samples a view shows; None matches everything."""

    since: float | None = None
    until: float | None = None
    pid: int | None = None
    tid: int | None = None
    endpoint: str | None = None
    # Off-CPU time at working stacks (a sleep, I/O, a lock, the GIL): by default a view shows
    # what ran on a CPU only, so a handler sleeping in time.sleep does not read as CPU work.
    include_blocked: bool = False
    include_idle: bool = False  # threads waiting for work (selector, idle pool workers)
    gil_only: bool = False  # only samples that held the GIL
    roles: frozenset[str] | None = None  # thread roles ("loop", "worker", "other")


class SampleIndex:
    """The samples of one session, aggregated for slicing; safe to share between threads."""

    def __init__(self, reader: SessionReader, matcher_factory: MatcherFactory,
                 lock: threading.RLock | None = None,
                 served: Callable[[], Collection[str]] = tuple) -> None:
        self._reader = reader
        self._matcher_factory = matcher_factory
        self._served = served  # the endpoints that served requests so far
        # the owner's lock: one SQLite connection must not run two statements at once
        self._lock = lock or threading.RLock()
        self.windows: list[WindowInfo] = []
        self._window_pos: dict[int, int] = {}
        self._series: dict[Series, int] = {}
        self.series: list[Series] = []
        self._blocks: dict[int, dict[tuple[int, int], int]] = {}
        self._stacks: dict[int, tuple[Frame, ...]] = {}
        self._own_code = False  # see `runs_own_code`
        self._own_checked = 0  # the last stack id it asked of
        self._endpoints: dict[int, str | None] = {}
        self._route_key: tuple[int, frozenset[str]] | None = None
        self._matcher: EndpointOf = lambda frames: None
        self._cache: OrderedDict[SampleSlice, dict[int, int]] = OrderedDict()
        self._active: dict[int, int] = {}  # window id -> samples not waiting
        self.roles: dict[tuple[int, int], str] = {}  # (pid, tid) -> thread role

    @property
    def last_window_id(self) -> int:
        return self.windows[-1].id if self.windows else 0

    # -- incremental loading ----------------------------------------------------------------

    def refresh(self) -> bool:
        """Read what was written since the last call; True when anything changed."""
        with self._lock:
            changed = self._refresh_routes()
            last = self.last_window_id
            new = self._reader.windows(after_id=last)
            if new:
                # Only windows already listed are read, so a window committed between the two
                # queries is picked up whole on the next refresh.
                self._load_samples(last, new[-1].id)
                self._stacks.update(self._reader.stacks_after(max(self._stacks, default=0)))
                self.roles = {key: role.value
                              for key, (_, role) in self._reader.threads().items()}
                for w in new:
                    self._window_pos[w.id] = len(self.windows)
                    self.windows.append(w)
                changed = True
            if changed:
                self._cache.clear()
            return changed

    def _refresh_routes(self) -> bool:
        routes = self._reader.routes()
        served = frozenset(self._served())
        if (len(routes), served) == self._route_key:
            return False
        self._route_key = (len(routes), served)
        self._matcher = self._matcher_factory(routes, served)
        self._endpoints.clear()
        return True

    def _load_samples(self, after: int, upto: int) -> None:
        for block, c in self._reader.stack_counts_by_block(after, upto, BLOCK):
            key = (self._series_index((c.pid, c.tid, c.state, c.gil)), c.stack_id)
            counts = self._blocks.setdefault(block, {})
            counts[key] = counts.get(key, 0) + c.count
        self._active.update(self._reader.active_counts(after, upto))

    def _series_index(self, series: Series) -> int:
        index = self._series.get(series)
        if index is None:
            index = self._series[series] = len(self.series)
            self.series.append(series)
        return index

    # -- queries ----------------------------------------------------------------------------

    def frames(self, stack_id: int) -> tuple[Frame, ...]:
        return self._stacks.get(stack_id, ())

    def runs_own_code(self) -> bool:
        """Whether a stack so far runs the application's own files (`runs_own_code`): each
        stack is asked once, and once one does, the answer stays."""
        with self._lock:
            if not self._own_code:
                new = [frames for stack_id, frames in self._stacks.items()
                       if stack_id > self._own_checked]
                self._own_checked = max(self._stacks, default=0)
                self._own_code = runs_own_code(new)
            return self._own_code

    def endpoint_of(self, stack_id: int) -> str | None:
        if stack_id not in self._endpoints:
            self._endpoints[stack_id] = self._matcher(self.frames(stack_id))
        return self._endpoints[stack_id]

    def stack_counts(self, flt: SampleSlice) -> dict[int, int]:
        """Sample count per stack id for the slice (cached until new data arrives)."""
        with self._lock:
            cached = self._cache.get(flt)
            if cached is not None:
                self._cache.move_to_end(flt)
                return cached
            counts = self._compute(flt)
            self._cache[flt] = counts
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return counts

    def _compute(self, flt: SampleSlice) -> dict[int, int]:
        wanted = {i for i, s in enumerate(self.series)
                  if _series_matches(s, flt, self.roles.get((s[0], s[1]), "other"))}
        whole, edge = self.window_blocks(flt.since, flt.until)
        per_stack: dict[int, int] = {}
        for block in whole:
            for (series, stack_id), count in self._blocks.get(block, {}).items():
                if series in wanted:
                    per_stack[stack_id] = per_stack.get(stack_id, 0) + count
        if edge:
            self._add_edge_windows(edge, wanted, per_stack)
        if flt.endpoint is not None:
            per_stack = {sid: c for sid, c in per_stack.items()
                         if self.endpoint_of(sid) == flt.endpoint}
        return per_stack

    def window_blocks(self, since: float | None,
                      until: float | None) -> tuple[list[int], list[int]]:
        """Blocks wholly inside the range, and the ids of in-range windows of the others."""
        if since is None and until is None:
            return sorted(self._blocks), []
        lo = float("-inf") if since is None else since
        hi = float("inf") if until is None else until
        members: dict[int, list[bool]] = {}
        ids: dict[int, list[int]] = {}
        for w in self.windows:
            block = (w.id - 1) // BLOCK
            inside = lo <= w.start < hi
            members.setdefault(block, []).append(inside)
            if inside:
                ids.setdefault(block, []).append(w.id)
        whole = [b for b, flags in members.items() if all(flags)]
        edge = [wid for b, flags in members.items() if any(flags) and not all(flags)
                for wid in ids[b]]
        return whole, edge

    def _add_edge_windows(self, window_ids: list[int], wanted: set[int],
                          per_stack: dict[int, int]) -> None:
        for c in self._reader.stack_counts_in(window_ids):
            series = self._series.get((c.pid, c.tid, c.state, c.gil))
            if series is not None and series in wanted:
                per_stack[c.stack_id] = per_stack.get(c.stack_id, 0) + c.count

    def activity_probed(self) -> bool:
        """Whether the sampler told off-CPU from on-CPU samples (BLOCKED or GIL states seen),
        as the report asks before it gives the server's own CPU share."""
        return any(state in _WAITS or gil is not None
                   for _, _, state, gil in self.series)

    def has_handler_roles(self) -> bool:
        """Whether the collector told event-loop and thread-pool threads apart."""
        return any(role in HANDLER_ROLES for role in self.roles.values())

    def active_rate(self) -> list[tuple[float, float]]:
        """(window start, active samples per second) of every window, for the timeline."""
        with self._lock:
            return [(w.start, self._active.get(w.id, 0) / max(w.end - w.start, 1e-3))
                    for w in self.windows]


# Off-CPU at a working stack: its own wait (sleep, I/O, lock, GIL) or waiting for a free CPU.
_WAITS = frozenset({SampleState.BLOCKED.value, SampleState.RUNNABLE.value})


def _series_matches(series: Series, flt: SampleSlice, role: str) -> bool:
    pid, tid, state, gil = series
    if flt.pid is not None and pid != flt.pid:
        return False
    if flt.tid is not None and tid != flt.tid:
        return False
    if flt.roles is not None and role not in flt.roles:
        return False
    if not flt.include_idle and state == SampleState.WAITING.value:
        return False
    if not flt.include_blocked and state in _WAITS:
        return False
    return not (flt.gil_only and gil is not True)
