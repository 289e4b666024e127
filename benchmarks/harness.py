"""Running a server and wrk on separate cores, and summarising interleaved measurements."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = "0"
LOAD_CPU = "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {sys.version.split()[0]}"


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not come up")


@contextmanager
def server(app: str, env: dict[str, str], path: str = "/items/1") -> Iterator[tuple[int, str]]:
    """A uvicorn pinned to SERVER_CPU; yields (pid, url)."""
    port = free_port()
    cmd = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "uvicorn", app, "--host",
           "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}{path}"
    try:
        wait_http(url)
        yield proc.pid, url
    finally:
        stop_process(proc, 10, group=True)


def stop_process(proc: subprocess.Popen[Any], timeout: float, group: bool = False) -> None:
    """SIGTERM (to its whole process group with `group`), SIGKILL after `timeout` seconds."""
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()


def wrk(url: str, seconds: int = 5, connections: int = 32) -> float:
    """Requests per second wrk reached, pinned to LOAD_CPU."""
    return wrk_with_cpu(url, seconds, connections)[0]


def wrk_with_cpu(url: str, seconds: int = 5, connections: int = 32) -> tuple[float, float]:
    """(requests per second, wrk's own CPU seconds), so callers can leave wrk's CPU out."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (make system-deps)")
    proc = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    # wait4 rather than wait(): it hands back the child's resource usage.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output: {out}")
    return float(match.group(1)), usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def tree_cpu_seconds(pid: int) -> float:
    """`cpu_seconds` plus the CPU of the process's live descendants (apiscope's py-spy runs);
    0 once the process is gone."""
    import psutil

    try:
        total = cpu_seconds(pid)
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0.0
    for child in children:
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def ratio_summary(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
