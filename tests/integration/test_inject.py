"""Injecting the agent into live servers and detaching it, with real uvicorn, gunicorn and gdb.

Each test also prints what it measured (run with `-s` to see): how long the injection took,
how long gdb had the target stopped, how long the main thread ran the bootstrap, and the
longest event-loop stall the app itself saw.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from apiscope.cli.main import main
from apiscope.collectors.agent_client import AgentClient
from apiscope.collectors.target import describe_target
from apiscope.errors import TargetError
from apiscope.inject import (
    InjectionFailed,
    InjectionResult,
    eject_agent,
    inject_agent,
    injector,
    ptrace,
)
from apiscope.inject.gdb import XSTATE_REFUSED, check_gdb_output, gdb_argv, gdb_script
from apiscope.inject.result import wait_for_result
from apiscope.inject.runner import run_with_deadline
from apiscope.inject.snippet import InjectArgs, build_snippet
from apiscope.model import RequestRecord
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

APP = "tests.inject.serving_app:app"
ITEMS = "/items/{item_id}"
N = 25


@pytest.fixture
def sockets() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="aps-")  # short: Unix socket paths are limited in length
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def uvicorn_server() -> Iterator[ServerProcess]:
    require_ptrace()
    require_program("gdb")
    port = free_port()
    with run_server(uvicorn_argv(APP, port), port, ready_path="/ping") as server:
        yield server


class BackgroundClient(threading.Thread):
    """GETs `path` on one keep-alive connection until stopped, counting failures."""

    def __init__(self, port: int, path: str = "/ping", limit: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.limit = port, path, limit
        self.ok = 0
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        deadline = time.monotonic() + self.limit
        while not self._halt.is_set() and time.monotonic() < deadline:
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"status {resp.status}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                conn.close()
            self._halt.wait(0.005)  # bounded load: at most ~200 requests a second
        conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def get(server: ServerProcess, path: str) -> tuple[int, bytes, str]:
    with urllib.request.urlopen(server.url + path, timeout=30) as resp:
        return resp.status, resp.read(), resp.headers.get("content-type", "")


def pull_until(pid: int, sockets: str, done: Callable[[list[RequestRecord]], bool]
               ) -> list[RequestRecord]:
    """Pull the agent until `done(records)`, then once more: nothing else may be pending."""
    records: list[RequestRecord] = []
    with AgentClient(pid, sockets, timeout=10) as client:
        def enough() -> bool:
            records.extend(client.pull().requests)
            return done(records)

        wait_until(enough, timeout=30, what="the agent to report the requests")
        records.extend(client.pull().requests)
    return records


def items(records: list[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if r.route == ITEMS]


def report(name: str, result: InjectionResult, stall_ms: float | None = None) -> None:
    print(f"\n[{name}] pid {result.pid} {result.action} via {result.method}:"
          f" total {result.seconds * 1000:.0f} ms, gdb {result.debugger_seconds * 1000:.0f} ms,"
          f" after gdb until the status {(result.seconds - result.debugger_seconds) * 1000:.0f}"
          f" ms, bootstrap on the main thread {result.main_thread_ms:.1f} ms"
          + (f", longest loop stall {stall_ms:.0f} ms" if stall_ms is not None else ""))


def stall_ms(server: ServerProcess) -> float:
    return float(json.loads(get(server, "/stall")[1])["max_stall_ms"])


def test_injected_agent_records_each_request_with_its_template(
        uvicorn_server: ServerProcess, sockets: str) -> None:
    server = uvicorn_server
    background = BackgroundClient(server.port)
    background.start()
    try:
        wait_until(lambda: background.ok >= 5, what="the background client to get going")
        get(server, "/stall?reset=true")
        before = time.time()
        result = inject_agent(server.pid, sockets)
        after = time.time()
        stall = stall_ms(server)
        for item_id in range(N):
            assert get(server, f"/items/{item_id}")[0] == 200
        seen = background.ok
        wait_until(lambda: background.ok >= seen + 5, what="more background requests")
    finally:
        background.stop()
    report("uvicorn", result, stall)
    assert background.failures == []
    assert result.method == ("ptrace" if ptrace.supported() else "gdb") and result.wrapped == 1
    # When gdb may have held the process (py-spy's reads then fail): within the call, and as
    # long as the debugger ran at least.
    assert result.debugger_span is not None
    start, end = result.debugger_span
    assert before <= start and end <= after and end - start >= result.debugger_seconds
    assert [(a["server"], a["state"]) for a in result.apps] == [("uvicorn", "wrapped")]
    assert result.socket == os.path.join(sockets, f"agent-{server.pid}.sock")
    records = pull_until(server.pid, sockets, lambda rs: len(items(rs)) >= N)
    assert len(items(records)) == N
    assert {(r.method, r.status, r.pid) for r in items(records)} == {("GET", 200, server.pid)}
    # The keep-alive connection opened before the injection goes through the agent too.
    assert any(r.route == "/ping" for r in records)


def test_injecting_twice_wraps_once(uvicorn_server: ServerProcess, sockets: str) -> None:
    first = inject_agent(uvicorn_server.pid, sockets)
    second = inject_agent(uvicorn_server.pid, sockets)
    report("uvicorn again", second)
    assert first.wrapped == 1
    assert second.wrapped == 0 and [a["state"] for a in second.apps] == ["already"]
    for item_id in range(N):
        get(uvicorn_server, f"/items/{item_id}")
    records = pull_until(uvicorn_server.pid, sockets, lambda rs: len(items(rs)) >= N)
    assert len(items(records)) == N


def test_detach_restores_the_app(uvicorn_server: ServerProcess, sockets: str) -> None:
    server = uvicorn_server
    before = [get(server, f"/items/{i}") for i in range(3)]
    inject_agent(server.pid, sockets)
    get(server, "/items/99")
    socket = os.path.join(sockets, f"agent-{server.pid}.sock")
    assert os.path.exists(socket)
    background = BackgroundClient(server.port)
    background.start()
    try:
        wait_until(lambda: background.ok >= 5, what="the background client to get going")
        result = eject_agent(server.pid, sockets)
        after = [get(server, f"/items/{i}") for i in range(3)]
    finally:
        background.stop()
    report("uvicorn detach", result)
    assert background.failures == []
    assert result.restored == 1
    assert after == before
    assert not os.path.exists(socket)
    assert not AgentClient(server.pid, sockets).available()
    # Nothing of ours is left in front of the app: the next attach has to wrap it anew,
    # and records only what comes after it.
    again = inject_agent(server.pid, sockets)
    assert [a["state"] for a in again.apps] == ["wrapped"]
    get(server, "/items/7")
    assert len(items(pull_until(server.pid, sockets, lambda rs: len(items(rs)) >= 1))) == 1


def test_gunicorn_workers_each_get_an_agent(sockets: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    require_ptrace()
    require_program("gdb")
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", APP, "--workers", "2",
            "--worker-class", "uvicorn.workers.UvicornWorker", "--bind", f"127.0.0.1:{port}",
            "--log-level", "warning"]
    with run_server(argv, port, ready_path="/ping",
                    env={"SERVING_APP_READY_DIR": str(tmp_path)}) as server:
        workers = wait_until(lambda: _ready_workers(server.pid, tmp_path), timeout=60,
                             what="both gunicorn workers to load the app")
        master = inject_agent(server.pid, sockets)
        assert master.apps == [] and master.socket is None
        results = [inject_agent(pid, sockets) for pid in workers]
        for result in results:
            assert [(a["server"], a["state"]) for a in result.apps] == [("gunicorn", "wrapped")]
        for item_id in range(N):  # a new connection each: the kernel spreads them
            assert get(server, f"/items/{item_id}")[0] == 200
        counts = _pull_workers(workers, sockets)
        assert sum(counts.values()) == N, counts

        monkeypatch.setenv("APISCOPE_SOCKET_DIR", sockets)
        assert main(["detach", str(server.pid)]) == 0
        out = capsys.readouterr().out
        assert f"PID {server.pid}: no injected agent" in out
        for pid in workers:
            assert f"PID {pid}: agent removed from 1 app" in out
            assert not os.path.exists(os.path.join(sockets, f"agent-{pid}.sock"))
        assert get(server, "/ping")[0] == 200
    for result in [master, *results]:
        report("gunicorn", result)


def _ready_workers(master: int, ready: Path) -> list[int] | None:
    pids = sorted(int(p.name.split("-")[1]) for p in ready.glob("ready-*"))
    children = {c.pid for c in psutil.Process(master).children()}
    return pids if len(pids) == 2 and set(pids) <= children else None


def _pull_workers(workers: list[int], sockets: str) -> dict[int, int]:
    counts = dict.fromkeys(workers, 0)
    clients = {pid: AgentClient(pid, sockets, timeout=10) for pid in workers}
    try:
        def all_in() -> bool:
            for pid, client in clients.items():
                counts[pid] += len(items(client.pull().requests))
            return sum(counts.values()) >= N

        wait_until(all_in, timeout=30, what="the workers' agents to report the requests")
    finally:
        for client in clients.values():
            client.close()
    return counts


OTHER_SERVERS = {
    # hypercorn serves from a spawned child; the agent takes `ASGIWrapper.app`
    "hypercorn": ["--bind", "127.0.0.1:{port}"],
    # anycorn, hypercorn's fork on anyio, keeps the app alike (`ASGIWrapper.app`)
    "anycorn": ["--bind", "127.0.0.1:{port}"],
    # Django Channels' server calls `Server.application` for every request, by keyword
    "daphne": ["-b", "127.0.0.1", "-p", "{port}", "-v", "0"],
    # granian serves from a child process whose Rust core holds the app in a closure's cell
    "granian": ["--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}",
                "--log-level", "warning"],
}


@pytest.mark.parametrize("server", OTHER_SERVERS)
def test_other_servers(server: str, sockets: str) -> None:
    pytest.importorskip(server)
    require_ptrace()
    require_program("gdb")
    port = free_port()
    options = [o.format(port=port) for o in OTHER_SERVERS[server]]
    with run_server([sys.executable, "-m", server, *options, APP], port,
                    ready_path="/ping") as server_process:
        worker = describe_target(server_process.pid).pids[0]  # the master's worker, if any
        result = inject_agent(worker, sockets)
        report(server, result)
        assert [(a["server"], a["state"]) for a in result.apps] == [(server, "wrapped")]
        for item_id in range(N):
            assert get(server_process, f"/items/{item_id}")[0] == 200
        assert len(items(pull_until(worker, sockets, lambda rs: len(items(rs)) >= N))) == N
        assert eject_agent(worker, sockets).restored == 1
        assert get(server_process, "/items/1")[0] == 200  # served by the app itself again


def test_uvicorn_reload_serves_from_a_child_that_gets_the_agent(sockets: str,
                                                                 tmp_path: Path) -> None:
    """`uvicorn --reload`, as most people run it while developing: the process given is a
    supervisor that never loads the app; it serves from a child it spawned, which gets the
    agent (and is what a collector samples)."""
    require_ptrace()
    require_program("gdb")
    port = free_port()
    # Watching an empty directory only: the reloader polls every file under the ones it watches.
    argv = [sys.executable, "-m", "uvicorn", APP, "--reload", "--reload-dir", str(tmp_path),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with run_server(argv, port, ready_path="/ping") as server:
        supervisor = inject_agent(server.pid, sockets)
        assert supervisor.apps == [] and supervisor.socket is None
        [child] = describe_target(server.pid).pids
        assert child != server.pid
        result = inject_agent(child, sockets)
        report("uvicorn --reload", result)
        assert [(a["server"], a["state"]) for a in result.apps] == [("uvicorn", "wrapped")]
        for item_id in range(N):
            assert get(server, f"/items/{item_id}")[0] == 200
        assert len(items(pull_until(child, sockets, lambda rs: len(items(rs)) >= N))) == N
        assert eject_agent(child, sockets).restored == 1
        assert get(server, "/items/1")[0] == 200


def test_a_python_process_without_an_app_is_left_as_it_was(sockets: str) -> None:
    require_ptrace()
    require_program("gdb")
    code = "import time\nwhile True:\n    time.sleep(0.05)\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_until(lambda: psutil.Process(proc.pid).cmdline()[:1] == [sys.executable],
                   what="the interpreter to start")
        result = inject_agent(proc.pid, sockets)
        report("plain python", result)
        assert result.apps == [] and result.note and "no ASGI app" in result.note
        assert result.socket is None and os.listdir(sockets) == []
        assert proc.poll() is None
        assert psutil.Process(proc.pid).num_threads() == 1  # no agent thread was started
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not ptrace.supported(), reason="calls by ptrace: x86-64 Linux")
def test_functions_the_files_do_not_name_are_looked_up_by_gdb_and_called_by_ptrace(
        uvicorn_server: ServerProcess, sockets: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """gdb only prints the addresses and detaches; the calls are ptrace's, as always here."""
    server = uvicorn_server
    monkeypatch.setattr(injector, "find_functions", lambda pid: None)
    result = inject_agent(server.pid, sockets)
    assert result.method == "ptrace" and result.wrapped == 1
    for item_id in range(N):
        assert get(server, f"/items/{item_id}")[0] == 200
    assert len(items(pull_until(server.pid, sockets, lambda rs: len(items(rs)) >= N))) == N
    assert eject_agent(server.pid, sockets).restored == 1
    assert get(server, "/items/1")[0] == 200


