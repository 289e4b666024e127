"""The requests the agent recorded, held in memory for per-endpoint statistics.

A hundred thousand requests fit easily in memory as tuples; percentiles over a time range are
then a filter and a sort, far cheaper than asking SQLite for each view. New requests are read
incrementally, keyed by the last request id seen.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

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


class RequestIndex:
    """All recorded requests of a session; safe to share between threads."""

    def __init__(self, reader: SessionReader) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        self.rows: list[Request] = []
        self.last_id = 0

    def refresh(self) -> bool:
        with self._lock:
            fresh = [Request(rid, pid, start, dur, f"{method} {route}", status, exc, qc, qms)
                     for rid, pid, start, dur, method, route, status, exc, qc, qms in
                     self._reader.query(
                         "SELECT id, pid, start, duration_ms, method, route, status, exc_type,"
                         " query_count, query_ms FROM requests WHERE id > ? ORDER BY id",
                         (self.last_id,))]
            if not fresh:
                return False
            # A new list, so readers iterating the old one are never disturbed.
            self.rows = self.rows + fresh
            self.last_id = fresh[-1].id
            return True

    def select(self, since: float | None = None, until: float | None = None,
               endpoint: str | None = None) -> list[Request]:
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        return [r for r in self.rows if lo <= r.start < hi
                and (endpoint is None or r.endpoint == endpoint)]

    def endpoints(self) -> list[str]:
        return sorted({r.endpoint for r in self.rows})


def percentile(ordered: list[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, interpolating linearly between ranks."""
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def endpoint_stats(requests: Iterable[Request], seconds: float) -> list[EndpointStats]:
    """Per-endpoint count, rate, latency percentiles and 5xx share, busiest first."""
    groups: dict[str, list[Request]] = {}
    for r in requests:
        groups.setdefault(r.endpoint, []).append(r)
    out = []
    for endpoint, rows in groups.items():
        durations = sorted(r.duration_ms for r in rows)
        errors = sum(1 for r in rows if r.status >= 500)
        out.append(EndpointStats(
            endpoint, len(rows), len(rows) / max(seconds, 1e-9),
            percentile(durations, 0.50), percentile(durations, 0.95),
            percentile(durations, 0.99), durations[-1], errors / len(rows)))
    out.sort(key=lambda s: (-s.count, s.endpoint))
    return out


def bin_seconds(span: float, bins: int = 120) -> float:
    """A round bin width giving about `bins` bins over `span` seconds (at least 1 s)."""
    raw = max(span / bins, 1.0)
    for nice in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if raw <= nice:
            return float(nice)
    return float(math.ceil(raw / 3600) * 3600)


def latency_series(requests: Iterable[Request], start: float, end: float) -> LatencySeries:
    width = bin_seconds(end - start)
    buckets: dict[int, list[float]] = {}
    for r in requests:
        buckets.setdefault(int((r.start - start) // width), []).append(r.duration_ms)
    series = LatencySeries([], [], [], [], [])
    for index in range(int((end - start) // width) + 1):
        durations = sorted(buckets.get(index, ()))
        series.starts.append(start + index * width)
        series.rps.append(len(durations) / width)
        for values, q in ((series.p50, 0.5), (series.p95, 0.95), (series.p99, 0.99)):
            values.append(percentile(durations, q) if durations else None)
    return series


def slowest(requests: Iterable[Request], limit: int = 20) -> list[Request]:
    return sorted(requests, key=lambda r: -r.duration_ms)[:limit]
