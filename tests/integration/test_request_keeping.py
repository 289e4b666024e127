"""A busy server under `apiscope run` with a small budget: the agent keeps one request in n,
and the session's counts are still those the clients saw (every error and every slow request
exactly; the cheap ones within a few percent)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from apiscope.store import SessionReader
from tests.integration.test_attach import end_apiscope, start_apiscope
from tests.support import free_port, http_ok, require_ptrace, uvicorn_argv, wait_until

pytestmark = pytest.mark.integration
APP = "tests.integration.keeping_app:app"


def hammer(port: int, stop: threading.Event, seen: Counter[tuple[str, int]],
           lock: threading.Lock) -> None:
    """One keep-alive client: mostly /fast, a /fail in 40, a /slow in 400."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    mine: Counter[tuple[str, int]] = Counter()
    n = 0
    while not stop.is_set():
        n += 1
        path = "/slow" if n % 400 == 0 else "/fail" if n % 40 == 0 else "/fast"
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        mine[(path, resp.status)] += 1
    conn.close()
    with lock:
        seen.update(mine)


def test_a_busy_server_keeps_one_request_in_n_and_counts_stay_true(tmp_path: Path) -> None:
    require_ptrace()  # `run` samples stacks with py-spy too
    port = free_port()
    session, report = tmp_path / "s.sqlite", tmp_path / "r.json"
    # A budget of 0.2%: storing a thousand requests a second costs several times its share.
    proc = start_apiscope(["run", "--no-dashboard", "--max-overhead", "0.2", "--session",
                           str(session), "--report", str(report), "--",
                           *uvicorn_argv(APP, port)])
    seen: Counter[tuple[str, int]] = Counter()
    try:
        wait_until(lambda: proc.poll() is None and http_ok(f"http://127.0.0.1:{port}/fast"),
                   timeout=60, what="the server started by apiscope run")
        with SessionReader(session) as reader:  # the answers to the readiness checks
            wait_until(lambda: bool(reader.requests()), timeout=20, what="the first requests")
            before = Counter(r.route for r in reader.requests())
        stop, lock = threading.Event(), threading.Lock()
        clients = [threading.Thread(target=hammer, args=(port, stop, seen, lock))
                   for _ in range(3)]
        for c in clients:
            c.start()
        time.sleep(12)
        stop.set()
        for c in clients:
            c.join(30)
        time.sleep(2)  # the last pulls
    finally:
        code, err = end_apiscope(proc)
    assert code == 0, err

    with SessionReader(session) as reader:
        requests = reader.requests()
        rows = reader.requests_after(0)
    kept_for = Counter(r.weight for r in rows if r.route == "/fast")
    assert max(kept_for) > 1, f"every request kept: {kept_for}"  # thinned out
    estimated = Counter(r.route for r in requests)
    estimated["/fast"] -= before["/fast"]
    fast = seen[("/fast", 200)]
    assert fast > 3000, seen  # busy enough to matter
    print(f"clients saw {seen}; the session estimates {estimated} from {len(rows)} rows,"
          f" kept for {sorted(kept_for.items())}")
    assert abs(estimated["/fast"] - fast) <= 0.1 * fast, (estimated, seen)
    # Errors and requests over the objective are all kept, each for itself.
    assert estimated["/fail"] == seen[("/fail", 503)] > 0
    assert estimated["/slow"] == seen[("/slow", 200)] > 0
    assert {r.weight for r in rows if r.route in ("/fail", "/slow")} == {1}
    assert len(rows) < fast / 2  # the session holds far fewer rows than requests

    data = json.loads(report.read_text())
    assert data["samples"]["requests_kept_one_in"] >= max(kept_for)
    counts = {e["route"]: e["count"] for e in data["endpoints"]}
    assert counts["GET /fail"] == seen[("/fail", 503)]
