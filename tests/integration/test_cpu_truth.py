"""CPU figures rest on the kernel's measurements: a real uvicorn server, real py-spy, the real
agent, and routes whose time goes to a sleep, to Python on the loop and to C code."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests.support import (
    ROOT,
    free_port,
    require_program,
    require_ptrace,
    run_server,
    uvicorn_argv,
)

pytestmark = pytest.mark.integration
APP = "tests.integration.cpu_truth_app:app"
SECONDS = 8


PATHS = ["/nap", "/spin", "/hash", "/offload", "/nap", "/"]


def load(base: str, stop: threading.Event, paths: list[str] = PATHS) -> None:
    n = 0
    while not stop.is_set():
        try:
            with urllib.request.urlopen(base + paths[n % len(paths)], timeout=10) as resp:
                resp.read()
        except OSError:
            pass  # the server goes away at the end
        n += 1


@contextmanager
def loaded(base: str, clients: list[list[str]]) -> Iterator[None]:
    """A client per list of paths, each requesting its paths in turn until the block ends."""
    stop = threading.Event()
    threads = [threading.Thread(target=load, args=(base, stop, paths), daemon=True)
               for paths in clients]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(15)


def attach(pid: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`apiscope attach PID` without the dashboard, within a 10% budget (see the first test)."""
    return subprocess.run([sys.executable, "-m", "apiscope", "attach", str(pid),
                           "--no-dashboard", "--max-overhead", "10", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cpu_shares_are_measured_and_add_up_to_the_processs_cpu(tmp_path: Path) -> None:
    require_ptrace()
    require_program("py-spy")
    require_program("gdb")
    port = free_port()
    report = tmp_path / "r.json"
    # Shares need samples: this host is saturated (three clients, the server, py-spy on two
    # cores), where the default 2% budget samples at 5 Hz, a few dozen running samples in
    # 8 s, too few for a route's share (the rules ask for more before they flag a line). A 10%
    # budget samples at ~60 Hz.
    with run_server(uvicorn_argv(APP, port), port) as server, loaded(server.url, [PATHS] * 3):
        before = psutil.Process(server.pid).cpu_times()
        done = attach(server.pid, "--duration", str(SECONDS), "--report", str(report),
                      "--session", str(tmp_path / "s.sqlite"))
        after = psutil.Process(server.pid).cpu_times()
    assert done.returncode == 0, done.stderr
    data = json.loads(report.read_text())
    assert data["samples"]["cpu_measured"] is True
    shares = {e["route"]: e["cpu_share"] for e in data["endpoints"]}
    # The sleeping route fills most of the pool threads' wall time (50 ms a request, 80% of
    # it), the others a few milliseconds each: the sleep must cost far less of the CPU than of
    # the time. A pool thread's measured CPU (its hashing) is shared over its lines by how
    # much each line runs when shown; the sleep's line is learnt to run ~5% of the time it
    # shows (py-spy sees the thread as it wakes), and it shows ~20 times as long as the
    # hashing; moving all lines' odds of running alike (`oncpu.share_by_odds`) leaves most of
    # the thread's CPU with the hashing: 0.05-0.22 in runs on this machine. The agent's looks
    # at its threads' system calls then find the sleep's line asleep (`threadlooks`), and
    # from there on it takes none: 0.003 and 0.15 in two runs here (the first window is
    # split before five looks have found it).
    assert shares.get("GET /nap", 0.0) < 0.3, shares
    assert shares["GET /spin"] > 0.0 and shares["GET /hash"] > 0.0, shares
    # The hashing an async handler hands to a pool thread (no frame of the app's there) is
    # the route's, found by the agent in the context the pool runs it in (`agent/offload`):
    # most of the process's CPU goes to it (150,000 rounds, about 60 ms a request here).
    assert shares.get("GET /offload", 0.0) > 0.2, shares
    [proc] = data["processes"]
    total = sum(shares.values()) + (proc["server_cpu_share"] or 0.0)
    assert total <= 1.0 + 1e-6
    # The session's own measured CPU time against the process's, over (about) the same span:
    # within 10% plus the injection and start-up the attach adds around the sampled windows.
    from apiscope.store import SessionReader

    with SessionReader(tmp_path / "s.sqlite") as reader:
        measured = sum(c.seconds for c in reader.process_cpu())
        timed: dict[str, float] = {}
        for seen in reader.offloaded():
            timed[seen.endpoint] = timed.get(seen.endpoint, 0.0) + seen.cpu
    used = (after.user + after.system) - (before.user + before.system)
    assert 0.75 * used <= measured <= 1.1 * used, (measured, used)
    # Each handed-off call was timed by its pool thread's CPU clock, for its route alone; the
    # frame the timing adds to the pool thread's stack never reaches the stored stacks (the
    # hook on the loop thread, handing the call over, may: that is apiscope's own work).
    offload = data["endpoints"][[e["route"] for e in data["endpoints"]].index("GET /offload")]
    assert set(timed) == {"GET /offload"}, timed
    assert 0.02 * offload["count"] <= timed["GET /offload"] <= measured, (timed, offload)
    with sqlite3.connect(tmp_path / "s.sqlite") as conn:
        found = conn.execute("SELECT function FROM frames WHERE file LIKE"
                             " '%apiscope/agent/offload.py'").fetchall()
    assert not [f for (f,) in found if f.endswith("__call__")], found
    # Routes flagged for CPU work are the computing ones, with cause "cpu"; the sleep is never.
    for flag in data["flags"]:
        if flag["route"] == "GET /nap":
            assert flag["kind"] not in ("cpu_hotspot", "gil_contention"), flag
        if flag["kind"] == "event_loop_blocked":
            assert flag["route"] == "GET /spin" and flag["metric"]["cause"] == "cpu", flag



class CpuWatch:
    """Every worker of a master and its CPU time, read from outside every 50 ms while it lives:
    what the kernel says each used, to hold the session's figures against."""

    def __init__(self, master: psutil.Process) -> None:
        self.master = master
        self.seen: dict[int, list[tuple[float, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> CpuWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            for child in self.master.children():
                try:
                    times = child.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                self.seen.setdefault(child.pid, []).append(
                    (time.time(), times.user + times.system))

    def used(self, pid: int, start: float, end: float) -> float:
        """CPU seconds `pid` used from `start` to `end` (to its last reading if it died)."""
        readings = self.seen.get(pid, [])
        inside = [cpu for t, cpu in readings if start <= t <= end]
        before = [cpu for t, cpu in readings if t < start]
        if not inside:
            return 0.0
        return inside[-1] - (before[-1] if before else 0.0)


def test_a_server_recycling_its_workers_is_measured_in_every_window(tmp_path: Path) -> None:
    """gunicorn's `--max-requests` replaces each worker every few seconds here. A worker started
    since the last window is read from its first window on, one that exits within a window is
    measured by what its master reaped: no window of a sampled worker goes unmeasured (its
    samples would be left to guesses, its CPU missing from the total), and the session's CPU
    time is the workers' as the kernel counts it."""
    require_ptrace()
    require_program("py-spy")
    require_program("gdb")
    port = free_port()
    session = tmp_path / "s.sqlite"
    argv = [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", "--max-requests", "150",
            "--max-requests-jitter", "20", APP]
    with run_server(argv, port) as server, CpuWatch(psutil.Process(server.pid)) as watch, \
            loaded(server.url, [PATHS] * 3):
        done = attach(server.pid, "--duration", str(SECONDS + 4), "--session", str(session))
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(session) as conn:
        sampled = set(conn.execute("SELECT DISTINCT window_id, pid FROM samples"))
        measured_in = set(conn.execute("SELECT window_id, pid FROM process_cpu"))
        spans = {pid: (first, last) for pid, first, last in conn.execute(
            "SELECT s.pid, min(w.start), max(w.end) FROM samples s"
            " JOIN windows w ON w.id = s.window_id GROUP BY s.pid")}
        measured = dict(conn.execute("SELECT pid, sum(seconds) FROM process_cpu GROUP BY pid"))
    assert len(spans) >= 3, "no worker recycled while attached: the test proves nothing"
    assert sampled <= measured_in, sorted(sampled - measured_in)
    # The workers' CPU over the sampled windows, against the kernel's figures read from
    # outside: within 20%. A worker that exited within a window is measured by what its master
    # reaped, which holds the whole life of one that started and exited inside the window too
    # (never sampled): both sides count it. One that started within a window and was not
    # sampled in it is counted from its next window (a little less inside).
    first, last = min(f for f, _ in spans.values()), max(e for _, e in spans.values())
    used = sum(watch.used(pid, first, last) for pid in watch.seen)
    total = sum(measured.values())
    assert 0.8 * used <= total <= 1.2 * used, (measured, used)


def test_cpu_of_a_c_extensions_own_threads_is_its_callers_route(tmp_path: Path) -> None:
    """argon2 with four lanes runs each on a thread of its own C library, which py-spy cannot
    see, while the handler's thread waits for them: most of the process's CPU, which the
    kernel counts in the process's total and in no thread it was asked about. It is the
    login's, as much as its calls cost when timed alone, not the server's and not unknown."""
    require_ptrace()
    require_program("py-spy")
    require_program("gdb")
    from argon2 import PasswordHasher

    hasher = PasswordHasher(parallelism=4)
    digest = hasher.hash("secret")
    start = time.process_time()
    for _ in range(5):
        hasher.verify(digest, "secret")
    per_login = (time.process_time() - start) / 5  # this process's own lanes included
    port = free_port()
    report, session = tmp_path / "r.json", tmp_path / "s.sqlite"

    with run_server(uvicorn_argv("tests.integration.native_threads_app:app", port), port,
                    ready_path="/nap") as server, \
            loaded(server.url, [["/login"], ["/nap", "/spin"]]):
        done = attach(server.pid, "--duration", str(SECONDS), "--report", str(report),
                      "--session", str(session))
    assert done.returncode == 0, done.stderr
    data = json.loads(report.read_text())
    [proc] = data["processes"]
    routes = {e["route"]: e for e in data["endpoints"]}
    with sqlite3.connect(session) as conn:
        [(measured,)] = conn.execute("SELECT sum(seconds) FROM process_cpu")
    login = routes["GET /login"]
    expected = login["count"] * per_login / measured
    assert proc["native_cpu_share"] > 0.3, proc
    assert 0.6 * expected <= login["cpu_share"] <= 1.5 * expected, (login, expected)
    assert routes["GET /nap"]["cpu_share"] < 0.05, routes["GET /nap"]
    assert login["cpu_share"] + (proc["server_cpu_share"] or 0.0) <= 1.0 + 1e-6
