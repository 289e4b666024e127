"""Helpers the tests share: free ports, real server processes, waiting on conditions."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"
T = TypeVar("T")


class FakeClock:
    """A clock the test moves by hand (`now`, `advance`), so durations are exact."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status < 500)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def fetch_status(url: str, timeout: float = 30.0) -> int:
    """GET `url` and return its status, error statuses included (the body is read and closed)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        return int(exc.code)


def require_ptrace() -> None:
    """Skip outside CI when this user cannot trace processes; in CI such a test must run."""
    if IN_CI:
        return
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    if os.geteuid() != 0 and scope.exists() and scope.read_text().strip() != "0":
        pytest.skip("needs ptrace (root or kernel.yama.ptrace_scope=0)")


def require_found(find: Callable[[str], T], what: str) -> T:
    """`find(what)`, for something the test needs that may be missing here (an interpreter of
    one version: `LookupError` says what is missing); skip outside CI when missing, fail in CI."""
    try:
        return find(what)
    except LookupError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def require_program(name: str) -> str:
    """The path of a program the test drives; skip outside CI when missing, fail in CI."""
    import shutil

    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed: `make test` should have installed it")
        pytest.skip(f"{name} is not installed (make system-deps installs it as root)")
    return path


class ServerProcess:
    """A real server started as a subprocess, with its base URL."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextmanager
def run_server(argv: Sequence[str], port: int, *, ready_path: str = "/",
               env: dict[str, str] | None = None, timeout: float = 30.0,
               cwd: Path = ROOT) -> Iterator[ServerProcess]:
    """Start `argv`, wait until GET ready_path answers, and stop the server afterwards."""
    full_env = {**os.environ, **(env or {})}
    # The server's log goes to a file: a pipe nobody reads fills up and freezes the server.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=full_env, stdout=subprocess.DEVNULL,
                                stderr=log, start_new_session=True)
        server = ServerProcess(proc, port)
        try:
            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"server exited with {proc.returncode}: "
                                         f"{_tail(log)}")
                # Ours must be the listener: a free port can be taken by another process
                # between `free_port()` and the bind, and its answers would look like ours.
                return _listens(proc.pid, port) and http_ok(server.url + ready_path)

            wait_until(ready, timeout=timeout, what=f"{argv[0]} to serve on port {port}")
            try:
                yield server
            except AssertionError as exc:  # what the server said is half of the diagnosis
                exc.add_note(f"server log (exit code {proc.poll()}): {_tail(log)}")
                raise
        finally:
            stop_process_group(proc)


def _tail(log: IO[bytes], size: int = 2000) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-size:]


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` or one of its children listens on TCP `port` (True when a
    process's sockets cannot be read: another user's server, not ours to check)."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return False
    for process in family:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in process.net_connections(kind="tcp")):
                return True
        except psutil.AccessDenied:
            return True
        except psutil.Error:
            continue
    return False


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


def uvicorn_argv(app: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", *extra]
