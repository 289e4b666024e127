"""Everything the dashboard shows, computed from one session file (replayed or being written).

`DashboardSession` is the only place the dashboard reads the session. It keeps incremental
caches (requests by last id, samples by last window id, resources by last row id), so a live
refresh reads only new rows, and every view is a function of those caches and a time range.
Unlike the analysis's `SessionData`, a snapshot loaded whole, it follows a file still being
written and is shared by the server's threads.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from apiscope.analysis.attribution import RouteMatcher, app_roots
from apiscope.analysis.context import AnalysisContext, labelled_stacks
from apiscope.analysis.cpu import cpu_shares, native_cpu_shares, server_cpu_shares
from apiscope.analysis.stats import gc_pauses_of, loop_lag_of
from apiscope.dashboard.analysis import FlagAnalysis
from apiscope.dashboard.cputime import CpuIndex, StackFacts, cpu_context
from apiscope.dashboard.flame import FunctionRow, from_handler, pruned_tree, top_functions
from apiscope.dashboard.requests import (
    EndpointColumns,
    EndpointStats,
    LatencySeries,
    Request,
    RequestIndex,
    latency_series,
    slowest,
)
from apiscope.dashboard.samples import BLOCK, EndpointOf, SampleIndex, SampleSlice
from apiscope.exporters.tree import FlameNode
from apiscope.flag import Flag
from apiscope.model import LoopLagSample, ProcessInfo, RouteInfo
from apiscope.report import GcPauses, LoopLag
from apiscope.store.reader import SessionReader

Range = tuple[float, float] | None
SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}
# Seconds between two readings of the agent's route-labelled stacks (`_learn_handlers`).
LEARN_EVERY = 10.0


def route_matcher(routes: Sequence[RouteInfo], served: Collection[str]) -> EndpointOf:
    return RouteMatcher(routes, served).endpoint_of


@dataclass(frozen=True, slots=True)
class EndpointRow:
    stats: EndpointStats
    cpu_share: float | None  # None when no stack samples were recorded


@dataclass(slots=True)
class ResourceSeries:
    ts: list[float] = field(default_factory=list)
    cpu_percent: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ProcessCard:
    pid: int
    role: str
    command: str
    exited_at: float | None
    cpu_percent: float | None  # the latest sample
    cpu_percent_avg: float | None
    rss_mb: float | None
    rss_mb_max: float | None
    threads: int | None
    fds: int | None
    # the share of its CPU spent in the server's and framework's own work (the report's
    # server_cpu_share); None when unknown (no stack samples, or on-CPU was not measured)
    server_cpu_share: float | None = None
    # the share of its CPU used by threads Python does not run (a C extension's own: the
    # report's native_cpu_share); None when unknown
    native_cpu_share: float | None = None
    loop_lag: LoopLag | None = None  # its event loop's lag (the report's), None without it
    # the loop passes its garbage collector held (the report's loop_gc_pauses), None for none
    gc_pauses: GcPauses | None = None


@dataclass(frozen=True, slots=True)
class SlowRequest:
    request: Request
    top_statement: str | None  # the statement issued most often by that request
    top_statement_count: int


class DashboardSession:
    """The dashboard's view of one session; thread-safe (Flask serves callbacks in threads)."""

    def __init__(self, path: str | os.PathLike[str], *,
                 analysis: FlagAnalysis | None = None) -> None:
        self.reader = SessionReader(path)
        self.analysis = analysis
        # Set when the flags are the collector's to store: until it has, none are known.
        self.awaits_stored_flags = False
        self._flags_stored = False
        # One lock for every read: Flask runs callbacks in threads, and they share the
        # reader's single SQLite connection.
        self._lock = threading.RLock()
        self.requests = RequestIndex(self.reader, self._lock)
        self.samples = SampleIndex(self.reader, route_matcher, self._lock,
                                   served=lambda: self.requests.columns)
        self.cpu = CpuIndex(self.reader, BLOCK, self._lock)
        self._facts = StackFacts(self.samples.frames)
        self._process_cpu_measured = self._thread_cpu_measured = False
        self._contexts: dict[Range, AnalysisContext] = {}
        self._learn_at = 0.0  # monotonic time of the next `_learn_handlers`
        self._resources: dict[int, ResourceSeries] = {}
        self._last_resource = 0
        self._processes: list[ProcessInfo] = []
        self._flags: list[Flag] = []
        self._routes: list[RouteInfo] = []
        self._app_roots: tuple[str, ...] = ()
        self._span: Range = None
        self._shares: dict[Range, dict[str, float]] = {}
        self._stats: dict[tuple[Range, str | None], list[EndpointStats]] = {}
        self.version: list[Any] = []
        self.refresh()

    def close(self) -> None:
        if self.analysis is not None:
            self.analysis.stop()
        self.reader.close()

    # -- refreshing -------------------------------------------------------------------------

    def refresh(self) -> list[Any]:
        """Read what was written since the last call; returns a version that changes with it."""
        with self._lock:
            self.requests.refresh()
            self.samples.refresh()
            self.cpu.refresh(self.samples.windows)
            # once measured, always measured: skip the probe then
            self._thread_cpu_measured = (self._thread_cpu_measured
                                         or self.reader.measures_thread_cpu())
            self._process_cpu_measured = (self._process_cpu_measured
                                          or self.reader.measures_process_cpu())
            self._refresh_resources()
            self._processes = self.reader.processes()
            stored = self.reader.flags()
            self._flags_stored = self._flags_stored or self.reader.flags_stored()
            if stored and self.analysis is not None:
                self.analysis.stop(wait=False)  # the collector's own flags supersede ours
            elif self.analysis is not None:
                stored = list(self.analysis.flags or ())
            self._flags = sorted(stored, key=lambda f: SEVERITY_ORDER.get(f.severity, 3))
            self._routes = self.reader.routes()
            self._app_roots = app_roots(self._routes, own_code=self.samples.runs_own_code())
            if self._facts.use(self._routes, self.requests.columns, self._app_roots):
                self._learn_at = 0.0  # a new matcher: taught again at once
            learnt = self._learn_handlers()
            self._span = self._time_range()
            # JSON-shaped (lists, not tuples) so it compares equal after a trip to the browser
            version = [self.requests.last_id, self.samples.last_window_id, self._last_resource,
                       len(self._flags), len(self._routes),
                       self.analysis.generation if self.analysis else 0,
                       [[p.pid, p.exited_at] for p in self._processes]]
            if version != self.version or learnt:
                self._shares.clear()
                self._stats.clear()
                self._contexts.clear()
                self.version = version
            return self.version

    def _learn_handlers(self) -> bool:
        """Where one handler serves several endpoints, tie the app functions below it to
        theirs from the agent's route-labelled stacks, as the report does
        (`RouteMatcher.learn`), every `LEARN_EVERY` seconds; True when that changed."""
        now = time.monotonic()
        if not self._facts.matcher.shares_handlers() or now < self._learn_at:
            return False
        self._learn_at = now + LEARN_EVERY
        return self._facts.learn(labelled_stacks(self.reader.loop_stalls(),
                                                 self.reader.profiles(), self._app_roots))

    def _time_range(self) -> Range:
        """First and last instant anything was recorded, from the caches (no table scan)."""
        windows = self.samples.windows
        starts = [self.requests.first_start, *(s.ts[0] for s in self._resources.values())]
        ends = [self.requests.last_end, *(s.ts[-1] for s in self._resources.values())]
        if windows:
            starts.append(min(w.start for w in windows))
            ends.append(max(w.end for w in windows))
        low, high = min(starts), max(ends)
        return None if low > high else (low, high)

    def _refresh_resources(self) -> None:
        for rowid, sample in self.reader.resources_after(self._last_resource):
            series = self._resources.setdefault(sample.pid, ResourceSeries())
            series.ts.append(sample.ts)
            series.cpu_percent.append(sample.cpu_percent)
            series.rss_mb.append(sample.rss_bytes / 1e6)
            series.threads.append(sample.threads)
            series.fds.append(sample.fds)
            self._last_resource = rowid

    # -- session-wide facts -----------------------------------------------------------------

    def span(self) -> Range:
        return self._span

    def seconds(self, rng: Range) -> float:
        chosen = rng or self._span
        return 0.0 if chosen is None else max(chosen[1] - chosen[0], 0.0)

    def routes(self) -> list[RouteInfo]:
        return self._routes

    def app_roots(self) -> tuple[str, ...]:
        """Directories of the application's code, from the route table."""
        return self._app_roots

    def flags(self, endpoint: str | None = None) -> list[Flag]:
        return [f for f in self._flags if endpoint is None or f.route == endpoint]

    def flags_pending(self) -> str | None:
        """Why no flags can be shown yet (the analysis is running or failed), else None."""
        if self._flags:
            return None
        if self.analysis is None:
            if self.awaits_stored_flags and not self._flags_stored:
                return "analysing the session for bottlenecks…"
            return None
        if self.analysis.error is not None:
            return f"the analysis failed on this session ({self.analysis.error})"
        if self.analysis.flags is None:
            return "analysing the session for bottlenecks…"
        return None

    def has_samples(self) -> bool:
        return bool(self.samples.windows)

    def collection_note(self) -> str:
        """How the session is being collected, as the budget runs it: the rate sampled at now
        within the overhead budget, and the share of requests kept on a busy server."""
        with self._lock:
            meta = self.reader.meta()
            windows = self.samples.windows
            parts = []
            if windows:
                budget = (f" within a {meta.max_overhead:g}% budget"
                          if meta.max_overhead else "")
                parts.append(f"sampling at {windows[-1].rate_hz} Hz{budget}")
            every = meta.requests_kept_every or 1
            if every > 1:
                parts.append(f"1 in {every} requests kept (counts are estimates)")
            return "; ".join(parts)

    def gaps(self) -> list[tuple[float, float, str | None]]:
        """(start, end, reason) of each stretch without stack samples (a target stopped), as
        the collector notes them: live, each appears once it has ended."""
        with self._lock:
            meta = self.reader.meta()
        return [(gap.start, gap.end, gap.reason) for gap in meta.gaps]

    def threads(self) -> list[tuple[int, int, str, str]]:
        """(pid, tid, name, role) of every sampled thread."""
        with self._lock:
            found = self.reader.threads()
        return sorted((pid, tid, name, role.value)
                      for (pid, tid), (name, role) in found.items())

    def pids(self) -> list[int]:
        return sorted({p.pid for p in self._processes} | set(self._resources)
                      | {s[0] for s in self.samples.series})

    # -- overview ---------------------------------------------------------------------------

    def endpoint_rows(self, rng: Range, only: str | None = None) -> list[EndpointRow]:
        """Statistics per endpoint (or of `only`) in the range, with their CPU shares."""
        key = (rng, only)
        stats = self._stats.get(key)
        if stats is None:
            since, until = rng if rng else (None, None)
            stats = self._stats[key] = self.requests.stats(since, until, self.seconds(rng), only)
        shares = self.cpu_shares(rng) if self.has_samples() else None
        return [EndpointRow(s, None if shares is None else shares.get(s.endpoint, 0.0))
                for s in stats]

    def cpu_shares(self, rng: Range) -> dict[str, float]:
        """Each endpoint's share of the target's measured CPU time in the range: the report's
        figure (`analysis.cpu.cpu_shares`) over the windows starting in the range."""
        with self._lock:
            cached = self._shares.get(rng)
            if cached is None:
                cached = self._shares[rng] = cpu_shares(self._cpu_context(rng))
            return cached

    def server_cpu_shares(self) -> dict[int, float]:
        """Each process's share of its CPU spent in the server's own work, over the session,
        as the report gives it: only when the sampler told on-CPU from off-CPU."""
        with self._lock:
            if not (self._thread_cpu_measured or self.samples.activity_probed()):
                return {}
            return server_cpu_shares(self._cpu_context(None))

    def native_cpu_shares(self) -> dict[int, float]:
        """Each process's share of its CPU used by threads Python does not run, over the
        session, as the report gives it."""
        with self._lock:
            if not self._process_cpu_measured:
                return {}
            return native_cpu_shares(self._cpu_context(None))

    def _cpu_context(self, rng: Range) -> AnalysisContext:
        ctx = self._contexts.get(rng)
        if ctx is None:
            since, until = rng if rng else (None, None)
            per = self.cpu.seconds(since, until, self.samples.window_blocks)
            process = (self.reader.process_cpu_seconds(since, until)
                       if self._process_cpu_measured else {})
            native = self.cpu.native(since, until, self.samples.window_blocks)
            ctx = self._contexts[rng] = cpu_context(per, process, self._facts,
                                                    self.samples.roles, self.samples.frames,
                                                    self.reader.offloaded(since, until), native)
        return ctx

    def process_cards(self) -> list[ProcessCard]:
        with self._lock:
            return self._process_cards()

    def _process_cards(self) -> list[ProcessCard]:
        known = {p.pid: p for p in self._processes}
        server = self.server_cpu_shares() if self.has_samples() else {}
        native = self.native_cpu_shares() if self.has_samples() else {}
        lags: dict[int, list[LoopLagSample]] = {}
        for lag in self.reader.loop_lag():
            lags.setdefault(lag.pid, []).append(lag)
        held: dict[int, list[float]] = {}
        for held_pid, ms in self.reader.loop_gc_held():
            held.setdefault(held_pid, []).append(ms)
        cards = []
        for pid in sorted(set(known) | set(self._resources)):
            info = known.get(pid)
            res = self._resources.get(pid)
            has = res is not None and bool(res.ts)
            cards.append(ProcessCard(
                pid, info.role if info else "process", info.command if info else "",
                info.exited_at if info else None,
                res.cpu_percent[-1] if res and has else None,
                sum(res.cpu_percent) / len(res.cpu_percent) if res and has else None,
                res.rss_mb[-1] if res and has else None,
                max(res.rss_mb) if res and has else None,
                res.threads[-1] if res and has else None,
                res.fds[-1] if res and has else None, server.get(pid), native.get(pid),
                loop_lag_of(lags.get(pid, [])), gc_pauses_of(held.get(pid, []))))
        return cards

    # -- one endpoint -----------------------------------------------------------------------

    def latency_series(self, endpoint: str, rng: Range) -> LatencySeries | None:
        span = rng or self._span
        if span is None:
            return None
        col = self.requests.columns.get(endpoint, EndpointColumns())
        return latency_series(col.starts, col.durations, *span)

    def slowest_requests(self, endpoint: str, rng: Range, limit: int = 15) -> list[SlowRequest]:
        since, until = rng if rng else (None, None)
        rows = slowest(self.requests.select(since, until, endpoint), limit)
        with self._lock:
            tops = self._top_statements(rows)
        return [SlowRequest(r, *tops.get(r.id, (None, 0))) for r in rows]

    def _top_statements(self, rows: list[Request]) -> dict[int, tuple[str, int]]:
        tops: dict[int, tuple[str, int]] = {}
        for st in self.reader.request_statements([r.id for r in rows]):
            tops[st.request_id] = (st.sql, st.count)  # least frequent first: the most one wins
        return tops

    # -- stacks -----------------------------------------------------------------------------

    def flame(self, flt: SampleSlice) -> FlameNode:
        return pruned_tree(self.samples.stack_counts(flt), self.samples.frames)

    def endpoint_flame(self, flt: SampleSlice, endpoint: str) -> FlameNode:
        """The slice's tree rooted at `endpoint`'s handler, framework-only stacks folded."""
        route = next((r for r in self._routes if f"{r.method} {r.template}" == endpoint), None)
        roots, frames = self.app_roots(), self.samples.frames
        return pruned_tree(self.samples.stack_counts(flt),
                           lambda stack_id: from_handler(frames(stack_id), route, roots))

    def functions(self, flt: SampleSlice, limit: int = 25) -> tuple[list[FunctionRow], int]:
        return top_functions(self.samples.stack_counts(flt), self.samples.frames,
                             self.app_roots(), limit)

    # -- resources --------------------------------------------------------------------------

    def resource_series(self) -> dict[int, ResourceSeries]:
        """A copy: the live refresh appends to the cached lists."""
        with self._lock:
            return {pid: ResourceSeries(list(s.ts), list(s.cpu_percent), list(s.rss_mb),
                                        list(s.threads), list(s.fds))
                    for pid, s in self._resources.items()}
