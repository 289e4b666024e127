"""An app served on trio (hypercorn's trio worker): the agent records it and fails no request,
its per-request profiles included (they followed asyncio's loop, which trio has not)."""

from __future__ import annotations

import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from apiscope.store import SessionReader
from tests.integration.test_attach import agent_answers, end_apiscope, start_apiscope
from tests.support import free_port, require_program, require_ptrace, run_server, wait_until

pytestmark = pytest.mark.integration
APP = "tests.integration.trio_app:app"


def load(base: str, stop: threading.Event, answers: Counter[int]) -> None:
    n = 0
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"{base}/items/{n % 50}", timeout=10) as resp:
                resp.read()
                answers[resp.status] += 1
        except urllib.error.HTTPError as exc:
            answers[exc.code] += 1
        except OSError:
            answers[0] += 1
        n += 1


def test_an_app_on_trio_is_recorded_and_profiled_and_no_request_fails(tmp_path: Path) -> None:
    pytest.importorskip("trio")
    require_ptrace()
    require_program("gdb")
    port = free_port()
    session = tmp_path / "s.sqlite"
    argv = [sys.executable, "-m", "hypercorn", "-k", "trio", "--bind", f"127.0.0.1:{port}", APP]
    answers: Counter[int] = Counter()
    with run_server(argv, port, ready_path="/health") as server:
        proc = start_apiscope(["attach", str(server.pid), "--no-dashboard", "--duration", "60",
                               "--session", str(session)])
        stop = threading.Event()
        clients = [threading.Thread(target=load, args=(server.url, stop, answers))
                   for _ in range(3)]
        try:
            # hypercorn serves from a spawned child (beside multiprocessing's helpers).
            wait_until(lambda: any(agent_answers(pid) for pid in _children(server.pid)),
                       timeout=60, what="the injected agent to answer")
            for c in clients:
                c.start()
            # Long enough for the collector to ask for profiles of the awaiting route and get
            # them (a few seconds at most), and for many requests to be profiled after.
            stop.wait(12)
        finally:
            stop.set()
            for c in clients:
                if c.is_alive():
                    c.join(15)
            code, err = end_apiscope(proc)
    assert code == 0, err
    assert set(answers) == {200} and answers[200] > 100, answers
    with SessionReader(session) as reader:
        routes = Counter(r.route for r in reader.requests())
        profiles = reader.profiles()
    assert routes["/items/{item_id}"] >= 100, routes
    assert any(p.route == "/items/{item_id}" for p in profiles), [p.route for p in profiles]


def _children(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children()]
