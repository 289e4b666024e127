"""Unit tests of the fault handling parts: injections, the orphan watch, the collector lock,
the stop signals and the session writer's checkpoints and failures."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil
import pytest

from apiscope.agent.orphan import OrphanWatch
from apiscope.agent.transport import AgentServer
from apiscope.collect.failures import FailureLog
from apiscope.collectors.injections import AgentInjections
from apiscope.errors import TargetError
from apiscope.inject.errors import InjectionFailed, InjectionTimeout
from apiscope.inject.result import InjectionResult
from apiscope.lock import CollectorLock, TargetBusy
from apiscope.signals import stop_on_signals
from apiscope.store import SessionWriter
from apiscope.store.writer import SessionPathError, SessionWriteError
from tests.support import wait_until


def result(pid: int, apps: int) -> InjectionResult:
    return InjectionResult(pid=pid, action="attach", method="gdb",
                           status={"apps": [{"app": "a", "state": "wrapped"}] * apps},
                           seconds=0.1, debugger_seconds=0.05)


def test_a_worker_without_an_app_yet_is_tried_again_until_it_has_one() -> None:
    answers = iter([0, 0, 1])
    calls: list[int] = []
    warnings: list[str] = []

    def inject(pid: int) -> InjectionResult:
        calls.append(pid)
        return result(pid, next(answers))

    injections = AgentInjections(inject, inject, warnings.append, retry_delays=(0.0,) * 5)
    injections.add(7)
    injections.add(7)  # once per process
    assert injections.wait(5)
    assert calls == [7, 7, 7] and injections.serving == {7} and warnings == []


def test_no_app_is_only_said_once_the_retries_are_spent() -> None:
    warnings: list[str] = []
    injections = AgentInjections(lambda pid: result(pid, 0), lambda pid: result(pid, 0),
                                 warnings.append, retry_delays=(0.0, 0.0))
    injections.add(7)
    assert injections.wait(5)
    assert len(warnings) == 1 and "serves no ASGI app" in warnings[0]


def test_close_detaches_every_process_ever_injected_and_names_the_failures() -> None:
    detached: list[int] = []

    def eject(pid: int) -> InjectionResult:
        detached.append(pid)
        if pid == 3:
            raise InjectionFailed("gdb said no")
        return result(pid, 0)

    gone = {2}
    injections = AgentInjections(lambda pid: result(pid, 1), eject, lambda m: None,
                                 alive=lambda pid: pid not in gone)
    for pid in (1, 2, 3):
        injections.add(pid)
    assert injections.wait(5)
    failures = injections.close()
    assert sorted(detached) == [1, 3]  # 2 exited: its agent went with it
    assert [(f.pid, f.command) for f in failures] == [(3, "apiscope detach 3")]
    injections.add(4)  # closed: nothing new starts
    assert injections.started == {1, 2, 3}


def test_a_worker_that_exited_unreaped_is_no_detach_failure() -> None:
    """A worker recycled as the session ends is a zombie until its master reaps it: it exists
    for `kill -0`, and its agent went with it. The default liveness check knows that (a
    uvicorn recycling its workers was told to retry `apiscope detach` on such a PID)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE,
                   timeout=10, what="the child to exit")
        assert psutil.pid_exists(child.pid)

        def eject(pid: int) -> InjectionResult:
            raise InjectionFailed(f"no process with PID {pid}")

        injections = AgentInjections(lambda pid: result(pid, 1), eject, lambda m: None)
        injections.add(child.pid)
        assert injections.wait(5)
        assert injections.close() == []
    finally:
        child.wait()


def test_each_debugger_run_is_kept_as_a_pause_of_its_target() -> None:
    def run(pid: int, started: float) -> InjectionResult:
        return InjectionResult(pid=pid, action="attach", method="gdb",
                               status={"apps": [{"app": "a", "state": "wrapped"}]},
                               seconds=0.9, debugger_seconds=0.5,
                               debugger_span=(started, started + 0.5))

    injections = AgentInjections(lambda pid: run(pid, 100.0), lambda pid: run(pid, 200.0),
                                 lambda m: None)
    injections.add(1)
    assert injections.wait(5)
    assert injections.pauses == [(100.0, 100.5)]
    assert injections.close() == []
    assert injections.pauses == [(100.0, 100.5), (200.0, 200.5)]  # the detach's run too


def test_a_failed_debugger_run_is_kept_as_a_pause_too() -> None:
    # The process was held while the debugger ran, whatever came of it (a timeout, a failure).
    def failing(kind: type[InjectionFailed], started: float) -> InjectionResult:
        failure = kind("no")
        failure.debugger_span = (started, started + 0.7)
        raise failure

    injections = AgentInjections(lambda pid: failing(InjectionTimeout, 10.0 * pid),
                                 lambda pid: failing(InjectionFailed, 100.0 + pid),
                                 lambda m: None)
    injections.add(1)
    injections.add(2)
    assert injections.wait(5)
    assert sorted(injections.pauses) == [(10.0, 10.7), (20.0, 20.7)]
    assert [f.pid for f in injections.close()] == [1, 2]
    assert sorted(injections.pauses)[2:] == [(101.0, 101.7), (102.0, 102.7)]


