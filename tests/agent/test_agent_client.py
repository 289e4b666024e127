from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from apiscope.agent.paths import SocketDirError
from apiscope.collectors.agent_client import AgentClient, batch_from_json, target_socket_dir
from apiscope.errors import TargetError
from apiscope.model import QueryStat
from tests.support import wait_until


def fake_proc(root: Path, pid: int, environ: dict[str, str]) -> str:
    proc = root / "proc"
    (proc / str(pid)).mkdir(parents=True)
    raw = b"\0".join(f"{k}={v}".encode() for k, v in environ.items()) + b"\0"
    (proc / str(pid) / "environ").write_bytes(raw)
    return str(proc)


def test_socket_dir_is_read_from_the_target_environment(tmp_path: Path) -> None:
    mine = tmp_path / "sockets"
    mine.mkdir(mode=0o700)
    proc = fake_proc(tmp_path, 4242, {"PATH": "/bin", "APISCOPE_SOCKET_DIR": str(mine)})
    assert target_socket_dir(4242, proc=proc) == str(mine)


def test_xdg_runtime_dir_and_tmp_fallbacks(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    proc = fake_proc(tmp_path, 7, {"XDG_RUNTIME_DIR": str(runtime)})
    assert target_socket_dir(7, proc=proc) == str(runtime / "apiscope")  # not created yet
    proc = fake_proc(tmp_path / "b", 8, {"HOME": "/nowhere"})
    assert target_socket_dir(8, proc=proc) == f"/tmp/apiscope-{os.getuid()}"


def shows_its_environment(pid: int, value: Path) -> None:
    """Wait until a target just started shows its own environment in /proc: read within
    moments of the start it was seen without it (twice in full runs of these tests)."""
    wait_until(lambda: str(value).encode() in Path(f"/proc/{pid}/environ").read_bytes(),
               what="the target's environment")


def test_unsafe_target_directory_is_not_trusted(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    ours = tmp_path / "ours"
    monkeypatch.setenv("APISCOPE_SOCKET_DIR", str(ours))
    env = {**os.environ, "APISCOPE_SOCKET_DIR": str(open_dir)}
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], env=env,
                          stdin=subprocess.PIPE) as target:
        try:
            shows_its_environment(target.pid, open_dir)
            with pytest.raises(SocketDirError, match="writable by other users"):
                target_socket_dir(target.pid)
            client = AgentClient(target.pid)
            assert client.candidates == [str(ours / f"agent-{target.pid}.sock")]
        finally:
            assert target.stdin is not None
            target.stdin.close()


def test_our_unsafe_directory_is_a_target_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    monkeypatch.setenv("APISCOPE_SOCKET_DIR", str(open_dir))
    with pytest.raises(TargetError, match="chmod 700"):
        AgentClient(os.getpid())


def test_client_looks_where_the_target_put_its_socket(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    monkeypatch.setenv("APISCOPE_SOCKET_DIR", str(tmp_path / "ours"))
    env = {**os.environ, "APISCOPE_SOCKET_DIR": str(theirs)}
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], env=env,
                          stdin=subprocess.PIPE) as target:
        try:
            shows_its_environment(target.pid, theirs)
            client = AgentClient(target.pid)
            assert client.path == str(tmp_path / "ours" / f"agent-{target.pid}.sock")
            (theirs / f"agent-{target.pid}.sock").touch()  # the target's agent started
            assert client.path == str(theirs / f"agent-{target.pid}.sock")
        finally:
            assert target.stdin is not None
            target.stdin.close()


def test_a_socket_left_by_an_exited_process_with_the_same_pid_is_passed_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Our directory holds a socket file of a process that exited with the pid the target has
    # now (pids wrap): nobody listens on it. The target's agent listens in its own directory.
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir(mode=0o700)
    theirs.mkdir(mode=0o700)
    monkeypatch.setenv("APISCOPE_SOCKET_DIR", str(ours))
    env = {**os.environ, "APISCOPE_SOCKET_DIR": str(theirs)}
    code = ("import sys; from apiscope.agent.runtime import Agent; Agent().start();"
            " print('serving', flush=True); sys.stdin.read()")
    with subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as target:
        try:
            assert target.stdout is not None and target.stdout.readline() == "serving\n"
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stale.bind(str(ours / f"agent-{target.pid}.sock"))
            stale.close()  # the file stays, refusing every connection
            with AgentClient(target.pid) as client:
                assert client.path == str(ours / f"agent-{target.pid}.sock")
                assert client.available()
                assert client.path == str(theirs / f"agent-{target.pid}.sock")
        finally:
            assert target.stdin is not None
            target.stdin.close()


