"""What the fault tests share: a collector started as a user starts it, and the checks that
nothing of apiscope is left in a server (agent threads, wrapped apps, sockets, py-spy, files).

Every collector runs with a private socket directory and a private TMPDIR, so the tests can
count what is left behind exactly, whatever else runs on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from apiscope.collectors.agent_client import AgentClient
from apiscope.inject import eject_agent
from apiscope.sessionmeta import SessionMeta
from apiscope.store import SessionReader
from tests.support import ROOT, free_port, run_server, uvicorn_argv, wait_until

APP = "tests.integration.attach_app:app"
APISCOPE = [sys.executable, "-m", "apiscope"]


@dataclass
class Place:
    """The private directories one test's collectors use."""

    sockets: Path
    tmp: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "APISCOPE_SOCKET_DIR": str(self.sockets), "TMPDIR": str(self.tmp),
                "APISCOPE_TOKEN": "", **extra}

    def agent_sockets(self) -> list[str]:
        return sorted(p.name for p in self.sockets.glob("agent-*.sock"))

    def leftovers(self) -> list[str]:
        """Everything a collector may leave behind: sockets, locks, status files, temp dirs."""
        return sorted(p.name for p in self.sockets.iterdir()) + sorted(
            p.name for p in self.tmp.iterdir())


def make_place(tmp_path: Path) -> Place:
    place = Place(tmp_path / "sockets", tmp_path / "tmp")
    place.sockets.mkdir(mode=0o700)
    place.tmp.mkdir()
    return place


@contextmanager
def uvicorn_server(place: Place) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    with run_server(uvicorn_argv(APP, port), port, ready_path="/items/0",
                    env=place.env()) as server:
        yield server.proc, server.url


@contextmanager
def gunicorn_server(place: Place, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", *extra, APP]
    with run_server(argv, port, ready_path="/items/0", env=place.env()) as server:
        wait_until(lambda: len(workers(server.pid)) == 2, timeout=30, what="two workers")
        yield server.proc, server.url


def workers(pid: int) -> list[int]:
    """The live workers of `pid` (an exiting one is a zombie until its master reaps it)."""
    found = []
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(found)


def start_collector(place: Place, *args: str, random_token: bool = False,
                    **env: str) -> subprocess.Popen[str]:
    """apiscope with its stderr in a file (`stderr_of`), readable while it runs; its dashboard
    open to all unless `random_token` (then it draws and prints one, as for a user)."""
    log = place.sockets.parent / f"apiscope-{time.monotonic_ns()}.err"
    environ = place.env(**env)
    if random_token:
        del environ["APISCOPE_TOKEN"]
    with open(log, "w") as err:
        proc = subprocess.Popen([*APISCOPE, *args], cwd=ROOT, env=environ,
                                stdout=subprocess.DEVNULL, stderr=err, text=True,
                                start_new_session=True)
    _LOGS[proc.pid] = log
    _RUNNING.append(proc)
    return proc


_LOGS: dict[int, Path] = {}
_RUNNING: list[subprocess.Popen[str]] = []


def stop_collectors() -> None:
    """SIGTERM every collector `start_collector` started that still runs, then SIGKILL."""
    while _RUNNING:
        proc = _RUNNING.pop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stderr_of(proc: subprocess.Popen[str]) -> str:
    return _LOGS[proc.pid].read_text(errors="replace")


def finish(proc: subprocess.Popen[str], sig: signal.Signals | None = None,
           timeout: float = 60) -> tuple[int, str]:
    """Send `sig` to the collector (not its group: as `kill` does) and wait for its end."""
    if sig is not None and proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(timeout)
    return proc.returncode, stderr_of(proc)


def agent_answers(pid: int, place: Place) -> bool:
    with AgentClient(pid, directory=str(place.sockets)) as client:
        return client.available()


def wait_for_agents(pids: list[int], place: Place, proc: subprocess.Popen[str]) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"apiscope exited early: {stderr_of(proc)}")
        return all(agent_answers(pid, place) for pid in pids)

    try:
        wait_until(ready, timeout=60, what=f"agents in {pids}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; apiscope said: {stderr_of(proc)}") from None


def wait_for_worker_agents(master: int, place: Place, proc: subprocess.Popen[str]) -> None:
    """Until every live worker of `master` has an agent (the workers are listed anew at each
    try: one that is recycling right now is replaced)."""
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"apiscope exited early: {stderr_of(proc)}")
        found = workers(master)
        return bool(found) and all(agent_answers(pid, place) for pid in found)

    try:
        wait_until(ready, timeout=60, what=f"agents in the workers of {master}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; apiscope said: {stderr_of(proc)}") from None


def agent_threads(pid: int) -> list[str]:
    """The agent's threads in `pid`, from py-spy's view of the process."""
    from apiscope.collectors.pyspy import find_pyspy

    out = subprocess.run([find_pyspy(), "dump", "--pid", str(pid), "--json"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [t.get("thread_name") or "" for t in json.loads(out)
            if (t.get("thread_name") or "").startswith("apiscope")]


def wrapped_apps(pid: int, place: Place) -> int:
    """Apps still wrapped by an agent in `pid` (a detach finds and restores them)."""
    result = eject_agent(pid, directory=str(place.sockets))
    return result.restored


def assert_clean(pids: list[int], place: Place) -> None:
    """No agent thread, wrapped app or socket in any live process of `pids`."""
    for pid in pids:
        if psutil.pid_exists(pid):
            assert agent_threads(pid) == [], f"agent threads left in {pid}"
            assert wrapped_apps(pid, place) == 0, f"wrapped apps left in {pid}"
    assert place.agent_sockets() == []


def drive(url: str, count: int, workers_: int = 4) -> tuple[int, int]:
    """`count` GETs of /items/{i}; returns (ok, failed)."""
    ok, answered_badly, dropped = drive_counting(url, count, workers_)
    return ok, answered_badly + dropped


def drive_counting(url: str, count: int, workers_: int = 4) -> tuple[int, int, int]:
    """`count` GETs of /items/{i}: (200s, other HTTP answers, connections dropped)."""
    def one(i: int) -> str:
        try:
            with urllib.request.urlopen(f"{url}/items/{i}", timeout=10) as resp:
                resp.read()
                return "ok" if resp.status == 200 else "bad"
        except urllib.error.HTTPError as exc:
            exc.close()
            return "bad"
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return "dropped"

    with ThreadPoolExecutor(max_workers=workers_) as pool:
        results = list(pool.map(one, range(count)))
    return results.count("ok"), results.count("bad"), results.count("dropped")


def pyspy_tracing(pid: int) -> list[int]:
    """py-spy processes sampling `pid` (or its children)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["name"] == "py-spy" and str(pid) in cmd:
            found.append(proc.pid)
    return found


def session_meta(session: Path) -> SessionMeta:
    with SessionReader(session) as reader:
        return reader.meta()


def wait_gone(pid: int, timeout: float = 30) -> None:
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
               timeout=timeout, what=f"process {pid} to end")


def now() -> float:
    return time.time()
