"""What the version, user and container tests share: serving `matrix_app` on some interpreter
(as some user, in some namespace), running `apiscope attach` on it, and driving requests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from apiscope.collectors.agent_client import AgentClient
from apiscope.store import SessionReader
from tests.support import ROOT, ServerProcess, free_port, run_server, wait_until

APP_DIR = Path(__file__).resolve().parent
# Requests per route template; "/ping" (readiness) is left out of every count.
PLAN = {"/items/{item_id}": 25, "/block": 12, "/fan-out": 12}  # 1 in 20 requests is profiled


def uvicorn_args(port: int, app_dir: str = str(APP_DIR)) -> list[str]:
    """uvicorn on the standard asyncio loop and h11, which every target environment has."""
    return ["-m", "uvicorn", "matrix_app:app", "--app-dir", app_dir, "--host", "127.0.0.1",
            "--port", str(port), "--loop", "asyncio", "--http", "h11", "--log-level", "warning"]


@contextmanager
def serve(prefix: Sequence[str], *, app_dir: str = str(APP_DIR),
          env: dict[str, str] | None = None, cwd: Path = ROOT) -> Iterator[ServerProcess]:
    """`matrix_app` under `prefix` (the python, maybe behind setpriv or unshare), ready."""
    port = free_port()
    with run_server([*prefix, *uvicorn_args(port, app_dir)], port, ready_path="/ping",
                    env=env, cwd=cwd, timeout=60) as server:
        yield server


def get(server: ServerProcess, path: str) -> bytes:
    with urllib.request.urlopen(server.url + path, timeout=30) as resp:
        assert resp.status == 200, (path, resp.status)
        return bytes(resp.read())


def drive(url: str) -> None:
    """The planned requests, one at a time."""
    for i in range(PLAN["/items/{item_id}"]):
        with urllib.request.urlopen(f"{url}/items/{i}", timeout=30) as resp:
            resp.read()
    for path in ("/block", "/fan-out"):
        for _ in range(PLAN[path]):
            with urllib.request.urlopen(f"{url}{path}", timeout=30) as resp:
                resp.read()


def loop_holds(flags: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A report's `event_loop_blocked` flags on the matrix app, by the function they point at:
    `block` (GET /block's handler) and `fetch_part` (the tasks GET /fan-out starts, named by
    that route where the target's Python lets the task's context be read: 3.12 and newer).
    Each flag must point at one of the two, once."""
    held = [f for f in flags if f["kind"] == "event_loop_blocked"]
    by_function = {f["location"]["function"]: f for f in held}
    assert len(by_function) == len(held) and set(by_function) <= {"block", "fetch_part"}, held
    assert "block" in by_function and by_function["block"]["route"] == "GET /block", held
    return by_function


def agent_answers(pid: int) -> bool:
    with AgentClient(pid) as client:
        return client.available()


def stored_requests(session: Path) -> int:
    """Requests of the plan stored in the session so far (the file is being written)."""
    if not session.exists():
        return 0
    try:
        with SessionReader(session) as reader:
            return sum(1 for r in reader.requests() if r.route != "/ping")
    except Exception:  # the collector may not have written the schema yet
        return 0


class Apiscope:
    """A running `apiscope attach`; `returncode` and `stderr` once it has ended."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.returncode: int | None = None
        self.stderr = ""

    def check(self) -> bool:
        """True while it runs; fails the test with its output when it ended early."""
        if self.proc.poll() is not None:
            raise AssertionError(f"apiscope exited early: {self.proc.communicate()[1]}")
        return True

    def end(self, timeout: float = 60.0) -> None:
        """Ctrl-C, as a user ends a session."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            _, self.stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            _, self.stderr = self.proc.communicate()
        self.returncode = self.proc.returncode


@contextmanager
def attach_session(pid: int, session: Path, report: Path, *extra: str,
                   env: dict[str, str] | None = None) -> Iterator[Apiscope]:
    """`apiscope attach PID` for as long as the block runs; after the block, it has waited for
    the planned requests to be stored (when the block drove them) and ended the session."""
    argv = [sys.executable, "-m", "apiscope", "attach", str(pid), "--no-dashboard",
            "--duration", "120", "--session", str(session), "--report", str(report), *extra]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, **(env or {})})
    apiscope = Apiscope(proc)
    try:
        yield apiscope
        total = sum(PLAN.values())
        wait_until(lambda: apiscope.check() and stored_requests(session) >= total, timeout=30,
                   what="the collector to store the requests")
    finally:
        apiscope.end()
