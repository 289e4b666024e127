"""`apiscope attach` and `apiscope run` against real uvicorn and gunicorn processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from apiscope.collectors.agent_client import AgentClient
from apiscope.store import SessionReader
from tests.support import (
    ROOT,
    free_port,
    http_ok,
    require_program,
    require_ptrace,
    run_server,
    stop_process_group,
    uvicorn_argv,
    wait_until,
)

pytestmark = pytest.mark.integration
APP = "tests.integration.attach_app:app"
APISCOPE = [sys.executable, "-m", "apiscope"]
PLAN = {"/items/{i}": 30, "/block": 12, "/sync": 8}
PROBE = "/openapi.json"  # readiness checks hit this route, so they are told apart from the plan
TEMPLATES = {"/items/{i}": "/items/{item_id}", "/block": "/block", "/sync": "/sync"}


def drive(base: str) -> dict[str, list[float]]:
    """Send the planned requests one by one; client latencies in ms per template."""
    latencies: dict[str, list[float]] = {}
    for pattern, n in PLAN.items():
        for i in range(n):
            t0 = time.perf_counter()
            with urllib.request.urlopen(base + pattern.format(i=i), timeout=10) as resp:
                assert resp.status == 200
                resp.read()
            latencies.setdefault(TEMPLATES[pattern], []).append(
                1000 * (time.perf_counter() - t0))
    return latencies


def start_apiscope(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*APISCOPE, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def end_apiscope(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    """Ctrl-C, as a user ends a session; returns (exit code, stderr)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def wait_for_agents(pids: list[int], proc: subprocess.Popen[str]) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"apiscope exited early: {proc.communicate()[1]}")
        return all(agent_answers(pid) for pid in pids)

    wait_until(ready, timeout=60, what="the injected agents to answer")


def windows_stored(session: Path) -> int:
    """Sampling windows the session holds so far (read while apiscope writes it)."""
    try:
        with sqlite3.connect(f"file:{session}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT count(*) FROM windows").fetchone()[0])
    except sqlite3.Error:  # not created yet, or its schema not yet written
        return 0


def agent_answers(pid: int) -> bool:
    with AgentClient(pid) as client:
        return client.available()


def recorded(session: Path) -> Counter[str]:
    """Requests per route template, leaving out the tests' readiness probes."""
    with SessionReader(session) as reader:
        return Counter(r.route for r in reader.requests() if r.route != PROBE)


def test_attach_uvicorn_records_every_request_and_detaches(tmp_path: Path) -> None:
    require_ptrace()
    require_program("gdb")
    port = free_port()
    session = tmp_path / "s.sqlite"
    report = tmp_path / "r.json"
    with run_server(uvicorn_argv(APP, port), port, ready_path=PROBE) as server:
        # At 100 Hz throughout (no budget): the 8 /sync requests use about 120 ms of CPU in
        # all, which the budget's rate on a quiet machine (5 Hz) may not sample once, and CPU
        # is attributed to a handler through samples of it.
        proc = start_apiscope(["attach", str(server.pid), "--no-dashboard", "--duration", "120",
                               "--max-overhead", "0",
                               "--session", str(session), "--report", str(report)])
        try:
            wait_for_agents([server.pid], proc)
            # py-spy's first window holds few samples (its first reads of every thread, the
            # agent starting beside them): on a busy host the 120 ms the /sync requests compute
            # could fall in it unseen. The requests go in the windows after it.
            wait_until(lambda: windows_stored(session) >= 1, timeout=30,
                       what="the first sampling window to be stored")
            client = drive(server.url)
            time.sleep(1.5)  # let at least one more sampling window and agent pull complete
        finally:
            code, err = end_apiscope(proc)
        assert code == 0, err
        # Detached: the app serves as before and nothing answers on the agent socket.
        wait_until(lambda: not agent_answers(server.pid), timeout=20,
                   what="the agent to be removed")
        with urllib.request.urlopen(server.url + "/items/7", timeout=5) as resp:
            assert json.loads(resp.read()) == {"id": 7}

    counts = recorded(session)
    assert counts == Counter({t: PLAN[p] for p, t in TEMPLATES.items()})
    with SessionReader(session) as reader:
        by_route: dict[str, list[float]] = {}
        for r in reader.requests():
            by_route.setdefault(r.route, []).append(r.duration_ms)
            assert r.status == 200 and r.method == "GET" and r.pid == server.pid
    for route, durations in by_route.items():
        # Measured in-process, the server's time cannot exceed what the client waited.
        assert sum(durations) <= sum(client[route])
        assert max(durations) <= max(client[route])
    assert min(by_route["/block"]) >= 30.0  # the handler sleeps 30 ms

    data = json.loads(report.read_text())
    endpoints = {e["route"]: e for e in data["endpoints"]}
    assert endpoints["GET /block"]["count"] == 12
    assert endpoints["GET /block"]["handler"].endswith(":block")
    # CPU is attributed to handlers as measured: the pool thread's loop used CPU, the sleep on
    # the event loop used (next to) none.
    assert endpoints["GET /sync"]["cpu_share"] > 0
    assert endpoints["GET /block"]["cpu_share"] < endpoints["GET /sync"]["cpu_share"]
    assert data["samples"]["total"] > 0


