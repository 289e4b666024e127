"""StackSampler against real servers: real uvicorn and gunicorn processes, real py-spy."""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from apiscope.collectors.pyspy import (
    RecordOptions,
    find_pyspy,
    main_thread_site,
    parse_summary,
    record_argv,
)
from apiscope.collectors.samplerstats import LOG_DELAY, EndReason
from apiscope.collectors.spy import PopenSpy
from apiscope.collectors.stacks import StackSampler
from apiscope.errors import TargetError
from apiscope.model import Frame, SampleState, StackWindow, ThreadRole
from tests.support import (
    free_port,
    require_program,
    require_ptrace,
    run_server,
    uvicorn_argv,
    wait_until,
)

pytestmark = pytest.mark.integration

APP = '''\
import time

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def hello():
    return {"hello": "world"}


@app.get("/sleepy")
async def sleepy():
    time.sleep(0.03)  # SLEEP_LINE: blocks the event loop
    return {"slept": True}


@app.get("/sync")
def sync_work():
    total = 0
    for i in range(200_000):  # SYNC_LINE
        total += i
    return {"total": total}
'''


def line_of(marker: str) -> int:
    return next(i for i, text in enumerate(APP.splitlines(), 1) if marker in text)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


class Windows:
    """Collects windows from the sampler thread, with their arrival times."""

    def __init__(self) -> None:
        self.items: list[StackWindow] = []
        self.arrivals: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, window: StackWindow) -> None:
        with self._lock:
            self.items.append(window)
            self.arrivals.append(time.monotonic())

    def snapshot(self) -> list[StackWindow]:
        with self._lock:
            return list(self.items)


@contextmanager
def load(base_url: str, paths: Sequence[str], clients: int = 2) -> Iterator[None]:
    """A bounded load: `clients` sequential clients on 127.0.0.1 until the block ends."""
    stop = threading.Event()

    def client(offset: int) -> None:
        n = offset
        while not stop.is_set():
            try:
                with urllib.request.urlopen(base_url + paths[n % len(paths)], timeout=10):
                    pass
            except OSError:
                pass  # the server may be going away at the end of a test
            n += 1

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for w in workers:
        w.start()
    try:
        yield
    finally:
        stop.set()
        for w in workers:
            w.join(15)


