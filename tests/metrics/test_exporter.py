"""The exposition after feeding known records, parsed back with prometheus_client's parser."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterable

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from apiscope.errors import UsageError
from apiscope.flag import Flag
from apiscope.metrics import (
    LATENCY_BUCKETS,
    LiveFlags,
    MetricsExporter,
    metrics_wsgi_app,
    serve_metrics,
)
from apiscope.model import AgentStats, RequestRecord, ResourceSample, ThreadPoolSample
from tests.support import free_port

Labels = dict[str, str]


def samples(exporter: MetricsExporter) -> list[tuple[str, Labels, float]]:
    text = generate_latest(exporter.registry).decode()
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def value(exporter: MetricsExporter, name: str, **labels: str) -> float:
    found = [v for n, lab, v in samples(exporter) if n == name and lab == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def names(exporter: MetricsExporter) -> set[str]:
    return {n for n, _, _ in samples(exporter)}


def record(route: str, ms: float, status: int = 200, pid: int = 10,
           method: str = "GET") -> RequestRecord:
    return RequestRecord(pid=pid, start=1000.0, duration_ms=ms, method=method, route=route,
                         status=status)


def feed(exporter: MetricsExporter, records: Iterable[RequestRecord]) -> None:
    exporter.observe_requests(list(records))


def test_latency_histogram_per_route_method_status_class_without_pid() -> None:
    m = MetricsExporter()
    feed(m, [record("/items/{item_id}", ms) for ms in (0.3, 4.0, 40.0, 400.0)])
    feed(m, [record("/items/{item_id}", 3.0, status=500), record("/boom", 1.0, pid=11),
             record("/boom", 1.0, pid=12, status=201),
             record("/items/{item_id}", 2.0, method="POST")])
    key = {"route": "/items/{item_id}", "method": "GET", "status": "2xx"}
    assert value(m, "apiscope_request_duration_seconds_count", **key) == 4
    assert value(m, "apiscope_request_duration_seconds_sum", **key) == pytest.approx(0.4443)
    assert value(m, "apiscope_request_duration_seconds_bucket", **key, le="0.0005") == 1
    assert value(m, "apiscope_request_duration_seconds_bucket", **key, le="0.005") == 2
    assert value(m, "apiscope_request_duration_seconds_bucket", **key, le="0.05") == 3
    assert value(m, "apiscope_request_duration_seconds_bucket", **key, le="0.25") == 3
    assert value(m, "apiscope_request_duration_seconds_bucket", **key, le="0.5") == 4
    assert value(m, "apiscope_request_duration_seconds_bucket", **key, le="+Inf") == 4
    assert value(m, "apiscope_request_duration_seconds_count", route="/items/{item_id}",
                 method="GET", status="5xx") == 1
    # two workers, two exact codes: one class, one series
    assert value(m, "apiscope_request_duration_seconds_count", route="/boom", method="GET",
                 status="2xx") == 2
    assert value(m, "apiscope_request_duration_seconds_count", route="/items/{item_id}",
                 method="POST", status="2xx") == 1
    assert not [lab for n, lab, _ in samples(m) if n.startswith("apiscope_request") and
                "pid" in lab and not n.startswith("apiscope_requests_in_flight")]


def test_requests_counter_has_the_exact_status() -> None:
    m = MetricsExporter()
    feed(m, [record("/boom", 1.0), record("/boom", 1.0, status=201, pid=11),
             record("/boom", 1.0, status=503), record("/boom", 1.0, status=503)])
    assert value(m, "apiscope_requests_total", route="/boom", method="GET", status="200") == 1
    assert value(m, "apiscope_requests_total", route="/boom", method="GET", status="201") == 1
    assert value(m, "apiscope_requests_total", route="/boom", method="GET", status="503") == 2


def test_build_info_and_objective() -> None:
    from apiscope import __version__

    m = MetricsExporter(slo_seconds=0.35)
    build = [lab for n, lab, v in samples(m) if n == "apiscope_build_info" and v == 1]
    assert [lab["version"] for lab in build] == [__version__]
    assert value(m, "apiscope_slo_seconds") == 0.35
    assert value(MetricsExporter(), "apiscope_slo_seconds") == 0.2


def test_buckets_span_sub_millisecond_to_seconds() -> None:
    assert LATENCY_BUCKETS[0] < 0.001 and LATENCY_BUCKETS[-1] >= 10.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


def test_process_threadpool_and_in_flight_gauges_per_pid() -> None:
    m = MetricsExporter()
    m.observe_resources([ResourceSample(ts=1.0, pid=10, cpu_percent=35.5, rss_bytes=80_000_000,
                                        threads=4, fds=30),
                         ResourceSample(ts=1.0, pid=11, cpu_percent=1.0, rss_bytes=1, threads=1,
                                        fds=3)])
    m.observe_resources([ResourceSample(ts=2.0, pid=10, cpu_percent=50.0, rss_bytes=81_000_000,
                                        threads=5, fds=31)])
    m.observe_threadpool(ThreadPoolSample(ts=2.0, pid=10, total_tokens=40, borrowed_tokens=7,
                                          waiting=2))
    m.observe_in_flight(10, 3)
    assert value(m, "apiscope_process_cpu_usage_ratio", pid="10") == 0.5
    assert value(m, "apiscope_process_resident_memory_bytes", pid="10") == 81_000_000
    assert value(m, "apiscope_process_threads", pid="10") == 5
    assert value(m, "apiscope_process_open_fds", pid="11") == 3
    assert value(m, "apiscope_threadpool_tokens_in_use", pid="10") == 7
    assert value(m, "apiscope_threadpool_tokens_max", pid="10") == 40
    assert value(m, "apiscope_threadpool_waiting", pid="10") == 2
    assert value(m, "apiscope_requests_in_flight", pid="10") == 3
    m.forget_process(11)
    assert not [lab for n, lab, _ in samples(m) if lab.get("pid") == "11"]
    m.forget_process(12)  # unknown pid: nothing to do


def test_loop_blocked_and_sampler_counters_accumulate() -> None:
    m = MetricsExporter()
    m.observe_loop_blocked(10, 0.25)
    m.observe_loop_blocked(10, 0.5)
    m.observe_loop_blocked(10, 0.0)
    m.observe_samples(100, 2)
    m.observe_samples(98, 1, dropped=3)
    assert value(m, "apiscope_event_loop_blocked_seconds_total", pid="10") == 0.75
    assert value(m, "apiscope_samples_total") == 198
    assert value(m, "apiscope_sample_errors_total") == 3
    assert value(m, "apiscope_samples_dropped_total") == 3


def test_agent_counters_export_increments_and_survive_an_agent_restart() -> None:
    m = MetricsExporter()
    for dropped, errors in ((0, 0), (5, 1), (9, 1), (2, 0)):  # the last: a restarted agent
        m.observe_agent(AgentStats(ts=1.0, pid=10, recorded=100, dropped=dropped, errors=errors))
    assert value(m, "apiscope_agent_dropped_requests_total", pid="10") == 11
    assert value(m, "apiscope_agent_errors_total", pid="10") == 1


def flag(kind: str, severity: str) -> Flag:
    return Flag(kind, severity, "GET /x", None, "evidence", {}, "suggestion")


def test_flags_by_kind_and_severity_go_to_zero_when_cleared() -> None:
    m = MetricsExporter()
    m.set_flags([flag("slow_endpoint", "high"), flag("slow_endpoint", "high"),
                 flag("error_rate", "medium")])
    assert value(m, "apiscope_flags_active", kind="slow_endpoint", severity="high") == 2
    assert value(m, "apiscope_flags_active", kind="error_rate", severity="medium") == 1
    m.set_flags([flag("error_rate", "medium")])
    assert value(m, "apiscope_flags_active", kind="slow_endpoint", severity="high") == 0
    assert value(m, "apiscope_flags_active", kind="error_rate", severity="medium") == 1


def test_every_name_starts_with_apiscope() -> None:
    m = MetricsExporter()
    feed(m, [record("/a", 1.0)])
    m.observe_agent(AgentStats(ts=1.0, pid=10, recorded=1, dropped=0, errors=0))
    m.set_flags([flag("cpu_hotspot", "low")])
    assert names(m) and all(n.startswith("apiscope_") for n in names(m))


def test_live_flags_refresh_keeps_the_last_flags_when_the_source_fails() -> None:
    m = MetricsExporter()
    results: list[list[Flag] | Exception] = [
        [flag("n_plus_one", "medium")], RuntimeError("session half written")]

    def source() -> list[Flag]:
        item = results.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    live = LiveFlags(m, source, interval=60)
    assert live.refresh() is True
    assert live.refresh() is False
    assert live.failures == 1 and "half written" in (live.last_error or "")
    assert value(m, "apiscope_flags_active", kind="n_plus_one", severity="medium") == 1
    live.start()
    live.stop()


def test_wsgi_app_serves_the_exposition() -> None:
    m = MetricsExporter()
    feed(m, [record("/items/{item_id}", 2.0)])
    app = metrics_wsgi_app(m)
    statuses: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": "",
               "SERVER_NAME": "localhost", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    body = b"".join(app(environ, lambda status, headers, *exc: statuses.append(status)))
    assert statuses == ["200 OK"]
    assert b'apiscope_request_duration_seconds_count{method="GET",route=' in body


def test_serve_metrics_over_http_and_a_busy_port_is_a_usage_error() -> None:
    m = MetricsExporter()
    feed(m, [record("/items/{item_id}", 2.0)])
    port = free_port()
    server = serve_metrics(m, "127.0.0.1", port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert "apiscope_request_duration_seconds_bucket" in text
        with pytest.raises(UsageError, match="--metrics-port"):
            serve_metrics(m, "127.0.0.1", port)
    finally:
        server.shutdown()
        server.server_close()


def test_unbindable_address_is_a_usage_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=f"127.0.0.1:{port}"):
            serve_metrics(MetricsExporter(), "127.0.0.1", port)


def test_a_record_kept_for_n_requests_counts_as_n_of_them() -> None:
    import dataclasses

    weighted, repeated = MetricsExporter(), MetricsExporter()
    durations = (0.3, 4.0, 40.0, 400.0, 1e6)  # the last one past every bound: +Inf only
    feed(weighted, [dataclasses.replace(record("/items", ms), weight=7) for ms in durations])
    feed(repeated, [record("/items", ms) for ms in durations for _ in range(7)])

    def requests(m: MetricsExporter) -> list[tuple[str, Labels, float]]:
        return [(n, lab, round(v, 6)) for n, lab, v in samples(m)
                if n.startswith("apiscope_request") and not n.endswith("_created")]

    assert len(requests(weighted)) > len(LATENCY_BUCKETS)  # every bucket, the sum, the count
    assert requests(weighted) == requests(repeated)
    assert value(weighted, "apiscope_requests_total", route="/items", method="GET",
                 status="200") == 35


def test_observing_a_batch_leaves_the_histogram_as_the_clients_own_observe_does() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from apiscope.metrics.exporter import observe_all

    finite = [b for b in LATENCY_BUCKETS if b != float("inf")]
    # Values on every bound (`le`: counted in that bucket), between, under the first, past
    # the last; weights of one and more.
    values = [(b, 1 + i % 3) for i, b in enumerate(finite)]
    values += [(b * 1.5, 2) for b in finite] + [(0.0, 1), (1e6, 4)]

    def histogram() -> tuple[CollectorRegistry, Histogram]:
        registry = CollectorRegistry()
        return registry, Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=registry)

    ours, theirs = histogram(), histogram()
    observe_all(ours[1], values)
    for v, weight in values:
        for _ in range(weight):
            theirs[1].observe(v)

    def exposition(registry: CollectorRegistry) -> list[tuple[str, Labels, float]]:
        return [(s.name, tuple(sorted(s.labels.items())), round(s.value, 9))
                for family in registry.collect() for s in family.samples
                if not s.name.endswith("_created")]

    assert exposition(ours[0]) == exposition(theirs[0])
    assert len(exposition(ours[0])) == len(finite) + 3  # the buckets, +Inf, the sum, the count