def test_attach_gunicorn_samples_and_records_every_worker(tmp_path: Path) -> None:
    require_ptrace()
    require_program("gdb")
    port = free_port()
    session = tmp_path / "s.sqlite"
    argv = [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", APP]
    with run_server(argv, port, ready_path=PROBE) as server:
        import psutil

        workers = wait_until(lambda: len(psutil.Process(server.pid).children()) == 2 and
                             [c.pid for c in psutil.Process(server.pid).children()],
                             timeout=30, what="two gunicorn workers")
        proc = start_apiscope(["attach", str(server.pid), "--no-dashboard", "--duration", "120",
                               "--session", str(session)])
        try:
            wait_for_agents(workers, proc)
            drive(server.url)
            time.sleep(1.5)
        finally:
            code, err = end_apiscope(proc)
        assert code == 0, err
    assert recorded(session) == Counter({t: PLAN[p] for p, t in TEMPLATES.items()})
    with SessionReader(session) as reader:
        sampled = {pid for pid, _ in reader.threads()}
        assert set(workers) <= sampled
        assert {p.pid for p in reader.processes()} >= set(workers)


def test_target_exit_ends_attach_with_zero_and_keeps_the_session(tmp_path: Path) -> None:
    require_ptrace()
    port = free_port()
    session = tmp_path / "s.sqlite"
    server = subprocess.Popen(uvicorn_argv(APP, port), cwd=ROOT, start_new_session=True,
                              stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _serves(port), timeout=30, what="uvicorn to serve")
        proc = start_apiscope(["attach", str(server.pid), "--no-dashboard", "--no-inject",
                               "--duration", "120", "--session", str(session)])
        wait_until(lambda: session.exists() and _has_windows(session), timeout=30,
                   what="the first stack window")
        stop_process_group(server)  # type: ignore[arg-type]
        _, err = proc.communicate(timeout=60)
    finally:
        stop_process_group(server)  # type: ignore[arg-type]
    assert proc.returncode == 0, err
    assert "target exited" in err
    assert "Traceback" not in err
    assert _has_windows(session)


def test_run_records_from_the_first_request(tmp_path: Path) -> None:
    require_ptrace()
    port = free_port()
    session = tmp_path / "s.sqlite"
    proc = start_apiscope(["run", "--no-dashboard", "--duration", "120", "--session",
                           str(session), "--", *uvicorn_argv(APP, port)])
    try:
        wait_until(lambda: proc.poll() is None and _serves(port), timeout=60,
                   what="the server started by apiscope run")
        drive(f"http://127.0.0.1:{port}")
        time.sleep(1.5)
    finally:
        code, err = end_apiscope(proc)
    assert code == 0, err
    assert recorded(session) == Counter({t: PLAN[p] for p, t in TEMPLATES.items()})


@pytest.mark.parametrize("argv", [["attach", "999999999"], ["detach", "999999999"]])
def test_missing_pid_exits_2_with_a_message(argv: list[str]) -> None:
    done = subprocess.run([*APISCOPE, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "999999999" in done.stderr and "Traceback" not in done.stderr


def test_non_python_process_exits_2() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        done = subprocess.run([*APISCOPE, "attach", str(sleeper.pid), "--no-dashboard",
                               "--duration", "2"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert done.returncode == 2
    assert "Python" in done.stderr and "Traceback" not in done.stderr


def _serves(port: int) -> bool:
    return http_ok(f"http://127.0.0.1:{port}{PROBE}")


def _has_windows(session: Path) -> bool:
    try:
        with SessionReader(session) as reader:
            return len(reader.windows()) > 0
    except Exception:
        return False
