"""The metric set, on a registry of its own (no global default registry).

The collector feeds it as data arrives; Prometheus scrapes `/metrics`, mounted on the dashboard's
server (`metrics_wsgi_app`) or served alone on `--metrics-port` (`serve_metrics`). Every metric
is documented in docs/metrics.md: keep the two in step.
"""

from __future__ import annotations

import platform
import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    start_http_server,
)

from apiscope import __version__
from apiscope.errors import UsageError
from apiscope.flag import Flag
from apiscope.model import AgentStats, RequestRecord, ResourceSample, ThreadPoolSample

# From sub-millisecond cache hits to multi-second stalls: API latencies span four decades.
# `histogram_quantile` interpolates linearly inside a bucket, so the buckets are denser where
# SLOs usually sit (100-500 ms): a route answering in 260 ms reads as p95 ~300 ms, not ~490 ms.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.75, 1.0, 2.5, 5.0, 10.0,
)
SEVERITIES = ("low", "medium", "high")
DEFAULT_SLO_SECONDS = 0.2

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class MetricsExporter:
    """Prometheus metrics for one collecting command (one or many target processes)."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 slo_seconds: float = DEFAULT_SLO_SECONDS) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        # The agent's counters are cumulative in the target; we export increments so that a
        # restarted agent (counts back to zero) never makes a Prometheus counter go down.
        self._agent_seen: dict[int, tuple[int, int]] = {}
        self._define_request_metrics()
        self._define_process_metrics()
        self._define_collector_metrics()
        self.set_slo(slo_seconds)

    def _define_request_metrics(self) -> None:
        # No pid label on request metrics: workers are recycled, and route x method x status x
        # pid series would churn with them (and multiply by the workers for nothing).
        r = self.registry
        self.request_duration = Histogram(
            "apiscope_request_duration_seconds",
            "Request latency measured in-process, first receive to last body message;"
            " status is the class (2xx, 4xx, 5xx).",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter(
            "apiscope_requests", "Requests answered, by route, method and exact status code.",
            ["route", "method", "status"], registry=r)
        self.requests_in_flight = Gauge(
            "apiscope_requests_in_flight", "Requests started and not yet finished.",
            ["pid"], registry=r)

    def _define_process_metrics(self) -> None:
        r = self.registry
        self.cpu = Gauge("apiscope_process_cpu_usage_ratio",
                         "CPU use of a target process in cores (1 = one core busy).", ["pid"],
                         registry=r)
        self.rss = Gauge("apiscope_process_resident_memory_bytes",
                         "Resident memory of a target process.", ["pid"], registry=r)
        self.threads = Gauge("apiscope_process_threads", "Threads of a target process.",
                             ["pid"], registry=r)
        self.fds = Gauge("apiscope_process_open_fds", "Open file descriptors of a target process.",
                         ["pid"], registry=r)
        self.loop_blocked = Counter(
            "apiscope_event_loop_blocked_seconds",
            "Time the event loop thread spent outside its selector (running or blocked in code).",
            ["pid"], registry=r)
        self.pool_in_use = Gauge("apiscope_threadpool_tokens_in_use",
                                 "Thread-pool tokens borrowed by sync handlers.", ["pid"],
                                 registry=r)
        self.pool_total = Gauge("apiscope_threadpool_tokens_max",
                                "Thread-pool size (tokens sync handlers can borrow).", ["pid"],
                                registry=r)
        self.pool_waiting = Gauge("apiscope_threadpool_waiting",
                                  "Tasks waiting for a thread-pool token.", ["pid"], registry=r)

    def _define_collector_metrics(self) -> None:
        r = self.registry
        self.samples = Counter("apiscope_samples", "Stack samples stored.", registry=r)
        self.sample_errors = Counter("apiscope_sample_errors",
                                     "Stack samples py-spy failed to read.", registry=r)
        self.samples_dropped = Counter(
            "apiscope_samples_dropped",
            "Stack samples expected at the sampling rate that never arrived.", registry=r)
        self.agent_dropped = Counter(
            "apiscope_agent_dropped_requests",
            "Requests the agent dropped because its buffer was full.", ["pid"], registry=r)
        self.agent_errors = Counter("apiscope_agent_errors",
                                    "The agent's own caught errors (never seen by a request).",
                                    ["pid"], registry=r)
        self.build_info = Gauge("apiscope_build_info",
                                "apiscope's version and the Python running the collector.",
                                ["version", "python"], registry=r)
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.slo = Gauge("apiscope_slo_seconds",
                         "The latency objective (--slo-ms) the flags and alert rules use.",
                         registry=r)
        self.flags = Gauge("apiscope_flags_active",
                           "Bottleneck flags the analysis currently raises.",
                           ["kind", "severity"], registry=r)

    # -- what the collector feeds ---------------------------------------------------------------

    def set_slo(self, seconds: float) -> None:
        self.slo.set(seconds)

    def observe_requests(self, records: Iterable[RequestRecord]) -> None:
        # A batch holds thousands of requests of a few routes: each label set is looked up
        # once per batch (a `labels()` call costs more than the observation itself).
        # A record kept for n requests (one in n kept on a busy server) counts n times.
        durations: dict[tuple[str, str, int], list[tuple[float, int]]] = defaultdict(list)
        for rec in records:
            durations[(rec.route, rec.method, rec.status)].append(
                (rec.duration_ms / 1000.0, rec.weight))
        for (route, method, status), values in durations.items():
            observe_all(self.request_duration.labels(route, method, status_class(status)),
                        values)
            self.requests.labels(route, method, str(status)).inc(sum(w for _, w in values))

    def observe_resources(self, samples: Iterable[ResourceSample]) -> None:
        for s in samples:
            pid = str(s.pid)
            self.cpu.labels(pid).set(s.cpu_percent / 100.0)
            self.rss.labels(pid).set(s.rss_bytes)
            self.threads.labels(pid).set(s.threads)
            self.fds.labels(pid).set(s.fds)

    def observe_threadpool(self, sample: ThreadPoolSample) -> None:
        pid = str(sample.pid)
        self.pool_in_use.labels(pid).set(sample.borrowed_tokens)
        self.pool_total.labels(pid).set(sample.total_tokens)
        self.pool_waiting.labels(pid).set(sample.waiting)

    def observe_agent(self, stats: AgentStats) -> None:
        with self._lock:
            last_dropped, last_errors = self._agent_seen.get(stats.pid, (0, 0))
            self._agent_seen[stats.pid] = (stats.dropped, stats.errors)
        pid = str(stats.pid)
        self.agent_dropped.labels(pid).inc(_increment(last_dropped, stats.dropped))
        self.agent_errors.labels(pid).inc(_increment(last_errors, stats.errors))

    def observe_in_flight(self, pid: int, count: int) -> None:
        self.requests_in_flight.labels(str(pid)).set(count)

    def observe_samples(self, stored: int, errors: int, dropped: int = 0) -> None:
        self.samples.inc(max(0, stored))
        self.sample_errors.inc(max(0, errors))
        self.samples_dropped.inc(max(0, dropped))

    def observe_loop_blocked(self, pid: int, seconds: float) -> None:
        if seconds > 0:
            self.loop_blocked.labels(str(pid)).inc(seconds)

    def set_flags(self, flags: Iterable[Flag]) -> None:
        """Replace the active flags with `flags`, counted by kind and severity.

        Every known severity of a kind seen once stays exported (at 0 when cleared), so that an
        alert on `apiscope_flags_active > 0` resolves instead of going stale.
        """
        counts: dict[tuple[str, str], int] = {}
        for flag in flags:
            key = (flag.kind, flag.severity)
            counts[key] = counts.get(key, 0) + 1
        with self._lock:
            for kind, severity in _label_pairs(self.flags):
                counts.setdefault((kind, severity), 0)
            for (kind, severity), n in counts.items():
                self.flags.labels(kind, severity).set(n)

    def forget_process(self, pid: int) -> None:
        """Drop the per-process gauges of an exited worker (its counters stay until restart)."""
        label = str(pid)
        for gauge in (self.requests_in_flight, self.cpu, self.rss, self.threads, self.fds,
                      self.pool_in_use, self.pool_total, self.pool_waiting):
            try:
                gauge.remove(label)
            except KeyError:
                pass


def status_class(status: int) -> str:
    """`2xx`, `4xx`, `5xx`...; a status outside 100-599 (none was sent) counts as `5xx`."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "5xx"


