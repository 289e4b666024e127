"""A real uvicorn serving an app that calls `apiscope.instrument(app)`; AgentClient pulls."""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from apiscope.collectors.agent_client import AgentClient
from apiscope.model import RequestRecord, RouteInfo
from tests.support import fetch_status, free_port, run_server, uvicorn_argv, wait_until

pytestmark = pytest.mark.integration

APP_FILE = str(Path(__file__).with_name("instrumented_app.py"))


def boom_line() -> int:
    lines = Path(APP_FILE).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if text.endswith("# boom-line"))


def test_agent_client_pulls_every_request_of_a_live_uvicorn(sock_dir: str) -> None:
    port = free_port()
    env = {"APISCOPE_SOCKET_DIR": sock_dir}
    argv = uvicorn_argv("tests.agent.instrumented_app:app", port)
    with run_server(argv, port, ready_path="/health", env=env) as server, \
            AgentClient(server.pid, timeout=5.0) as client:  # found from its environment
        wait_until(client.available, timeout=10, what="the agent socket")
        sent = ["/items/1", "/items/2", "/items/3", "/v1/reports/a", "/v1/reports/b",
                "/nope/1", "/nope/2", "/boom"]
        latency: dict[str, list[float]] = defaultdict(list)
        window_start = time.time()
        statuses = []
        for path in sent:
            started = time.perf_counter()
            statuses.append(fetch_status(server.url + path))
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            latency[path.rsplit("/", 1)[0]].append(elapsed_ms)
        window_end = time.time()
        assert statuses == [200, 200, 200, 200, 200, 404, 404, 500]

        records: list[RequestRecord] = []
        tables: list[list[RouteInfo]] = []

        def pulled_all() -> bool:
            pulled = client.pull()
            records.extend(r for r in pulled.requests if r.route != "/health")
            if pulled.routes is not None:
                tables.append(pulled.routes)
            return len(records) >= len(sent)

        wait_until(pulled_all, timeout=10, what="the agent to report every request")
        batch = client.pull()

    assert [r for r in batch.requests if r.route != "/health"] == []  # nothing extra
    assert Counter((r.method, r.route, r.status) for r in records) == {
        ("GET", "/items/{item_id}", 200): 3,
        ("GET", "/v1/reports/{name}", 200): 2,
        ("GET", "<unmatched>", 404): 2,
        ("GET", "/boom", 500): 1,
    }
    assert all(r.pid == server.pid for r in records)
    assert all(window_start - 0.5 <= r.start <= window_end for r in records)
    (failed,) = [r for r in records if r.status == 500]
    assert failed.exc_type == "RuntimeError"
    assert failed.exc_file is not None and os.path.samefile(failed.exc_file, APP_FILE)
    assert failed.exc_line == boom_line()
    # Each server-side duration is within its client-side latency; paired in sorted order
    # per route, since both lists hold the same requests.
    by_route = {"/items/{item_id}": "/items", "/v1/reports/{name}": "/v1/reports",
                "<unmatched>": "/nope", "/boom": ""}
    for route, prefix in by_route.items():
        server_side = sorted(r.duration_ms for r in records if r.route == route)
        client_side = sorted(latency[prefix])
        assert all(s <= c for s, c in zip(server_side, client_side, strict=True)), route
    assert min(r.duration_ms for r in records if r.route == "/items/{item_id}") >= 5.0
    assert batch.routes is None  # the route table went once, with the first pull
    routes = {(r.method, r.template): r for r in tables[-1]}
    assert routes[("GET", "/v1/reports/{name}")].is_async is False
    assert routes[("GET", "/items/{item_id}")].handler == "tests.agent.instrumented_app:read_item"
    assert batch.threadpool is not None and batch.threadpool.total_tokens == 40
    assert batch.stats.errors == 0 and batch.stats.dropped == 0
    # uvicorn re-raises SIGTERM after its graceful shutdown, so atexit may not run and the
    # socket file can outlive the process: what matters is that nobody answers on it.
    with AgentClient(server.pid, directory=sock_dir) as client:
        assert not client.available()


def test_gunicorn_preload_workers_each_serve_their_own_agent(sock_dir: str) -> None:
    """With --preload the app (and the agent) is created in the master before the fork: each
    worker must get its own socket, and together they report every request once."""
    import sys

    import psutil

    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--preload", "-w", "2", "-k",
            "uvicorn.workers.UvicornWorker", "-b", f"127.0.0.1:{port}", "--log-level",
            "warning", "tests.agent.instrumented_app:app"]
    with run_server(argv, port, ready_path="/health",
                    env={"APISCOPE_SOCKET_DIR": sock_dir}) as server:
        master = psutil.Process(server.pid)

        def two_workers() -> list[int]:
            children = [p.pid for p in master.children() if p.is_running()]
            return children if len(children) == 2 else []

        workers = wait_until(two_workers, timeout=20, what="two gunicorn workers")
        clients = [AgentClient(pid, directory=sock_dir, timeout=5.0) for pid in workers]
        try:
            for client in clients:
                wait_until(client.available, timeout=20, what=f"the agent of {client.pid}")
            for i in range(20):
                assert fetch_status(f"{server.url}/items/{i}") == 200
            records: list[RequestRecord] = []

            def pulled_all() -> bool:
                for client in clients:
                    records.extend(r for r in client.pull().requests if r.route != "/health")
                return len(records) >= 20

            wait_until(pulled_all, timeout=10, what="both workers to report")
        finally:
            for client in clients:
                client.close()
    assert len(records) == 20
    assert {r.route for r in records} == {"/items/{item_id}"}
    assert {r.pid for r in records} <= set(workers)
