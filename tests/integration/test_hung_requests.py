"""A server whose requests hang (its connection pool deadlocked) is not reported idle: `apiscope
attach` asks the agent, as it ends, for the requests still running with no response begun, and
flags the route at the line they waited at. A long poll and a stream that has begun, running as
long, are no alarm."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.integration.test_attach import end_apiscope, start_apiscope, wait_for_agents
from tests.support import (
    ROOT,
    free_port,
    http_ok,
    require_program,
    require_ptrace,
    run_server,
    uvicorn_argv,
)

pytestmark = pytest.mark.integration
APP = "tests.integration.hang_app:app"
APP_FILE = ROOT / "tests" / "integration" / "hang_app.py"


def line_of(marker: str) -> int:
    lines = APP_FILE.read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if marker in text)


class Clients:
    """Keep-alive clients, each on a thread of its own, sending its paths one after the
    other; `stop()` ends them (a hung one ends with its socket's timeout)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopping = threading.Event()

    def start(self, paths: Iterable[str]) -> None:
        threading.Thread(target=self._run, args=(paths,), daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()

    def _run(self, paths: Iterable[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            for path in paths:
                if self.stopping.is_set():
                    return
                conn.request("GET", path)
                response = conn.getresponse()
                while response.read(64) and not self.stopping.is_set():
                    pass
        except OSError:
            pass
        finally:
            conn.close()


def test_requests_hung_on_a_deadlocked_pool_are_flagged_where_they_wait(
        tmp_path: Path) -> None:
    require_ptrace()
    require_program("gdb")
    port = free_port()
    report = tmp_path / "r.json"
    argv = uvicorn_argv(APP, port, "--timeout-graceful-shutdown", "2")
    with run_server(argv, port, ready_path="/health") as server:
        proc = start_apiscope(["attach", str(server.pid), "--no-dashboard", "--duration", "120",
                               "--session", str(tmp_path / "s.sqlite"), "--report",
                               str(report)])
        try:
            wait_for_agents([server.pid], proc)
            load = Clients(port)
            try:
                for worker in range(3):  # fast requests, until the pool deadlocks
                    load.start(f"/items/{worker * 100_000 + n}" for n in range(100_000))
                time.sleep(3)
                load.start(["/poll"])
                load.start(["/stream"])
                for _ in range(2):  # two reports at once: each holds one of two connections
                    load.start(["/report"])
                time.sleep(4)
                code, err = end_apiscope(proc)
            finally:
                load.stop()
            assert http_ok(server.url + "/health")  # detached, and still serving
        finally:
            if proc.poll() is None:
                end_apiscope(proc)
    assert code == 0, err

    flags = {f["route"]: f for f in json.loads(report.read_text())["flags"]}
    items = flags.pop("GET /items/{item_id}")
    assert (items["kind"], items["severity"]) == ("slow_endpoint", "high"), items
    assert items["location"] == {"file": str(APP_FILE), "function": "connection",
                                 "line": line_of("LINE: waits for a connection")}
    assert items["metric"]["unfinished"] == 3, items  # one stuck request per client thread
    assert items["metric"]["unfinished_oldest_ms"] >= 2000
    # The reports and the long poll finished nothing to compare with: low at most; the stream
    # has begun its response (its time is its own).
    assert {route: (f["kind"], f["severity"]) for route, f in flags.items()} == {
        "GET /report": ("slow_endpoint", "low"), "GET /poll": ("slow_endpoint", "low")}
