"""Serving the dashboard from a thread, as attach/run/demo do, with /metrics beside it."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from apiscope.dashboard import start_dashboard_thread
from apiscope.metrics import MetricsExporter
from apiscope.model import RequestRecord
from tests.support import free_port, http_ok


def test_thread_serves_dashboard_and_metrics_then_stops(session_file: Path) -> None:
    metrics = MetricsExporter()
    metrics.observe_requests([RequestRecord(4101, 0.0, 12.0, "GET", "/items/{item_id}", 200)])
    port = free_port()
    handle = start_dashboard_thread(session_file, "127.0.0.1", port, metrics=metrics)
    try:
        assert handle.url == f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(handle.url + "metrics", timeout=10) as resp:
            text = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
        assert ('apiscope_request_duration_seconds_count{method="GET",route="/items/{item_id}",'
                'status="2xx"}') in text
        assert http_ok(handle.url + "_dash-layout")
    finally:
        handle.stop()
    assert not http_ok(handle.url)  # the port is released


def test_configure_hook_adds_routes_before_serving(session_file: Path) -> None:
    def add_health(server: object) -> None:
        server.add_url_rule("/healthz", "healthz", lambda: "ok")  # type: ignore[attr-defined]

    handle = start_dashboard_thread(session_file, "127.0.0.1", free_port(), live=False,
                                    configure=add_health)
    try:
        with urllib.request.urlopen(handle.url + "healthz", timeout=10) as resp:
            assert resp.read() == b"ok"
    finally:
        handle.stop()
