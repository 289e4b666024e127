"""A real uvicorn serving an instrumented app: profiles pulled, stored, analysed."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from apiscope.analysis.profiles import aggregate
from apiscope.analysis.report import build_report
from apiscope.collectors.agent_client import AgentClient, batch_from_json
from apiscope.model import RequestRecord, StoredProfile
from apiscope.store import SessionReader, SessionWriter
from tests.support import free_port, run_server, uvicorn_argv, wait_until

pytestmark = pytest.mark.integration

APP_FILE = str(Path(__file__).with_name("profiled_app.py"))
QUOTES, CRUNCH = "GET /quotes/{item_id}", "GET /crunch"


def marked_line(mark: str) -> int:
    lines = Path(APP_FILE).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if f"# {mark}" in text)


def fetch(url: str) -> None:
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()


class Pulled:
    def __init__(self) -> None:
        self.requests: list[RequestRecord] = []
        self.profiles: list[StoredProfile] = []
        self.routes: list[Any] = []
        self.status: dict[str, Any] = {}

    def count(self, endpoint: str) -> int:
        return sum(1 for p in self.profiles if p.endpoint == endpoint)

    def stored(self, pid: int) -> list[StoredProfile]:
        """The pulled profiles as the store reads them back."""
        return [p for p in self.profiles if p.pid == pid]


def pull_into(client: AgentClient, pulled: Pulled) -> None:
    reply = client.request({"op": "pull"})  # the raw reply: it carries the profiling status
    batch = batch_from_json(reply, client.pid)
    pulled.requests += batch.requests
    pulled.profiles += [p.stored() for p in batch.profiles]
    pulled.routes = batch.routes or pulled.routes
    pulled.status = reply.get("profiling") or {}


def store(path: Path, pid: int, pulled: Pulled, start: float, end: float) -> None:
    with SessionWriter(path, batch_seconds=0.01) as writer:
        writer.set_meta(command="uvicorn tests.profiling.profiled_app:app", pids=[pid],
                        server="uvicorn", python="3.11", rate_hz=100, start=start, end=end)
        writer.put_routes(pid, pulled.routes)
        writer.put_requests(pulled.requests)
        for p in pulled.profiles:  # as the collector stores each pulled profile
            writer.put_profile(pid, p.start, p.method, p.route, p.duration_ms, p.tree)
        writer.flush()


@pytest.mark.parametrize(("http_middleware", "pyinstrument"),
                         [("0", True), ("1", True), ("0", False)],
                         ids=["plain", "http-middleware", "without-pyinstrument"])
def test_live_profiles_name_the_await_line_and_spare_the_cpu_route(
        sock_dir: str, tmp_path: Path, http_middleware: str, pyinstrument: bool) -> None:
    """Also behind `@app.middleware("http")`, whose tasks the profiles follow, and in a server
    that cannot import pyinstrument, whose profiles time the slices only."""
    port = free_port()
    # The caps lifted: this test is about what the profiles say, not how many there are.
    env = {"APISCOPE_SOCKET_DIR": sock_dir, "APISCOPE_PROFILE_EVERY": "2",
           "APISCOPE_PROFILE_MAX_PER_SECOND": "50", "APISCOPE_PROFILE_MAX_SHARE": "0",
           "PROFILED_APP_HTTP_MIDDLEWARE": http_middleware}
    if not pyinstrument:  # a package of that name first on the path, which fails to import
        hidden = tmp_path / "hidden" / "pyinstrument"
        hidden.mkdir(parents=True)
        (hidden / "__init__.py").write_text('raise ImportError("not installed here")\n')
        env["PYTHONPATH"] = os.pathsep.join(
            [str(hidden.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    argv = uvicorn_argv("tests.profiling.profiled_app:app", port)
    with run_server(argv, port, ready_path="/health", env=env) as server, \
            AgentClient(server.pid, timeout=5.0) as client:
        wait_until(client.available, timeout=10, what="the agent socket")
        start = time.time()
        pulled = Pulled()
        for i in range(12):  # pulled as the collector does, between requests: the agent
            fetch(f"{server.url}/quotes/{i}")  # counts the requests each pull drains and arms
            fetch(f"{server.url}/crunch")  # a route when its turn has come
            pull_into(client, pulled)

        def enough() -> bool:
            pull_into(client, pulled)
            return pulled.count(QUOTES) >= 4 and pulled.count(CRUNCH) >= 4

        wait_until(enough, timeout=15, what="profiles of both routes")
        end = time.time()
        assert pulled.status["enabled"] is True and pulled.status["errors"] == 0
        assert (pulled.status["limited"] is None) is pyinstrument
        assert pulled.status["profiled"] == len(pulled.profiles) <= 12  # 1 in 2 per route

    session = store_and_report(tmp_path, server.pid, pulled, start, end)
    [flag] = [f for f in session["flags"] if f["kind"] == "slow_await"]
    assert flag["route"] == QUOTES
    assert flag["location"] == {"file": APP_FILE, "line": marked_line("await-line"),
                                "function": "fetch_quote"}
    assert "`sleep` at profiled_app.py:" in flag["evidence"]
    assert flag["metric"]["typical_await_ms"] >= 70.0
    routes = aggregate(pulled.stored(server.pid), (str(Path(APP_FILE).parent),))
    crunch = routes[CRUNCH]
    assert crunch.cpu_ms / crunch.total_ms > 0.8  # the CPU route runs, it does not await
    assert routes[QUOTES].await_ms / routes[QUOTES].total_ms > 0.8
    slow = {f["route"]: f for f in session["flags"] if f["kind"] == "slow_endpoint"}
    assert "awaiting `sleep` at profiled_app.py" in slow[QUOTES]["evidence"]
    assert "awaiting" not in slow.get(CRUNCH, {}).get("evidence", "")


def store_and_report(tmp_path: Path, pid: int, pulled: Pulled, start: float,
                     end: float) -> dict[str, Any]:
    path = tmp_path / "live.sqlite"
    store(path, pid, pulled, start, end)
    with SessionReader(path) as reader:
        assert len(reader.profiles("/quotes/{item_id}")) == pulled.count(QUOTES)
        return build_report(reader, slo_ms=40.0).to_json()
