"""Every record a collection receives goes to the session and to the live metrics, here.

The session file is the record of truth; the metrics are what Prometheus and the dashboard
see while the run goes on. Writing to one and forgetting the other would make them disagree,
so each kind of record has one method that does both (or says why only one applies).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from apiscope.collect.figures import WindowCounts, loop_blocked_seconds, window_counts
from apiscope.collectors.agent_client import PulledProfile, WatchdogReport
from apiscope.model import (
    AgentStats,
    GilSample,
    LoopLagSample,
    LoopStall,
    OffloadLooks,
    ProcessInfo,
    ProfileNode,
    RequestRecord,
    ResourceSample,
    RouteInfo,
    StackWindow,
    ThreadPoolSample,
    ThreadSpan,
    UnfinishedRequest,
)


class Writer(Protocol):
    """The session writer's side that a collection uses (`SessionWriter`)."""

    def set_meta(self, **values: Any) -> None: ...
    def put_process(self, info: ProcessInfo) -> None: ...
    def mark_exited(self, pid: int, ts: float) -> None: ...
    def put_window(self, window: StackWindow) -> None: ...
    def put_routes(self, pid: int, routes: Iterable[RouteInfo]) -> None: ...
    def put_requests(self, records: Iterable[RequestRecord]) -> None: ...
    def put_resources(self, samples: Iterable[ResourceSample]) -> None: ...
    def put_threadpool(self, samples: Iterable[ThreadPoolSample]) -> None: ...
    def put_agent_stats(self, stats: AgentStats) -> None: ...
    def put_profile(self, pid: int, start: float, method: str, route: str,
                    duration_ms: float, tree: ProfileNode | dict[str, Any] | None) -> None: ...
    def put_loop_stalls(self, stalls: Iterable[LoopStall]) -> None: ...
    def put_loop_lag(self, samples: Iterable[LoopLagSample]) -> None: ...
    def put_unfinished(self, requests: Iterable[UnfinishedRequest]) -> None: ...
    def put_gil(self, samples: Iterable[GilSample]) -> None: ...
    def put_offloaded(self, looks: Iterable[OffloadLooks]) -> None: ...
    def put_thread_spans(self, spans: Iterable[ThreadSpan]) -> None: ...


class Metrics(Protocol):
    """The live metrics' side that a collection feeds (`MetricsExporter`)."""

    def observe_samples(self, stored: int, errors: int, dropped: int = 0) -> None: ...
    def observe_loop_blocked(self, pid: int, seconds: float) -> None: ...
    def observe_requests(self, records: Iterable[RequestRecord]) -> None: ...
    def observe_resources(self, samples: Iterable[ResourceSample]) -> None: ...
    def observe_threadpool(self, sample: ThreadPoolSample) -> None: ...
    def observe_agent(self, stats: AgentStats) -> None: ...
    def forget_process(self, pid: int) -> None: ...


class RecordSink:
    """Fans each record out to the session writer and the metrics."""

    def __init__(self, writer: Writer, metrics: Metrics) -> None:
        self.writer = writer
        self.metrics = metrics

    def meta(self, **values: Any) -> None:
        """Session facts (the metrics have no use for them)."""
        self.writer.set_meta(**values)

    def process(self, info: ProcessInfo) -> None:
        """A process of the target, seen at the start or born since (its figures come with
        its first resource sample)."""
        self.writer.put_process(info)

    def exited(self, pid: int, ts: float) -> None:
        """A process gone: its end is stored, its per-process gauges dropped."""
        self.writer.mark_exited(pid, ts)
        self.metrics.forget_process(pid)

    def window(self, window: StackWindow) -> WindowCounts:
        """A sampling window: its samples, how many were lost, and how long each event loop
        was busy in it. Returns the window's counts, for the --verbose line."""
        self.writer.put_window(window)
        counts = window_counts(window)
        self.metrics.observe_samples(counts.stored, counts.errors, dropped=counts.dropped)
        for pid, seconds in loop_blocked_seconds(window).items():
            self.metrics.observe_loop_blocked(pid, seconds)
        return counts

    def resources(self, samples: Sequence[ResourceSample]) -> None:
        self.writer.put_resources(samples)
        self.metrics.observe_resources(samples)

    def requests(self, records: Sequence[RequestRecord]) -> None:
        if records:
            self.writer.put_requests(records)
            self.metrics.observe_requests(records)

    def routes(self, pid: int, routes: Sequence[RouteInfo]) -> None:
        """The app's routes (for the report's handlers; nothing to count)."""
        self.writer.put_routes(pid, routes)

    def threadpool(self, sample: ThreadPoolSample) -> None:
        self.writer.put_threadpool([sample])
        self.metrics.observe_threadpool(sample)

    def agent_stats(self, stats: AgentStats) -> None:
        self.writer.put_agent_stats(stats)
        self.metrics.observe_agent(stats)

    def profile(self, profile: PulledProfile) -> None:
        """A sampled request's profile (the dashboard reads it from the session)."""
        self.writer.put_profile(profile.pid, profile.start, profile.method, profile.route,
                                profile.duration_ms, profile.tree)

    def unfinished(self, requests: Sequence[UnfinishedRequest]) -> None:
        """Requests still running as the collection ended (the analysis reads them)."""
        if requests:
            self.writer.put_unfinished(requests)

    def offloaded(self, looks: Sequence[OffloadLooks]) -> None:
        """Whose requests the pool threads' handed-off work was (the analysis reads it)."""
        if looks:
            self.writer.put_offloaded(looks)

    def thread_spans(self, spans: Sequence[ThreadSpan]) -> None:
        """Which threads ran which endpoint's requests (the analysis reads them)."""
        if spans:
            self.writer.put_thread_spans(spans)

    def watchdogs(self, report: WatchdogReport) -> None:
        """The agent's loop and GIL watchdogs (the analysis reads them from the session)."""
        self.writer.put_loop_stalls(report.stalls)
        self.writer.put_loop_lag(report.lag)
        if report.gil is not None:
            self.writer.put_gil([report.gil])
