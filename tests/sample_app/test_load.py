"""The load generator against a real uvicorn serving the sample app: bounds, stats, JSON."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sample_app.bottlenecks.threadpool import WAREHOUSE_CALL_SECONDS
from sample_app.load import (
    STOP_GRACE_SECONDS,
    LoadError,
    RouteStats,
    _Pacer,
    allocate_workers,
    check_target,
    run_load,
)
from sample_app.loadmix import DEFAULT_CONCURRENCY, DEFAULT_MIX
from tests.support import ROOT, ServerProcess, free_port, run_server, uvicorn_argv

pytestmark = pytest.mark.integration
SERVER_ENV = {"SAMPLE_APP_ITEMS": "500"}
# run_server pipes stderr without reading it: the lru_cache bug logs a traceback per 500,
# which would fill the pipe and stall the server. Only critical messages, then.
QUIET = ("--log-level", "critical")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    port = free_port()
    with run_server(uvicorn_argv("sample_app.main:app", port, *QUIET), port, ready_path="/health",
                    env=SERVER_ENV) as process:
        yield process


def test_duration_bound_is_respected_and_every_route_is_hit(server: ServerProcess) -> None:
    result = asyncio.run(run_load(server.url, duration=2.0))
    assert result.stopped_by == "duration"
    assert 2.0 <= result.seconds < 2.0 + STOP_GRACE_SECONDS + 3.0
    assert set(result.routes) == {scenario.route for scenario in DEFAULT_MIX}
    for route, stats in result.routes.items():
        assert stats.count > 0, route
        if not route.endswith("/summary"):  # the lru_cache bug answers 500 by design
            assert stats.errors == 0, (route, stats.statuses)
    stock = result.routes["GET /items/{item_id}/stock"]
    assert stock.percentile(50) >= WAREHOUSE_CALL_SECONDS * 1000  # plus a wait for a thread


def test_request_bound_is_respected(server: ServerProcess) -> None:
    result = asyncio.run(run_load(server.url, duration=60.0, max_requests=40))
    assert result.stopped_by == "requests"
    assert result.requests == 40
    assert result.seconds < 30


def test_cli_prints_a_table_and_writes_json(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = subprocess.run([sys.executable, "-m", "sample_app.load", "--url", server.url,
                           "--requests", "60", "--duration", "20", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "GET /items/{item_id}" in done.stdout and "p95 ms" in done.stdout
    report = json.loads(out.read_text())
    assert report["requests"] == 60 and report["stopped_by"] == "requests"
    rows = {row["route"]: row for row in report["routes"]}
    assert sum(row["count"] for row in rows.values()) == 60
    for row in rows.values():
        assert row["route"].split(" ", 1)[0] in {"GET", "POST"}
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert sum(row["statuses"].values()) == row["count"]


def test_repeated_ids_make_the_lru_bug_answer_500(server: ServerProcess) -> None:
    only_summary = [s for s in DEFAULT_MIX if s.route == "GET /items/{item_id}/summary"]
    result = asyncio.run(run_load(server.url, duration=20.0, max_requests=20, concurrency=2,
                                  mix=only_summary))
    statuses = result.routes["GET /items/{item_id}/summary"].statuses
    assert statuses["500"] >= 20 - 12  # at most one success per id in the pool of 12


@pytest.mark.parametrize("url", ["http://192.0.2.1:8000", "http://example.com",
                                 "ftp://127.0.0.1/", "http://10.0.0.1"])
def test_remote_targets_are_refused(url: str) -> None:
    with pytest.raises(LoadError):
        check_target(url, allow_remote=False)
    with pytest.raises(LoadError, match="loopback|http"):
        asyncio.run(run_load(url, duration=1.0))


def test_loopback_and_allowed_remote_targets_pass() -> None:
    for url in ("http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:80",
                "http://127.5.5.5"):
        check_target(url, allow_remote=False)
    check_target("http://192.0.2.1:8000", allow_remote=True)


def test_cli_refuses_a_remote_target_with_exit_2() -> None:
    done = subprocess.run([sys.executable, "-m", "sample_app.load", "--url",
                           "http://192.0.2.1:8000", "--requests", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--allow-remote" in done.stderr and "Traceback" not in done.stderr


def test_unbounded_runs_are_refused() -> None:
    with pytest.raises(LoadError, match="bound"):
        asyncio.run(run_load("http://127.0.0.1:1", duration=None, max_requests=None))


def test_workers_follow_the_shares() -> None:
    shares = [scenario.workers for scenario in DEFAULT_MIX]
    assert allocate_workers(shares, DEFAULT_CONCURRENCY) == shares
    assert sum(allocate_workers(shares, 100)) == 100
    assert allocate_workers(shares, len(shares)) == [1] * len(shares)
    with pytest.raises(LoadError, match="concurrency"):
        allocate_workers(shares, len(shares) - 1)


def test_percentiles_are_nearest_rank() -> None:
    stats = RouteStats("GET /x", latencies_ms=[float(n) for n in range(100, 0, -1)])
    assert [stats.percentile(q) for q in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    assert RouteStats("GET /y").percentile(95) == 0.0


def test_pacer_releases_bursts_and_never_banks_missed_slots() -> None:
    pacer = _Pacer(rate=6.0, burst=3, start=0.0)
    assert [pacer.claim(0.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    assert pacer.claim(10.0) == 0.5  # the rest of the burst already scheduled
    assert pacer.claim(10.0) == 0.5
    assert pacer.claim(10.0) == 10.0  # late: start again from now, no catch-up
    assert _Pacer(rate=None, burst=1, start=0.0).claim(3.0) == 3.0
