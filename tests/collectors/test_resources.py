"""ResourceCollector against real processes: a uvicorn, a busy loop, a gunicorn losing a worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from apiscope.collectors.resources import ResourceCollector, inet_socket_counts
from apiscope.collectors.target import Target, describe_target
from apiscope.model import ProcessInfo
from tests.support import free_port, run_server, stop_process_group, uvicorn_argv, wait_until

pytestmark = pytest.mark.integration

TINY_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
'''
# Bounded: the loop ends by itself even if the test is killed before cleaning up.
BUSY = [sys.executable, "-c",
        "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass"]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "tinyapp.py").write_text(TINY_APP)
    return tmp_path


@contextmanager
def spawned(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        yield proc
    finally:
        stop_process_group(proc)


def target(pid: int) -> Target:
    # Reading /proc needs no ptrace rights for our own children: skip the tracing check.
    return describe_target(pid, check_trace=False)


def test_a_uvicorn_process_gets_sane_figures(app_dir: Path) -> None:
    port = free_port()
    with run_server(uvicorn_argv("tinyapp:app", port), port, cwd=app_dir) as server:
        rc = ResourceCollector(target(server.pid))
        (sample,) = rc.collect()
        inet = len(psutil.Process(server.pid).net_connections(kind="inet"))
        sockets = inet_socket_counts([server.pid])[server.pid]
    assert sample.pid == server.pid
    assert sample.rss_bytes > 1_000_000
    assert sample.threads >= 1 and sample.fds >= 3
    assert sample.connections >= 1  # the listening socket at least
    assert sockets == inet
    assert sample.ctx_voluntary + sample.ctx_involuntary > 0
    assert sample.read_bytes >= 0 and sample.write_bytes >= 0
    assert 0.0 <= sample.cpu_percent
    assert abs(sample.ts - time.time()) < 60


def test_cpu_percent_rises_under_a_busy_loop_and_stays_low_when_idle() -> None:
    with spawned(BUSY) as busy, spawned(SLEEPER) as idle:
        busy_rc, idle_rc = ResourceCollector(target(busy.pid)), ResourceCollector(target(idle.pid))
        # A shared, loaded machine may give the loop well under a full core: ask for a third.
        wait_until(lambda: busy_rc.collect()[0].cpu_percent > 33, timeout=20, interval=0.25,
                   what="the busy loop's CPU % to rise")
        idle_rc.collect()
        start = time.monotonic()
        wait_until(lambda: time.monotonic() - start > 0.5, what="a half-second window")
        (quiet,) = idle_rc.collect()
    assert quiet.cpu_percent < 10


def test_a_process_that_exits_is_marked_not_an_error() -> None:
    with spawned(SLEEPER) as proc:
        rc = ResourceCollector(target(proc.pid))
        assert [s.pid for s in rc.collect()] == [proc.pid]
        proc.kill()
        proc.wait()
        assert rc.collect() == []
    changes = rc.refresh()
    assert changes.exited == [proc.pid] and changes.new == []
    assert rc.alive_pids() == []


def gunicorn_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", "tinyapp:app"]


def test_a_killed_gunicorn_worker_is_exited_and_its_replacement_new(app_dir: Path) -> None:
    port = free_port()
    with run_server(gunicorn_argv(port), port, cwd=app_dir) as server:
        t = wait_until(lambda: (t := target(server.pid)) and len(t.pids) == 2 and t,
                       timeout=30, what="two gunicorn workers")
        rc = ResourceCollector(t)
        assert {s.pid for s in rc.collect()} == {server.pid, *t.pids}
        victim = t.pids[0]
        os.kill(victim, signal.SIGKILL)

        exited: list[int] = []
        new: list[ProcessInfo] = []

        def replaced() -> bool:
            changes = rc.refresh()
            exited.extend(changes.exited)
            new.extend(changes.new)
            return bool(exited and new)

        wait_until(replaced, timeout=30, interval=0.1, what="gunicorn to replace the worker")
        assert exited == [victim]
        assert [(i.ppid, i.role) for i in new] == [(server.pid, "worker")]
        assert new[0].pid not in t.pids
        assert rc.alive_pids() == sorted([server.pid, t.pids[1], new[0].pid])
        assert {s.pid for s in rc.collect()} == set(rc.alive_pids())


def test_one_collect_on_three_processes_is_cheap(app_dir: Path) -> None:
    port = free_port()
    with run_server(gunicorn_argv(port), port, cwd=app_dir) as server:
        t = wait_until(lambda: (t := target(server.pid)) and len(t.pids) == 2 and t,
                       timeout=30, what="two gunicorn workers")
        rc = ResourceCollector(t)
        rc.collect()
        rounds = 50
        start = time.process_time()
        for _ in range(rounds):
            assert len(rc.collect()) == 3
        cpu_ms = (time.process_time() - start) / rounds * 1000
    # Measured at about 0.8 ms here; CPU time (not wall time) so a loaded machine cannot fail
    # it. A collect costing a tenth of the once-a-second budget would be a regression.
    assert cpu_ms < 100, f"one collect() cost {cpu_ms:.1f} ms of CPU"
