"""The fleet view's data functions over Prometheus query results, and its client's errors."""

from __future__ import annotations

import http.server
import math
import threading
from collections.abc import Iterator

import pytest

from apiscope.fleet import FleetSnapshot, PrometheusClient, PrometheusError, Sample
from apiscope.fleet.data import fleet_queries, instance_flags, route_stats
from apiscope.fleet.figures import flag_rows, p95_figure, route_rows, rps_figure
from tests.support import free_port


def s(value: float, **labels: str) -> Sample:
    return Sample(labels=labels, value=value)


A, B = "10.0.0.1:9464", "10.0.0.2:9464"


def snapshot() -> FleetSnapshot:
    routes = route_stats(
        p95=[s(0.0123, instance=A, method="GET", route="/items/{item_id}"),
             s(math.nan, instance=B, method="GET", route="/items/{item_id}"),
             s(0.3, instance=A, method="POST", route="/orders")],
        rps=[s(4.0, instance=A, method="GET", route="/items/{item_id}"),
             s(0.5, instance=B, method="GET", route="/items/{item_id}"),
             s(2.0, instance=A, method="POST", route="/orders")],
        errors=[s(0.5, instance=A, method="POST", route="/orders")])
    flags = instance_flags([s(1, instance=A, kind="slow_endpoint", severity="medium"),
                            s(2, instance=A, kind="error_rate", severity="high"),
                            s(0, instance=B, kind="n_plus_one", severity="low")])
    return FleetSnapshot(instances=(A, B), routes=tuple(routes), flags=tuple(flags),
                         window="5m", at=0.0)


def test_route_stats_join_p95_rate_and_error_share() -> None:
    rows = {(r.instance, r.endpoint): r for r in snapshot().routes}
    assert rows[(A, "GET /items/{item_id}")].p95_ms == pytest.approx(12.3)
    assert rows[(A, "GET /items/{item_id}")].error_rate == 0.0
    assert rows[(B, "GET /items/{item_id}")].p95_ms is None  # NaN: too few requests
    assert rows[(A, "POST /orders")].error_rate == pytest.approx(0.25)
    assert [r.route for r in snapshot().routes] == ["/items/{item_id}"] * 2 + ["/orders"]


def test_flags_by_instance_highest_severity_first_zero_counts_dropped() -> None:
    snap = snapshot()
    assert [(f.kind, f.count) for f in snap.flags_of(A)] == [("error_rate", 2),
                                                             ("slow_endpoint", 1)]
    assert snap.flags_of(B) == []
    assert flag_rows(snap) == [
        {"instance": A, "flags": "error_rate (high) x2, slow_endpoint (medium)"},
        {"instance": B, "flags": "none"}]


def test_table_rows_and_charts_put_instances_side_by_side() -> None:
    snap = snapshot()
    rows = route_rows(snap)
    assert rows[0] == {"endpoint": "GET /items/{item_id}", "instance": A, "p95_ms": "12.3",
                       "rps": "4.00", "error_rate": "0.0%"}
    assert rows[1]["p95_ms"] == "-"
    fig = p95_figure(snap)
    assert [t.name for t in fig.data] == [A, B]
    assert list(fig.data[0].x) == ["GET /items/{item_id}", "POST /orders"]
    assert list(fig.data[0].y) == pytest.approx([12.3, 300.0])
    assert list(fig.data[1].y) == [None, None]
    assert list(rps_figure(snap).data[1].y) == [0.5, None]


def test_queries_group_by_instance_and_route() -> None:
    q = fleet_queries("1m")
    assert "sum by (le, instance, method, route)" in q["p95"] and "[1m]" in q["p95"]
    assert 'status=~"5.."' in q["errors"]
    assert "apiscope_flags_active" in q["flags"]


def test_a_url_that_is_not_http_is_a_usage_error() -> None:
    with pytest.raises(PrometheusError, match="not an http"):
        PrometheusClient("prometheus:9090")
    assert PrometheusError("x").exit_code == 2


def test_nothing_listening_names_the_url_and_the_fix() -> None:
    client = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(PrometheusError, match="cannot reach Prometheus at http://127.0.0.1"):
        client.check()


class NotPrometheus(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = b"<html>hello</html>" if "query=1" in self.path else b'{"status":"error"}'
        code = 200 if "query=1" in self.path else 400
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_prometheus() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotPrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_server_that_is_not_prometheus_is_a_usage_error(not_prometheus: str) -> None:
    client = PrometheusClient(not_prometheus)
    with pytest.raises(PrometheusError, match="did not answer like a Prometheus"):
        client.check()
    with pytest.raises(PrometheusError, match="refused the query .400."):
        client.query("up")


def test_the_fleet_app_refuses_to_start_without_prometheus() -> None:
    from apiscope.fleet import create_fleet_app

    with pytest.raises(PrometheusError, match="cannot reach Prometheus"):
        create_fleet_app(f"http://127.0.0.1:{free_port()}")
    app = create_fleet_app(f"http://127.0.0.1:{free_port()}", check=False)
    assert app.config.serve_locally is True