def test_a_loader_never_run_is_warned_of_with_where_the_main_thread_is() -> None:
    warnings: list[str] = []

    def never_run(pid: int) -> InjectionResult:
        raise InjectionTimeout(f"process {pid} did not run the agent's loader within 15 s")

    injections = AgentInjections(never_run, lambda pid: result(pid, 0), warnings.append,
                                 where=lambda pid: "`acquire` (lock.py:3)" if pid == 4 else None)
    injections.add(4)
    injections.add(5)
    assert injections.wait(5)
    assert sorted(warnings) == [
        "no latencies from pid 4 yet: process 4 did not run the agent's loader within 15 s."
        " Its main thread is at `acquire` (lock.py:3)",
        "no latencies from pid 5 yet: process 5 did not run the agent's loader within 15 s"]
    # Kept for the report, which is read after the warnings scrolled away.
    assert injections.missing == {
        4: "process 4 did not run the agent's loader within 15 s. Its main thread is at"
           " `acquire` (lock.py:3)",
        5: "process 5 did not run the agent's loader within 15 s"}
    log = FailureLog()
    log.no_agent(injections.missing)
    log.no_agent(injections.missing)  # told again at each store: news only once
    assert log.news() == [{"pid": 4, "no_agent": injections.missing[4]},
                          {"pid": 5, "no_agent": injections.missing[5]}]
    assert log.news() is None
    injections.close(grace=0.1)


def test_a_pending_injection_does_not_hold_the_end() -> None:
    release = threading.Event()
    warnings: list[str] = []

    def stuck(pid: int) -> InjectionResult:
        release.wait(10)
        raise InjectionTimeout("never ran")

    injections = AgentInjections(stuck, lambda pid: result(pid, 0), warnings.append)
    injections.add(9)
    assert injections.close(grace=0.1) == []
    assert any("still pending" in w and "apiscope detach 9" in w for w in warnings)
    release.set()


def test_the_orphan_watch_fires_once_after_the_pulls_stop() -> None:
    now = [0.0]
    fired: list[float] = []
    watch = OrphanWatch(lambda: fired.append(now[0]), seconds=10, clock=lambda: now[0])
    watch.start()
    now[0] = 5.0
    watch.saw_pull(3)  # the collector says 3 s
    now[0] = 7.5
    watch.check()
    assert not fired
    now[0] = 8.5
    watch.check()
    now[0] = 20.0
    watch.check()
    assert fired == [8.5] and watch.fired


def test_the_agent_server_thread_runs_the_orphan_check() -> None:
    # The check has no thread of its own: the agent's server calls it between requests.
    fired = threading.Event()
    directory = tempfile.mkdtemp(prefix="apiscope-test-")  # a short path: a Unix socket's
    server = AgentServer(f"{directory}/t.sock", lambda request: {"ok": True},
                         tick=fired.set, tick_every=0.05)
    server.start()
    try:
        assert fired.wait(2)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_the_orphan_watch_ignores_nonsense_timeouts() -> None:
    watch = OrphanWatch(lambda: None, seconds=10)
    for bad in (None, 0, -1, True, "5"):
        watch.saw_pull(bad)
    assert watch.seconds == 10


def test_a_second_collector_is_refused_naming_the_first(tmp_path: Path) -> None:
    first = CollectorLock([41, 42], str(tmp_path / "a.sqlite"), directory=str(tmp_path))
    first.acquire()
    second = CollectorLock([42], str(tmp_path / "b.sqlite"), directory=str(tmp_path))
    with pytest.raises(TargetBusy) as err:
        second.acquire()
    assert err.value.exit_code == 2 and isinstance(err.value, TargetError)
    assert f"apiscope PID {os.getpid()}" in err.value.message
    assert str(tmp_path / "a.sqlite") in err.value.message
    first.release()
    assert list(tmp_path.glob("*.lock")) == []
    with second:  # the first is gone: welcome
        pass


def test_sigterm_and_sighup_stop_like_ctrl_c() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        stopped = threading.Event()
        before = signal.getsignal(sig)
        with open(os.devnull, "w") as out, stop_on_signals(stopped.set, out=out):
            os.kill(os.getpid(), sig)
            os.kill(os.getpid(), sig)  # a second one is noted, not obeyed
            assert stopped.wait(2)
        assert signal.getsignal(sig) == before


def test_the_session_file_alone_holds_the_session_after_close(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with SessionWriter(path) as writer:
        writer.set_meta(start=1.0)
        writer.flush()
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='start'").fetchone() == ("1.0",)


def test_a_failed_write_stops_the_writer_and_says_why(tmp_path: Path) -> None:
    with SessionWriter(tmp_path / "s.sqlite") as writer:
        writer.set_meta(start=1.0)
        writer.flush()

        def full(conn: sqlite3.Connection) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        writer._submit(full)
        with pytest.raises(SessionWriteError) as err:
            writer.flush()
        assert "disk is full" in err.value.message and writer.failure is not None
        writer.set_meta(later=2)
        writer.close()
        assert writer.lost_jobs >= 2


def test_a_directory_is_no_session_path(tmp_path: Path) -> None:
    with pytest.raises(SessionPathError) as err:
        SessionWriter(tmp_path)
    assert err.value.exit_code == 2 and "is a directory" in err.value.message
