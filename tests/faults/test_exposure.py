"""The live dashboard and its /metrics answer only with the token printed at start (the session
file is private; so is what shows it); /metrics on a separate --metrics-port stays open for
Prometheus."""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path

import pytest

from tests.faults.harness import finish, make_place, start_collector, stderr_of, uvicorn_server
from tests.support import fetch_status, free_port, require_ptrace, wait_until

pytestmark = pytest.mark.integration


def test_the_dashboard_needs_its_token_and_metrics_port_stays_open(tmp_path: Path) -> None:
    require_ptrace()
    place = make_place(tmp_path)
    port, metrics_port = free_port(), free_port()
    with uvicorn_server(place) as (server, _url):
        proc = start_collector(place, "attach", str(server.pid), "--no-inject", "--rate", "20",
                               "--port", str(port), "--metrics-port", str(metrics_port),
                               "--session", str(tmp_path / "s.sqlite"), random_token=True)
        found = wait_until(lambda: re.search(r"dashboard at (\S+\?token=(\S+))", stderr_of(proc)),
                           timeout=60, what="the dashboard URL")
        url, token = found.group(1), found.group(2)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: fetch_status(url) == 200, timeout=60, what="the dashboard")
        assert fetch_status(base + "/") == 403
        assert fetch_status(base + "/_dash-layout") == 403
        assert fetch_status(base + "/metrics") == 403
        assert fetch_status(f"{base}/metrics?token=wrong{token}") == 403
        request = urllib.request.Request(base + "/metrics",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200 and b"apiscope_build_info" in resp.read()
        assert fetch_status(f"http://127.0.0.1:{metrics_port}/metrics") == 200
        code, err = finish(proc, signal.SIGTERM)
        assert code == 0, err
