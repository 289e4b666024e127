"""`apiscope dump` on a real uvicorn server with requests stuck on purpose: a slow await, an
asyncio.Lock held by another request, a sync sleep in the thread pool. The app's routes run
behind an `@app.middleware("http")`, in a task of their own: each request is listed once,
at what its route waits for."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiscope.cli.main import main
from tests.support import (
    ServerProcess,
    free_port,
    require_program,
    require_ptrace,
    run_server,
    uvicorn_argv,
    wait_until,
)

pytestmark = pytest.mark.integration

APP_FILE = Path(__file__).with_name("dump_app.py")
STUCK = ("/slow-await", "/hold-lock", "/wait-lock", "/pool-sleep")


def line_of(marker: str) -> int:
    lines = APP_FILE.read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if marker in text)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    require_ptrace()
    require_program("gdb")
    port = free_port()
    with run_server(uvicorn_argv("tests.integration.dump_app:app", port), port,
                    env={"APISCOPE_SOCKET_DIR": str(tmp_path)}) as srv:
        yield srv


def dump(pid: int, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["dump", str(pid), "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def by_route(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["route"]: r for r in state["requests"]}


def test_stuck_requests_with_routes_elapsed_and_await_chains(
        server: ServerProcess, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("APISCOPE_SOCKET_DIR", str(tmp_path))
    first = dump(server.pid, capsys)  # injects the agent: no request in flight yet
    assert first["source"] == "agent" or first["source"] == "injected"
    assert first["requests"] == []
    clients = [threading.Thread(target=_get, args=(server.url + path,), daemon=True)
               for path in STUCK]
    try:
        clients[1].start()  # /hold-lock takes the lock before /wait-lock asks for it
        wait_until(lambda: _with_route(dump(server.pid, capsys), "/hold-lock", thread=False),
                   timeout=15, what="/hold-lock in the dump")
        for client in (clients[0], *clients[2:]):
            client.start()
        before = wait_until(lambda: _all_in_flight(dump(server.pid, capsys)), timeout=15,
                            what="the four stuck requests in the dump")
        after = wait_until(lambda: _later(dump(server.pid, capsys), before), timeout=10,
                           what="elapsed times to grow")
        _check_requests(by_route(after))
        assert main(["dump", str(server.pid)]) == 0
        text = capsys.readouterr().out
        assert "GET /wait-lock  awaiting Lock.acquire() from wait_lock" in text
        assert f"in pool_sleep ({APP_FILE}:{line_of('POOL_SLEEP_LINE')})" in text
    finally:
        _get(server.url + "/release")
        for client in clients:
            if client.is_alive():
                client.join(10)


def _check_requests(requests: dict[str, dict[str, Any]]) -> None:
    app = str(APP_FILE)
    slow = requests["/slow-await"]
    assert (slow["await_chain"][-1]["function"], slow["await_chain"][-2]) == (
        "sleep", {"function": "slow_await", "file": app, "line": line_of("SLOW_AWAIT_LINE")})
    waiting = [f["function"] for f in requests["/wait-lock"]["await_chain"]]
    assert waiting[-1] == "Lock.acquire" and "wait_lock" in waiting
    assert {"function": "wait_lock", "file": app, "line": line_of("WAIT_LOCK_LINE")} in (
        requests["/wait-lock"]["await_chain"])
    assert requests["/hold-lock"]["await_chain"][-2]["line"] == line_of("HOLD_LINE")
    pool = requests["/pool-sleep"]
    assert pool["thread"] is not None and not pool["running"]
    assert all(r["method"] == "GET" and r["elapsed_s"] > 0 for r in requests.values())


def _all_in_flight(state: dict[str, Any]) -> dict[str, Any] | None:
    if not set(STUCK) <= set(by_route(state)):
        return None
    assert sorted(r["route"] for r in state["requests"]) == sorted(STUCK)  # each one once
    return state


def _later(state: dict[str, Any], before: dict[str, Any]) -> dict[str, Any] | None:
    old, new = by_route(before), by_route(state)
    grew = all(new[p]["elapsed_s"] > old[p]["elapsed_s"] + 0.2 for p in STUCK if p in new)
    return state if grew and set(STUCK) <= set(new) else None


def test_a_request_from_before_the_agent_is_listed_once_at_its_route_s_await(
        server: ServerProcess, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("APISCOPE_SOCKET_DIR", str(tmp_path))
    client = threading.Thread(target=_get, args=(server.url + "/slow-await",), daemon=True)
    client.start()
    try:
        # The server's task and the task the middleware runs the route in both hold the
        # request's scope; neither has the agent's frame (it came in before the agent).
        time.sleep(1.0)
        state = dump(server.pid, capsys)  # injects the agent
        [row] = state["requests"]
        assert row["before_agent"] and row["elapsed_s"] is None
        assert row["route"] == "/slow-await"
        assert (row["await_chain"][-1]["function"], row["await_chain"][-2]) == (
            "sleep", {"function": "slow_await", "file": str(APP_FILE),
                      "line": line_of("SLOW_AWAIT_LINE")})
        assert row["awaiting"].startswith("Future")
    finally:
        _get(server.url + "/release")
        client.join(10)


def test_pool_thread_stack_is_at_the_sleeping_line(
        server: ServerProcess, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("APISCOPE_SOCKET_DIR", str(tmp_path))
    dump(server.pid, capsys)
    client = threading.Thread(target=_get, args=(server.url + "/pool-sleep",), daemon=True)
    client.start()
    try:
        expected = {"function": "pool_sleep", "file": str(APP_FILE),
                    "line": line_of("POOL_SLEEP_LINE")}
        # time.sleep is C code: the handler's frame is the leaf, at the sleeping line (between
        # two sleeps the loop's test runs for a moment, a line above)
        wait_until(lambda: _pool_leaf(dump(server.pid, capsys)) == expected, timeout=15,
                   what="the pool thread seen at the sleeping line")
    finally:
        _get(server.url + "/release")
        client.join(10)


def _pool_leaf(state: dict[str, Any]) -> dict[str, Any] | None:
    request = _with_route(state, "/pool-sleep") and by_route(state)["/pool-sleep"]
    if not request:
        return None
    thread = next(t for t in state["threads"] if t["ident"] == request["thread"])
    leaf: dict[str, Any] = thread["frames"][-1]
    return leaf


def _with_route(state: dict[str, Any], route: str, thread: bool = True,
                ) -> dict[str, Any] | None:
    # a sync handler's call waits in the pool's queue for a moment before a thread takes it
    request = by_route(state).get(route)
    if request is None or (thread and request["thread"] is None):
        return None
    return state


def _get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
