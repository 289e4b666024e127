"""The requests the agent recorded, held in memory for per-endpoint statistics.

A hundred thousand requests fit easily in memory; percentiles over a time range are then a
filter and a sort of one column per endpoint, far cheaper than asking SQLite for each view.
New requests are read incrementally, keyed by the last request id seen. A request the agent
kept for n (one in n kept on a busy server) is held n times, as the same tuple, so that every
count, rate and percentile here is the estimate it stands for.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from apiscope.analysis.stats import percentile
from apiscope.store.reader import SessionReader


class Request(NamedTuple):
    id: int
    pid: int
    start: float
    duration_ms: float
    endpoint: str  # "METHOD /template"
    status: int
    exc_type: str | None
    query_count: int
    query_ms: float


@dataclass(frozen=True, slots=True)
class EndpointStats:
    endpoint: str
    count: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    error_rate: float


@dataclass(frozen=True, slots=True)
class LatencySeries:
    """Per time bin: bin start, requests per second and latency percentiles (ms)."""

    starts: list[float]
    rps: list[float]
    p50: list[float | None]
    p95: list[float | None]
    p99: list[float | None]


@dataclass(slots=True)
class EndpointColumns:
    """One endpoint's requests as parallel columns (cheap to filter and sort)."""

    starts: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    failed: list[bool] = field(default_factory=list)  # answered 5xx


class RequestIndex:
    """All recorded requests of a session; safe to share between threads."""

    def __init__(self, reader: SessionReader, lock: threading.RLock | None = None) -> None:
        self._reader = reader
        self._lock = lock or threading.RLock()
        self.rows: list[Request] = []
        self.columns: dict[str, EndpointColumns] = {}
        self.last_id = 0
        self.first_start = math.inf
        self.last_end = -math.inf

    def refresh(self) -> bool:
        with self._lock:
            fresh: list[Request] = []
            for s in self._reader.requests_after(self.last_id):
                row = Request(s.id, s.pid, s.start, s.duration_ms, f"{s.method} {s.route}",
                              s.status, s.exc_type, s.query_count, s.query_ms)
                if s.weight == 1:
                    fresh.append(row)
                else:
                    fresh.extend([row] * max(1, s.weight))
            if not fresh:
                return False
            # New lists, so a callback reading the old ones in another thread is undisturbed.
            columns = {e: EndpointColumns(list(c.starts), list(c.durations), list(c.failed))
                       for e, c in self.columns.items()}
            for r in fresh:
                col = columns.setdefault(r.endpoint, EndpointColumns())
                col.starts.append(r.start)
                col.durations.append(r.duration_ms)
                col.failed.append(r.status >= 500)
            self.first_start = min(self.first_start, min(r.start for r in fresh))
            self.last_end = max(self.last_end,
                                max(r.start + r.duration_ms / 1000 for r in fresh))
            self.rows = self.rows + fresh
            self.columns = columns
            self.last_id = fresh[-1].id
            return True

    def select(self, since: float | None = None, until: float | None = None,
               endpoint: str | None = None) -> list[Request]:
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        return [r for r in self.rows if lo <= r.start < hi
                and (endpoint is None or r.endpoint == endpoint)]

    def stats(self, since: float | None, until: float | None, seconds: float,
              only: str | None = None) -> list[EndpointStats]:
        """Per-endpoint count, rate, latency percentiles and 5xx share, busiest first."""
        out = []
        for endpoint, col in self.columns.items():
            if only is not None and endpoint != only:
                continue
            if since is None and until is None:
                durations, errors = sorted(col.durations), sum(col.failed)
            else:
                lo = -math.inf if since is None else since
                hi = math.inf if until is None else until
                keep = [i for i, t in enumerate(col.starts) if lo <= t < hi]
                durations = sorted([col.durations[i] for i in keep])
                errors = sum([col.failed[i] for i in keep])
            if durations:
                out.append(summarize(endpoint, durations, errors, seconds))
        out.sort(key=lambda s: (-s.count, s.endpoint))
        return out


def summarize(endpoint: str, ordered: list[float], errors: int, seconds: float) -> EndpointStats:
    """The statistics of one endpoint's sorted durations (at least one: `RequestIndex.stats`
    leaves out an endpoint without requests in the range)."""
    return EndpointStats(
        endpoint, len(ordered), len(ordered) / max(seconds, 1e-9),
        percentile(ordered, 0.50), percentile(ordered, 0.95), percentile(ordered, 0.99),
        ordered[-1], errors / len(ordered))


def bin_seconds(span: float, bins: int = 120) -> float:
    """A round bin width giving about `bins` bins over `span` seconds (at least 1 s)."""
    raw = max(span / bins, 1.0)
    for nice in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if raw <= nice:
            return float(nice)
    return float(math.ceil(raw / 3600) * 3600)


def latency_series(starts: Iterable[float], durations: Iterable[float], start: float,
                   end: float) -> LatencySeries:
    width = bin_seconds(end - start)
    buckets: dict[int, list[float]] = {}
    for t, duration in zip(starts, durations, strict=True):
        if start <= t < end:
            buckets.setdefault(int((t - start) // width), []).append(duration)
    series = LatencySeries([], [], [], [], [])
    for index in range(int((end - start) // width) + 1):
        values = sorted(buckets.get(index, ()))
        series.starts.append(start + index * width)
        series.rps.append(len(values) / width)
        for out, q in ((series.p50, 0.5), (series.p95, 0.95), (series.p99, 0.99)):
            out.append(percentile(values, q) if values else None)  # an empty bin is a gap
    return series


def slowest(requests: Iterable[Request], limit: int = 20) -> list[Request]:
    """The `limit` slowest requests, each once (a kept-for-n request is held n times)."""
    unique = {id(r): r for r in requests}.values()
    return sorted(unique, key=lambda r: -r.duration_ms)[:limit]