def test_gdb_refused_by_the_kernel_names_the_fix() -> None:
    """A real refusal: gdb run as an unprivileged user against a process of root's."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run gdb as another user")
    gdb = require_program("gdb")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    readable = tempfile.mkdtemp(prefix="aps-")  # the unprivileged gdb must read the script
    try:
        os.chmod(readable, 0o755)
        script = Path(readable) / "probe.gdb"
        script.write_text(gdb_script("pass\n", attach_pid=proc.pid))
        script.chmod(0o644)
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                *gdb_argv(gdb, proc.pid, str(script))]
        with pytest.raises(TargetError) as caught:
            check_gdb_output(proc.pid, run_with_deadline(argv, 30.0))
        assert "kernel.yama.ptrace_scope" in caught.value.message
        assert "--cap-add SYS_PTRACE" in caught.value.message
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(readable, ignore_errors=True)


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_other_python_versions(version: str, sockets: str) -> None:
    """CPython's pending calls changed inside in 3.12 and 3.13: inject into each version that
    is installed, serving a Starlette app from this environment's pure-Python packages."""
    require_ptrace()
    require_program("gdb")
    python = _interpreter(version)
    port = free_port()
    argv = [python, "-m", "uvicorn", "tests.inject.starlette_app:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--loop", "asyncio",
            "--http", "h11"]
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]),
                                          sysconfig.get_paths()["purelib"]])}
    with run_server(argv, port, ready_path="/ping", env=env) as server:
        result = inject_agent(server.pid, sockets)
        report(f"python {version}", result)
        assert result.status["python"].startswith(version + ".")
        assert [a["state"] for a in result.apps] == ["wrapped"]
        for item_id in range(N):
            assert get(server, f"/items/{item_id}")[0] == 200
        assert len(items(pull_until(server.pid, sockets, lambda rs: len(items(rs)) >= N))) == N
        assert eject_agent(server.pid, sockets).restored == 1
        assert get(server, "/items/1")[1] == b'{"item_id":"1"}'


