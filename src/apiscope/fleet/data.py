"""The fleet as Prometheus sees it now: per instance and route, p95, rps and error rate; flags.

Pure functions turn query results into rows; `fetch_snapshot` runs the queries. All figures
are rates over one window (`5m` by default), so a route idle for the whole window drops out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from apiscope.fleet.prometheus import PrometheusClient, Sample

ROUTE_KEY = ("instance", "method", "route")


def fleet_queries(window: str = "5m") -> dict[str, str]:
    """The PromQL behind the fleet view, by name."""
    by = "instance, method, route"
    return {
        "p95": ("histogram_quantile(0.95, sum by (le, " + by + ") "
                f"(rate(apiscope_request_duration_seconds_bucket[{window}])))"),
        "rps": f"sum by ({by}) (rate(apiscope_request_duration_seconds_count[{window}]))",
        "errors": (f"sum by ({by}) "
                   f'(rate(apiscope_request_duration_seconds_count{{status=~"5.."}}[{window}]))'),
        "flags": "sum by (instance, kind, severity) (apiscope_flags_active) > 0",
        "instances": 'count by (instance) ({__name__=~"apiscope_.+"})',
    }


@dataclass(frozen=True, slots=True)
class RouteStat:
    """One route on one instance over the window."""

    instance: str
    method: str
    route: str
    rps: float
    p95_ms: float | None  # None when the window holds too few requests for a quantile
    error_rate: float  # share of 5xx answers, 0..1

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.route}"


@dataclass(frozen=True, slots=True)
class InstanceFlag:
    """Flags of one kind and severity an instance carries now."""

    instance: str
    kind: str
    severity: str
    count: int


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    instances: tuple[str, ...]
    routes: tuple[RouteStat, ...]
    flags: tuple[InstanceFlag, ...]
    window: str
    at: float

    def flags_of(self, instance: str) -> list[InstanceFlag]:
        return [f for f in self.flags if f.instance == instance]


def _key(sample: Sample) -> tuple[str, str, str]:
    return (sample.labels.get("instance", ""), sample.labels.get("method", ""),
            sample.labels.get("route", ""))


def route_stats(p95: list[Sample], rps: list[Sample], errors: list[Sample]) -> list[RouteStat]:
    """Join the three per-route vectors; routes are those with a request rate."""
    quantiles = {_key(s): s.value for s in p95}
    failing = {_key(s): s.value for s in errors}
    rows: list[RouteStat] = []
    for sample in rps:
        key = _key(sample)
        q = quantiles.get(key)
        rate = sample.value
        rows.append(RouteStat(
            instance=key[0], method=key[1], route=key[2], rps=rate,
            p95_ms=None if q is None or math.isnan(q) or math.isinf(q) else q * 1000.0,
            error_rate=failing.get(key, 0.0) / rate if rate > 0 else 0.0))
    rows.sort(key=lambda r: (r.route, r.method, r.instance))
    return rows


def instance_flags(samples: list[Sample]) -> list[InstanceFlag]:
    rows = [InstanceFlag(instance=s.labels.get("instance", ""), kind=s.labels.get("kind", ""),
                         severity=s.labels.get("severity", ""), count=int(s.value))
            for s in samples if s.value > 0]
    order = {"high": 0, "medium": 1, "low": 2}
    rows.sort(key=lambda f: (f.instance, order.get(f.severity, 3), f.kind))
    return rows


def fetch_snapshot(client: PrometheusClient, window: str = "5m") -> FleetSnapshot:
    """Query Prometheus once for everything the fleet view shows."""
    q = fleet_queries(window)
    at = time.time()  # one evaluation time, so the three route vectors line up
    routes = route_stats(client.query(q["p95"], at), client.query(q["rps"], at),
                         client.query(q["errors"], at))
    flags = instance_flags(client.query(q["flags"], at))
    seen = {s.labels.get("instance", "") for s in client.query(q["instances"], at)}
    seen |= {r.instance for r in routes} | {f.instance for f in flags}
    return FleetSnapshot(instances=tuple(sorted(seen)), routes=tuple(routes),
                         flags=tuple(flags), window=window, at=at)
