"""The metric set, on a registry of its own (no global default registry).

The collector feeds it as data arrives; Prometheus scrapes `/metrics`, mounted on the dashboard's
server or served alone on `--metrics-port`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from apiscope.model import AgentStats, RequestRecord, ResourceSample, ThreadPoolSample

# From sub-millisecond cache hits to multi-second stalls: API latencies span four decades.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class MetricsExporter:
    """Prometheus metrics for one collecting command."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "apiscope_request_duration_seconds",
            "Request latency measured in-process, first receive to last body message.",
            ["route", "method", "status", "pid"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests_in_flight = Gauge(
            "apiscope_requests_in_flight", "Requests started and not yet finished.",
            ["pid"], registry=r)
        self.cpu = Gauge("apiscope_process_cpu_percent",
                         "CPU use of a target process (100 = one core).", ["pid"], registry=r)
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
        self.pool_total = Gauge("apiscope_threadpool_tokens_total", "Thread-pool size.", ["pid"],
                                registry=r)
        self.pool_waiting = Gauge("apiscope_threadpool_waiting",
                                  "Tasks waiting for a thread-pool token.", ["pid"], registry=r)
        self.samples = Counter("apiscope_samples", "Stack samples stored.", registry=r)
        self.sample_errors = Counter("apiscope_sample_errors",
                                     "Stack samples py-spy failed to read.", registry=r)
        self.agent_dropped = Gauge("apiscope_agent_dropped_requests",
                                   "Requests the agent dropped because its buffer was full.",
                                   ["pid"], registry=r)
        self.agent_errors = Gauge("apiscope_agent_errors", "The agent's own caught errors.",
                                  ["pid"], registry=r)
        self.flags = Gauge("apiscope_flags_active", "Bottleneck flags raised by the analysis.",
                           ["kind", "severity"], registry=r)
        self._lock = threading.Lock()

    def observe_requests(self, records: Iterable[RequestRecord]) -> None:
        for rec in records:
            self.request_duration.labels(rec.route, rec.method, str(rec.status),
                                         str(rec.pid)).observe(rec.duration_ms / 1000.0)

    def observe_resources(self, samples: Iterable[ResourceSample]) -> None:
        for s in samples:
            pid = str(s.pid)
            self.cpu.labels(pid).set(s.cpu_percent)
            self.rss.labels(pid).set(s.rss_bytes)
            self.threads.labels(pid).set(s.threads)
            self.fds.labels(pid).set(s.fds)

    def observe_threadpool(self, sample: ThreadPoolSample) -> None:
        pid = str(sample.pid)
        self.pool_in_use.labels(pid).set(sample.borrowed_tokens)
        self.pool_total.labels(pid).set(sample.total_tokens)
        self.pool_waiting.labels(pid).set(sample.waiting)

    def observe_agent(self, stats: AgentStats) -> None:
        self.agent_dropped.labels(str(stats.pid)).set(stats.dropped)
        self.agent_errors.labels(str(stats.pid)).set(stats.errors)

    def observe_in_flight(self, pid: int, count: int) -> None:
        self.requests_in_flight.labels(str(pid)).set(count)

    def observe_samples(self, stored: int, errors: int) -> None:
        self.samples.inc(stored)
        self.sample_errors.inc(errors)

    def observe_loop_blocked(self, pid: int, seconds: float) -> None:
        if seconds > 0:
            self.loop_blocked.labels(str(pid)).inc(seconds)

    def set_flags(self, flags: Iterable[dict[str, Any]]) -> None:
        counts: dict[tuple[str, str], int] = {}
        for flag in flags:
            key = (flag["kind"], flag["severity"])
            counts[key] = counts.get(key, 0) + 1
        with self._lock:
            self.flags.clear()
            for (kind, severity), n in counts.items():
                self.flags.labels(kind, severity).set(n)


def serve_metrics(exporter: MetricsExporter, host: str, port: int) -> Any:
    """Serve /metrics alone (the headless sidecar case); returns the server (call shutdown())."""
    server, _thread = start_http_server(port, addr=host, registry=exporter.registry)
    return server