def test_unreadable_process_falls_back_to_our_directory(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APISCOPE_SOCKET_DIR", str(tmp_path / "ours"))
    assert target_socket_dir(999_999_999) == str(tmp_path / "ours")


def test_batch_conversion_to_the_model() -> None:
    batch = batch_from_json({
        "pid": 12, "ts": 100.0,
        "requests": [{"start": 99.5, "duration_ms": 3.5, "method": "GET", "route": "/a/{b}",
                      "status": 500, "exc_type": "KeyError", "exc_file": "/app/main.py",
                      "exc_line": 7, "queries": [["SELECT ?", 3, 1.5, "/app/main.py", 9]]}],
        "routes": [{"method": "GET", "template": "/a/{b}", "handler": "main:a",
                    "file": "/app/main.py", "line": 5, "is_async": True}],
        "threadpool": {"ts": 100.0, "total_tokens": 40, "borrowed_tokens": 40, "waiting": 3},
        "stats": {"recorded": 10, "dropped": 1, "errors": 0},
        "profiles": [],
    })
    (request,) = batch.requests
    assert request.endpoint == "GET /a/{b}" and request.pid == 12
    assert request.queries == (QueryStat("SELECT ?", 3, 1.5, "/app/main.py", 9),)
    assert batch.threadpool is not None and batch.threadpool.waiting == 3
    assert (batch.stats.ts, batch.stats.dropped) == (100.0, 1)
    assert batch.routes[0].handler == "main:a"
    # The agent sends each request as its RequestEntry array; the object form above is what an
    # agent of an earlier apiscope, still running in a server, sends: both read the same.
    row = batch_from_json({"pid": 12, "ts": 100.0, "requests": [
        [99.5, 3.5, "GET", "/a/{b}", 500, "KeyError", "/app/main.py", 7,
         [["SELECT ?", 3, 1.5, "/app/main.py", 9]]]]})
    assert row.requests == batch.requests


def test_a_pulled_profile_is_stored_as_it_came_and_read_back_typed(tmp_path: Path) -> None:
    from apiscope.store import SessionReader, SessionWriter

    leaf = {"function": "sleep", "file": "/usr/lib/python3.11/asyncio/tasks.py", "line": 649,
            "time_ms": 80.0, "await_ms": 80.0, "children": []}
    tree = {"function": "GET /q", "file": "", "line": 0, "time_ms": 81.0, "await_ms": 0.5,
            "children": [{"function": "quote", "file": "/app/main.py", "line": "24",
                          "time_ms": 80.5, "await_ms": 0.0, "children": [leaf, "junk"]}]}
    batch = batch_from_json({"pid": 12, "ts": 100.0, "profiles": [
        {"start": 99.0, "method": "GET", "route": "/q", "duration_ms": 81.0, "tree": tree},
        {"start": 99.5, "method": "GET", "route": "/q", "duration_ms": 2.0, "tree": "junk"}]})
    pulled, broken = batch.profiles
    assert pulled.tree is tree and broken.tree is None  # kept as it came: no typing on intake
    with SessionWriter(tmp_path / "s.sqlite", batch_seconds=0.01) as writer:
        writer.set_meta(command="uvicorn main:app", pids=[12], server="uvicorn",
                        python="3.11", rate_hz=100, start=98.0, end=101.0)
        for p in batch.profiles:  # as the collector's fan-out stores them
            writer.put_profile(p.pid, p.start, p.method, p.route, p.duration_ms, p.tree)
        writer.flush()
    with SessionReader(tmp_path / "s.sqlite") as reader:
        stored = reader.profiles()
    # Read back typed, as typing it on intake gave: the line a number, the junk child left out.
    assert [p.tree for p in stored] == [pulled.stored().tree, None]
    assert stored[0].tree is not None and stored[0].tree.children[0].line == 24
    assert [c.function for c in stored[0].tree.children[0].children] == ["sleep"]


def test_a_kept_request_carries_the_number_it_stands_for() -> None:
    batch = batch_from_json({"pid": 12, "ts": 100.0, "requests": [
        [99.5, 3.5, "GET", "/a", 200, None, None, None, [], 16],
        [99.6, 3.5, "GET", "/a", 500, "KeyError", "/app/main.py", 7, [], 1],
        [99.7, 600.0, "GET", "/events", 200, None, None, None, [], 1, 2.5]],
        "stats": {"recorded": 40, "dropped": 0, "errors": 0, "skipped": 23, "keep_every": 16,
                  "serve_cpu": 0.25}})
    assert [r.weight for r in batch.requests] == [16, 1, 1]
    # A stream's time to its head, when the agent measured one (an earlier agent sends none).
    assert [r.first_byte_ms for r in batch.requests] == [None, None, 2.5]
    assert (batch.stats.keep_every, batch.stats.serve_cpu) == (16, 0.25)
