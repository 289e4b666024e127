"""collectors/gunicorn_apiscope.py in a real gunicorn with two Uvicorn workers."""

from __future__ import annotations

import os
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
import pytest

from apiscope.collectors.agent_client import AgentClient
from apiscope.model import RequestRecord
from tests.support import ROOT, free_port, run_server, wait_until

pytestmark = pytest.mark.integration

HOOK = ROOT / "collectors" / "gunicorn_apiscope.py"


def get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()


def gunicorn_argv(port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", str(HOOK),
            "-k", "uvicorn.workers.UvicornWorker", "-w", str(workers),
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", "tests.operator.item_app:app"]


def test_every_worker_records_requests_by_route_template(tmp_path: Path) -> None:
    sockets = tmp_path / "sockets"
    sockets.mkdir(mode=0o700)
    port = free_port()
    env = {"APISCOPE_SOCKET_DIR": str(sockets)}
    with run_server(gunicorn_argv(port, 2), port, ready_path="/health", env=env) as server:
        master = psutil.Process(server.pid)
        workers = wait_until(lambda: [p.pid for p in master.children()
                                      if p.is_running()] if len(master.children()) == 2 else [],
                             timeout=30, what="two gunicorn workers")
        clients = {pid: AgentClient(pid, directory=str(sockets)) for pid in workers}
        try:
            wait_until(lambda: all(c.available() for c in clients.values()), timeout=30,
                       what="an agent answering in every worker")
            sent = Counter({"/items/{item_id}": 30, "/orders/{order_id}": 20})
            for i in range(30):
                get(f"{server.url}/items/{i}")
            for i in range(20):
                get(f"{server.url}/orders/{i}")

            pulled: list[RequestRecord] = []

            def all_pulled() -> bool:
                for client in clients.values():
                    pulled.extend(client.pull().requests)
                got = Counter(r.route for r in pulled if r.route != "/health")
                return got == sent

            wait_until(all_pulled, timeout=20, what=f"the agents to report {dict(sent)}")
        finally:
            for client in clients.values():
                client.close()
    routes = [r for r in pulled if r.route != "/health"]
    assert {r.pid for r in routes} <= set(workers)
    assert all(r.method == "GET" and r.status == 200 for r in routes)
    assert all(r.duration_ms > 0 for r in routes)
    assert not (set(os.listdir(sockets)) - {f"agent-{pid}.sock" for pid in workers})
