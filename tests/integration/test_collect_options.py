"""Options every collecting command takes, on `apiscope run` of a real uvicorn: the project's
thresholds (/metrics and the final report), --quiet and --verbose."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from apiscope.store import SessionReader
from tests.support import ROOT, free_port, http_ok, require_ptrace, uvicorn_argv, wait_until

pytestmark = pytest.mark.integration
APP = "tests.integration.attach_app:app"


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_run_judges_by_the_pyproject_thresholds(tmp_path: Path) -> None:
    require_ptrace()
    (tmp_path / "pyproject.toml").write_text(
        "[tool.apiscope.thresholds]\nslo_ms = 0.001\nmin_requests = 1\n")
    port, metrics_port = free_port(), free_port()
    server = uvicorn_argv(APP, port, "--app-dir", str(ROOT))
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


def stored_requests_and_windows(session: Path) -> bool:
    try:
        with SessionReader(session) as reader:
            return bool(reader.requests()) and bool(reader.windows())
    except Exception:  # not created yet
        return False


def run_with(option: str, tmp_path: Path) -> str:
    """stderr of `apiscope run OPTION` until it stored requests and a window, then Ctrl-C."""
    port = free_port()
    session = tmp_path / f"{option.strip('-')}.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "apiscope", "run", option, "--no-dashboard", "--duration", "120",
         "--session", str(session), "--", *uvicorn_argv(APP, port)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is None and http_ok(f"http://127.0.0.1:{port}/items/1"),
                   timeout=60, what="the server")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/items/2")
                   and stored_requests_and_windows(session), timeout=60, what="a stored window")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


def test_quiet_keeps_warnings_and_flags_and_verbose_adds_windows_and_pulls(
        tmp_path: Path) -> None:
    require_ptrace()
    quiet = run_with("--quiet", tmp_path)
    assert "sampling pid" not in quiet and "session saved" not in quiet
    assert "stored" not in quiet and "samples " not in quiet  # neither summary nor status line
    assert "no bottleneck flagged" in quiet or "flag(s):" in quiet
    verbose = run_with("--verbose", tmp_path)
    assert "sampling pid" in verbose and "session saved" in verbose
    assert "Hz  samples" in verbose and "windows lost 0" in verbose
    assert "pull pid" in verbose and "requests," in verbose
