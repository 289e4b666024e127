"""Running a framework app under `apiscope run` or `apiscope attach`, and reading the session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from apiscope.collectors.agent_client import AgentClient
from apiscope.collectors.target import describe_target
from apiscope.model import RequestRecord, RouteInfo
from apiscope.store import SessionReader
from tests.support import ROOT, http_ok, run_server, wait_until

APISCOPE = [sys.executable, "-m", "apiscope"]


def call(base: str, path: str, method: str = "GET") -> int:
    request = urllib.request.Request(base + path, method=method, data=b"" if method != "GET"
                                     else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        return int(exc.code)


def line_of(path: str | Path, text: str) -> int:
    """The first line of a file that contains `text` (1-based)."""
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


def stored(session: Path, probe: str) -> tuple[list[RequestRecord], list[RouteInfo]]:
    """The session's requests (without readiness probes) and route table."""
    if not session.exists():
        return [], []
    with SessionReader(session) as reader:
        requests = [r for r in reader.requests(with_queries=True) if r.route != probe]
        return requests, reader.routes()


def raised(requests: Sequence[RequestRecord]) -> set[tuple[str | None, str | None, int | None]]:
    """(exception type, file, line) of the requests answered 5xx."""
    return {(r.exc_type, r.exc_file, r.exc_line) for r in requests if r.status >= 500}


def wait_stored(session: Path, probe: str, count: int) -> list[RequestRecord]:
    def enough() -> list[RequestRecord] | None:
        requests, routes = stored(session, probe)
        return requests if len(requests) >= count and routes else None

    return wait_until(enough, timeout=30, what=f"{count} requests in the session")


def _start(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*APISCOPE, *args], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


@contextmanager
def under_run(server: Sequence[str], port: int, session: Path, probe: str,
              env: dict[str, str]) -> Iterator[str]:
    """`apiscope run -- SERVER`: yields the server's base URL once it answers `probe`."""
    proc = _start(["run", "--no-dashboard", "--duration", "120", "--session", str(session),
                   "--", *server], env)
    base = f"http://127.0.0.1:{port}"
    try:
        def serving() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"apiscope run exited: {proc.communicate()[1]}")
            return http_ok(base + probe)

        wait_until(serving, timeout=60, what="the server started by apiscope run")
        yield base
    finally:
        _end(proc)


@contextmanager
def under_attach(server: Sequence[str], port: int, session: Path, probe: str,
                 env: dict[str, str]) -> Iterator[str]:
    """A server started alone, then `apiscope attach PID` (the agent injected in it, or in
    each of its workers)."""
    with run_server(list(server), port, ready_path=probe, env=env) as running:
        proc = _start(["attach", str(running.pid), "--no-dashboard", "--duration", "120",
                       "--session", str(session)], env)
        try:
            def injected() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"apiscope attach exited: {proc.communicate()[1]}")
                # Traffic, as a server being profiled has: the loader runs at the main thread's
                # next bytecode, and granian's idle loop sleeps until its next request.
                http_ok(running.url + probe)
                for pid in describe_target(running.pid).pids:  # a master's are its workers
                    with AgentClient(pid) as client:
                        if not client.available():
                            return False
                return True

            wait_until(injected, timeout=60, what="the injected agent to answer")
            yield running.url
        finally:
            _end(proc)


Plan = Sequence[tuple[str, str, str, int]]  # (method, path, template, status)
Mode = Callable[..., AbstractContextManager[str]]  # under_run or under_attach


def serve_plan(mode: Mode, server: Sequence[str], port: int, session: Path, probe: str,
               plan: Plan, source: Path) -> dict[tuple[str, str], RouteInfo]:
    """Send each request of `plan` to the server under `mode`; check that the session holds
    every one under its template and status, and each 5xx with the exception raised at the
    line of `source` that says `raise LookupError`; return its route table by (method,
    template)."""
    with mode(server, port, session, probe, {}) as base:
        for method, path, _, status in plan:
            assert call(base, path, method) == status, path
        requests = wait_stored(session, probe, len(plan))
    assert Counter((r.method, r.route, r.status) for r in requests) == Counter(
        (m, t, s) for m, _, t, s in plan)
    assert raised(requests) == {("LookupError", str(source),
                                 line_of(source, "raise LookupError"))}
    return {(r.method, r.template): r for r in stored(session, probe)[1]}