def test_uvicorn_windows_roles_and_states(app_dir: Path) -> None:
    require_ptrace()
    port = free_port()
    windows = Windows()
    sleep_leaf = Frame("sleepy", str(app_dir / "app.py"), line_of("SLEEP_LINE"))
    with run_server(uvicorn_argv("app:app", port), port, cwd=app_dir) as server, \
            load(server.url, ["/sleepy", "/sync", "/"]):
        sampler = StackSampler(server.pid, on_window=windows, window_seconds=1.0)
        started = time.monotonic()
        sampler.start()
        try:
            def blocked_sleep_seen() -> bool:
                return any(s.state is SampleState.BLOCKED and s.frames[-1] == sleep_leaf
                           for w in windows.snapshot() for s in w.samples if s.frames)

            wait_until(lambda: len(windows.snapshot()) >= 4, timeout=60, what="four windows")
            wait_until(blocked_sleep_seen, timeout=30, what="the sleep measured off-CPU")
        finally:
            sampler.stop()
    got = windows.snapshot()
    assert sampler.end_reason is EndReason.STOPPED, sampler.error
    # Data within a couple of seconds, then one window about every second, back to back.
    # (Bounds loose enough for a loaded machine: py-spy's start-up then takes longer.)
    assert windows.arrivals[0] - started < 10
    intervals = [b - a for a, b in zip(windows.arrivals, windows.arrivals[1:], strict=False)]
    assert statistics.median(intervals) < 4
    for before, after in zip(got, got[1:], strict=False):
        assert after.start <= before.end
    loop = (server.pid, server.pid)
    # (A window cut short by stop() may hold no sample of a thread.)
    loop_roles = [w.threads[loop] for w in got if loop in w.threads]
    assert loop_roles and set(loop_roles) == {ThreadRole.LOOP}
    samples = [s for w in got for s in w.samples]
    # py-spy shows time.sleep (C) as the handler's own frame at the call line, on the loop.
    sleeping = [s for s in samples if s.frames and s.frames[-1] == sleep_leaf]
    assert sleeping, "time.sleep inside the async handler never showed"
    assert all((s.pid, s.tid) == loop for s in sleeping)
    assert all(s.state is not SampleState.WAITING for s in sleeping)
    # The kernel says the loop thread used (almost) no CPU while it slept there: the edges
    # of each 30 ms sleep, matched to readings 25 ms apart, are all that may show as running.
    on_cpu = sum(s.count for s in sleeping if s.state is SampleState.RUNNING)
    by_state = {st: sum(s.count for s in sleeping if s.state is st) for st in SampleState}
    assert on_cpu <= 0.2 * sum(s.count for s in sleeping), by_state
    roles = {key: role for w in got for key, role in w.threads.items()}
    sync = [s for s in samples if s.frames and s.frames[-1].function == "sync_work"]
    assert sync and all(roles[(s.pid, s.tid)] is ThreadRole.WORKER for s in sync)
    assert all(s.state is not SampleState.WAITING for s in sync)
    # ... and that the pool thread computing in sync_work was on a CPU, or waiting for a free
    # one on a busy machine, more often (not always: it also waits for the GIL).
    ran = sum(s.count for s in sync if s.state in (SampleState.RUNNING, SampleState.RUNNABLE))
    slept_running = on_cpu / sum(s.count for s in sleeping)
    sync_states = {st: sum(s.count for s in sync if s.state is st) for st in SampleState}
    assert ran / sum(s.count for s in sync) > slept_running + 0.05, sync_states
    # Every window carries the kernel's CPU time of the threads it sampled.
    assert all(w.thread_cpu for w in got if w.samples)
    assert sampler.stats.stored > 0 and sampler.stats.failed_windows == 0


def test_gunicorn_master_yields_samples_from_both_workers(app_dir: Path) -> None:
    require_ptrace()
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "app:app", "-k", "uvicorn.workers.UvicornWorker",
            "-w", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning"]
    windows = Windows()
    with run_server(argv, port, cwd=app_dir) as server:
        master = psutil.Process(server.pid)
        wait_until(lambda: len(master.children()) == 2, timeout=30, what="two gunicorn workers")
        workers = {c.pid for c in master.children()}
        sampler = StackSampler(server.pid, on_window=windows, window_seconds=1.0,
                               subprocesses=True)
        sampler.start()
        try:
            def main_threads_seen() -> set[int]:
                return {s.pid for w in windows.snapshot() for s in w.samples if s.pid == s.tid}

            wait_until(lambda: workers | {server.pid} <= main_threads_seen(), timeout=60,
                       what="the master and both workers")
        finally:
            sampler.stop()
    roles = {key: role for w in windows.snapshot() for key, role in w.threads.items()}
    for pid in workers:
        assert roles[(pid, pid)] is ThreadRole.LOOP
    assert roles[(server.pid, server.pid)] is ThreadRole.OTHER  # the arbiter


def test_target_exit_ends_the_sampler_cleanly(app_dir: Path) -> None:
    require_ptrace()
    port = free_port()
    windows = Windows()
    ends: list[EndReason] = []
    with run_server(uvicorn_argv("app:app", port), port, cwd=app_dir) as server:
        sampler = StackSampler(server.pid, on_window=windows, window_seconds=1.0,
                               on_end=lambda reason, error: ends.append(reason))
        sampler.start()
        wait_until(lambda: windows.snapshot(), timeout=30, what="a first window")
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        assert sampler.wait(30), "the sampler did not notice the target exit"
    assert sampler.end_reason is EndReason.TARGET_EXITED
    assert sampler.error is None and ends == [EndReason.TARGET_EXITED]
    assert not sampler.running