def _increment(last: int, now: int) -> int:
    # A smaller cumulative value means the agent restarted: everything it counted is new.
    return now - last if now >= last else now


def _label_pairs(gauge: Gauge) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for metric in gauge.collect():
        for sample in metric.samples:
            pairs.append((sample.labels["kind"], sample.labels["severity"]))
    return pairs


def metrics_wsgi_app(exporter: MetricsExporter) -> WsgiApp:
    """A WSGI app serving the exporter's registry (mount it at `/metrics` on Flask)."""
    app: WsgiApp = make_wsgi_app(exporter.registry)
    return app


def serve_metrics(exporter: MetricsExporter, host: str, port: int) -> Any:
    """Serve /metrics alone (the headless sidecar case); returns the server (call shutdown())."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=exporter.registry)
    except OSError as exc:
        raise UsageError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; pick a free port"
            " with --metrics-port or stop what is listening there") from None
    return server


def observe_all(histogram: Any, values: Iterable[tuple[float, int]]) -> None:
    """Each (value, weight) observed `weight` times, as that many calls of `observe` would
    leave the histogram, at the cost of one addition per bucket: the sum grows by value x
    weight and each value's bucket by weight. Reaches into the client's histogram (its `_sum`,
    `_buckets` and `_upper_bounds`, stable since 0.4); a client without them gets the calls.
    One `observe` per request was a third of what pulling the agents cost the collector."""
    total = getattr(histogram, "_sum", None)
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if total is None or buckets is None or bounds is None or len(buckets) != len(bounds):
        for value, weight in values:
            for _ in range(weight):
                histogram.observe(value)
        return
    counts = [0] * len(bounds)
    added = 0.0
    last = len(bounds) - 1
    for value, weight in values:
        # The first bucket whose upper bound holds the value (`le`: value <= bound); the
        # last bound is +Inf.
        counts[min(bisect_left(bounds, value), last)] += weight
        added += value * weight
    total.inc(added)
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