def _interpreter(version: str) -> str:
    """The real interpreter behind `pythonX.Y` (not a version manager's shim), or skip.

    pyenv's shims only run the versions selected in PYENV_VERSION, so we select it.
    """
    found = shutil.which(f"python{version}")
    if found is None:
        pytest.skip(f"python{version} is not installed")
    env = {**os.environ, "PYENV_VERSION": version}
    done = subprocess.run([found, "-c", "import sys; print(sys.executable)"], env=env,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or not done.stdout.strip():
        pytest.skip(f"python{version} does not run here: {done.stderr.strip()[-200:]}")
    return done.stdout.strip()


def test_injection_while_py_spy_samples(uvicorn_server: ServerProcess, sockets: str,
                                        tmp_path: Path) -> None:
    """py-spy (blocking mode) traces the target at every sample, and the kernel refuses gdb
    meanwhile: injection retries, so `attach` can start both in any order."""
    py_spy = require_program("py-spy")
    sampler = subprocess.Popen([py_spy, "record", "--pid", str(uvicorn_server.pid),
                                "--rate", "1000", "--duration", "60", "--format", "raw",
                                "-o", str(tmp_path / "raw.txt")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # TracerPid names the tracing thread of py-spy, not its main thread.
        wait_until(lambda: _traced_by(uvicorn_server.pid), timeout=30, interval=0.001,
                   what="py-spy to trace the server")
        for _ in range(3):
            assert inject_agent(uvicorn_server.pid, sockets).apps
            assert eject_agent(uvicorn_server.pid, sockets).restored == 1
        assert sampler.poll() is None
    finally:
        sampler.kill()
        sampler.wait()
    assert get(uvicorn_server, "/ping")[0] == 200


def _traced_by(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


def test_gdb_without_python_attaches_with_p(sockets: str, tmp_path: Path) -> None:
    """The script for a gdb built without Python (attach by `-p`, no retries inside)."""
    gdb = require_program("gdb")
    require_ptrace()
    proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)"])
    try:
        status_file = os.path.join(sockets, f"inject-{proc.pid}.json")
        snippet = build_snippet(InjectArgs(action="attach", directory=sockets,
                                           result=status_file, token="p-flag"))
        script = tmp_path / "inject.gdb"
        script.write_text(gdb_script(snippet))
        run = run_with_deadline(gdb_argv(gdb, proc.pid, str(script), attach_in_script=False),
                                30.0)
        if XSTATE_REFUSED in run.output:
            # This gdb cannot make a call on this CPU, which is why apiscope makes its calls
            # with ptrace on x86-64 (`inject.ptrace`); the failure, if met, is named. (gdb's
            # half-restored thread may not survive it: the process is not checked then.)
            with pytest.raises(InjectionFailed, match="extended registers"):
                check_gdb_output(proc.pid, run)
            return
        check_gdb_output(proc.pid, run)
        status = wait_for_result(status_file, "p-flag", proc.pid, 15.0)
        assert status["ok"] and status["apps"] == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
