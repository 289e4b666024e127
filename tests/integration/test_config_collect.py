"""A collecting command honours the project's thresholds: /metrics and the final report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT, free_port, http_ok, require_ptrace, uvicorn_argv, wait_until

pytestmark = pytest.mark.integration


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_run_judges_by_the_pyproject_thresholds(tmp_path: Path) -> None:
    require_ptrace()
    (tmp_path / "pyproject.toml").write_text(
        "[tool.apiscope.thresholds]\nslo_ms = 0.001\nmin_requests = 1\n")
    port, metrics_port = free_port(), free_port()
    server = uvicorn_argv("tests.integration.attach_app:app", port, "--app-dir", str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "apiscope", "run", "--no-dashboard", "--duration", "120",
         "--metrics-port", str(metrics_port), "--session", "s.sqlite", "--report", "r.json",
         "--", *server], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is None and http_ok(f"http://127.0.0.1:{port}/items/1")
                   and http_ok(f"http://127.0.0.1:{metrics_port}/metrics"), timeout=60,
                   what="the server and /metrics")
        for i in range(20):
            assert http_ok(f"http://127.0.0.1:{port}/items/{i}")
        text = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert "apiscope_slo_seconds 1e-06" in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    slow = [f for f in report["flags"] if f["kind"] == "slow_endpoint"]
    assert slow and slow[0]["metric"]["slo_ms"] == 0.001