def hold_with_gdb(pid: int, seconds: float) -> tuple[float, float]:
    """Stop `pid` under gdb for `seconds`; return when the hold began and ended.

    py-spy in blocking mode traces the process for each sample, and the kernel refuses a
    second tracer: gdb's attach then fails at once ("ptrace: Operation not permitted") and
    nothing is held. Try again, as the injector does, until gdb has held the process."""
    for _ in range(50):
        began = time.time()
        run = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", f"shell sleep {seconds}"],
                             capture_output=True, text=True, timeout=60, check=False)
        ended = time.time()
        if "ptrace: Operation not permitted" not in run.stdout + run.stderr:
            return began, ended
        time.sleep(0.02)
    raise AssertionError("gdb could not attach while py-spy was sampling: " + run.stderr)


def test_py_spys_failed_reads_are_timed_within_a_debuggers_hold(app_dir: Path) -> None:
    """A real py-spy record while gdb holds the server: its reads fail for that long, each one
    logged with its time, all of them inside gdb's run (what tells the injection's pauses from
    the sampler's own failures), and none of those lines is left in what py-spy said."""
    require_ptrace()
    require_program("gdb")
    port = free_port()
    with run_server(uvicorn_argv("app:app", port), port, cwd=app_dir) as server:
        output = app_dir / "window.json"
        argv = record_argv(find_pyspy(), server.pid, str(output), RecordOptions(rate_hz=100),
                           duration=30)
        spy = PopenSpy(argv)
        assert spy.wait_ready(30)
        time.sleep(0.3)
        held_from, held_to = hold_with_gdb(server.pid, seconds=0.5)
        time.sleep(0.3)
        spy.interrupt()
        result = spy.finish(30)
    summary = parse_summary(result.stdout)
    assert summary is not None and summary.errors >= 20, result.stdout
    assert len(result.failed_at) == summary.errors
    # (py-spy logs a failure from another thread than the one that read: a moment later)
    assert all(held_from <= t <= held_to + LOG_DELAY for t in result.failed_at), (
        held_from, held_to, result.failed_at)
    assert "Failed to get stack trace" not in result.stderr


STUCK_IN_STARTUP = """
import contextlib, threading
lock = threading.Lock()

@contextlib.contextmanager
def lifespan():
    lock.acquire()
    print("starting", flush=True)
    with lock:  # taken already: waits for ever, as an import lock a fork inherited taken does
        yield

with lifespan():
    pass
"""


def test_where_a_main_thread_that_runs_no_loader_is_stuck(tmp_path: Path) -> None:
    # A worker stuck in its startup never runs the agent's loader; the warning says where.
    require_ptrace()
    script = tmp_path / "worker.py"
    script.write_text(STUCK_IN_STARTUP)
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                          text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "starting\n"
            time.sleep(0.2)  # into the second take
            site = main_thread_site(proc.pid)
        finally:
            proc.kill()
    assert site == (f"`lifespan` ({script}:9), in the app's lifespan startup: it serves no"
                    " request until that returns")
    assert main_thread_site(proc.pid) is None  # gone: nothing to say


def test_a_pid_that_does_not_exist_is_a_target_error() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    sampler = StackSampler(proc.pid, on_window=lambda w: None)
    with pytest.raises(TargetError):
        sampler.start()


def test_permission_denied_names_the_ptrace_fixes(app_dir: Path) -> None:
    # A real refusal: py-spy run as `nobody` against a server of ours.
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run py-spy as an unprivileged user")
    port = free_port()

    def as_nobody(argv: Sequence[str]) -> PopenSpy:
        return PopenSpy([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv])

    with run_server(uvicorn_argv("app:app", port), port, cwd=app_dir) as server:
        sampler = StackSampler(server.pid, on_window=lambda w: None, spawn=as_nobody)
        with pytest.raises(TargetError) as info:
            sampler.start()
    assert info.value.exit_code == 2
    for fix in ("kernel.yama.ptrace_scope", "CAP_SYS_PTRACE", "--cap-add SYS_PTRACE"):
        assert fix in info.value.message
