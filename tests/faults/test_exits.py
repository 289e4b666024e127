"""Every way out of a collection detaches every agent it injected, in every worker ever seen:
SIGTERM, SIGHUP and Ctrl-C end it as the duration does (last window flushed, report written,
exit 0), also while gunicorn recycles its workers (`--max-requests`) and after a `kill -HUP`
of the master, whose new workers start after the attach."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from tests.faults.harness import (
    assert_clean,
    drive,
    drive_counting,
    finish,
    gunicorn_server,
    make_place,
    session_meta,
    start_collector,
    uvicorn_server,
    wait_for_agents,
    wait_for_worker_agents,
    workers,
)
from tests.support import require_ptrace, wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_signal_ends_the_session_like_ctrl_c(tmp_path: Path, sig: signal.Signals) -> None:
    require_ptrace()
    place = make_place(tmp_path)
    session, report = tmp_path / "s.sqlite", tmp_path / "r.json"
    with uvicorn_server(place) as (server, url):
        proc = start_collector(place, "attach", str(server.pid), "--no-dashboard", "--rate",
                               "50", "--session", str(session), "--report", str(report))
        wait_for_agents([server.pid], place, proc)
        assert drive(url, 40) == (40, 0)
        code, err = finish(proc, sig)
        assert code == 0, err
        assert f"{sig.name} received: stopping" in err and "Traceback" not in err
        assert json.loads(report.read_text())["apiscope_report"] == 1
        meta = session_meta(session)
        assert meta.end and not meta.detach_failed
        with_agent = sum(e["count"] for e in json.loads(report.read_text())["endpoints"])
        assert with_agent == 40  # the last window's requests were flushed
        assert_clean([server.pid], place)
        assert place.leftovers() == []


def test_workers_born_during_the_attach_are_detached_too(tmp_path: Path) -> None:
    """Recycled workers (--max-requests) and the workers of a HUP all get the agent while the
    attach runs, and none keeps it after a SIGTERM; no request fails throughout."""
    require_ptrace()
    place = make_place(tmp_path)
    session = tmp_path / "s.sqlite"
    with gunicorn_server(place, "--max-requests", "30") as (master, url), \
            watching_workers(master.pid) as seen:
        proc = start_collector(place, "attach", str(master.pid), "--no-dashboard", "--rate",
                               "20", "--session", str(session))
        first = workers(master.pid)
        wait_for_agents(first, place, proc)
        # Recycles each worker at least once. gunicorn drops a connection now and then as a
        # worker recycles, apiscope or not (1-2 in 90 here without it): only HTTP answers
        # count in this phase; none may be an error.
        ok, failed, _dropped = drive_counting(url, 90)
        wait_until(lambda: set(workers(master.pid)) - set(first), timeout=30,
                   what="a worker to recycle")
        wait_for_worker_agents(master.pid, place, proc)  # injected early in their life
        before = set(workers(master.pid))
        os.kill(master.pid, signal.SIGHUP)
        wait_until(lambda: not (set(workers(master.pid)) & before) and len(
            workers(master.pid)) == 2, timeout=30, what="the workers of the HUP")
        wait_for_worker_agents(master.pid, place, proc)  # a late app load was picked up
        ok2, failed2 = drive(url, 20)
        code, err = finish(proc, signal.SIGTERM)
        assert code == 0, err
        assert (failed, failed2) == (0, 0) and ok2 == 20 and ok + _dropped == 90
        assert "serves no ASGI app" not in err and "Traceback" not in err
        assert len(seen) >= 5  # two at start, one or more recycled, two of the HUP
        assert_clean(sorted(seen), place)
        assert place.leftovers() == []


def sampled_resources(session: Path, pid: int) -> bool:
    """Whether the session being written holds a resource sample of `pid` yet."""
    try:
        with closing(sqlite3.connect(f"file:{session}?mode=ro", uri=True)) as db:
            return db.execute("SELECT 1 FROM resources WHERE pid = ? LIMIT 1",
                              (pid,)).fetchone() is not None
    except sqlite3.Error:  # not created yet
        return False


@contextmanager
def watching_workers(master: int) -> Iterator[set[int]]:
    """Every worker of `master` seen while the block runs (polled every 20 ms)."""
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            seen.update(workers(master))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


def test_a_worker_that_dies_during_the_session_is_named_with_when(tmp_path: Path) -> None:
    """A worker gone in the middle of a session (killed here, as a segmentation fault in a C
    extension or the out-of-memory killer would) is in the report with the moment it exited,
    and said at the end: a server whose workers crash under load must not look healthy."""
    require_ptrace()
    place = make_place(tmp_path)
    session, report = tmp_path / "s.sqlite", tmp_path / "r.json"
    with gunicorn_server(place) as (master, url):
        proc = start_collector(place, "attach", str(master.pid), "--no-dashboard", "--rate",
                               "20", "--session", str(session), "--report", str(report))
        first = workers(master.pid)
        wait_for_agents(first, place, proc)
        drive(url, 20)
        victim, survivor = first
        # Its resources sampled (once a second) before it dies: a report lists the processes
        # it has figures for; the warning at the end names any that exited.
        wait_until(lambda: sampled_resources(session, victim), timeout=30,
                   what="a resource sample of the worker")
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in workers(master.pid) and len(workers(master.pid)) == 2,
                   timeout=30, what="gunicorn to replace the killed worker")
        wait_for_worker_agents(master.pid, place, proc)
        drive(url, 20)
        code, err = finish(proc, signal.SIGTERM)
    assert code == 0, err
    processes = {p["pid"]: p for p in json.loads(report.read_text())["processes"]}
    assert processes[victim]["exited_after_seconds"] > 0
    assert processes[survivor]["exited_after_seconds"] is None
    assert f"pid {victim} exited" in err and f"pid {survivor} exited" not in err
    assert "Traceback" not in err
