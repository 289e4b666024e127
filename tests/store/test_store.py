"""The session file: schema stamp, WAL, de-duplication, foreign files, and a killed writer."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

from apiscope.errors import SessionFileError
from apiscope.model import (
    Frame,
    ProfileNode,
    QueryStat,
    RequestRecord,
    ResourceSample,
    RouteInfo,
    SampleState,
    StackSample,
    StackWindow,
    StoredProfile,
    ThreadRole,
)
from apiscope.sessionmeta import SessionMeta
from apiscope.store import SCHEMA_VERSION, SessionReader, SessionWriter
from apiscope.store.reader import SampleFilter
from tests.support import wait_until

LOOP = (Frame("run_forever", "/usr/lib/python3.11/asyncio/base_events.py", 607),
        Frame("handler", "/app/main.py", 12))


def window(start: float, count: int = 3, state: SampleState = SampleState.RUNNING) -> StackWindow:
    sample = StackSample(10, 11, "MainThread", LOOP, count, state)
    return StackWindow(start, start + 1, 100, (sample,), threads={(10, 11): ThreadRole.LOOP})


def stored(path: Path, sql: str) -> object:
    """One value straight from the file, for what the format itself promises."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchone()[0]


def test_schema_version_wal_and_private_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with SessionWriter(path) as writer:
        writer.set_meta(command="uvicorn app:app")
        writer.flush()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert SessionReader(path).meta() == SessionMeta(command="uvicorn app:app")


def test_frames_and_stacks_are_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with SessionWriter(path) as writer:
        for i in range(5):
            writer.put_window(window(float(i)))
    reader = SessionReader(path)
    assert stored(path, "SELECT count(*) FROM frames") == 2
    assert stored(path, "SELECT count(*) FROM stacks") == 1
    rows = list(reader.samples())
    assert [start for start, _ in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(s.frames == LOOP and s.count == 3 for _, s in rows)
    assert reader.threads() == {(10, 11): ("MainThread", ThreadRole.LOOP)}


def test_sample_filter_slices_by_time_and_state(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with SessionWriter(path) as writer:
        writer.put_window(window(0.0, 2, SampleState.WAITING))
        writer.put_window(window(1.0, 5, SampleState.RUNNING))
        writer.put_window(window(2.0, 7, SampleState.BLOCKED))
    reader = SessionReader(path)
    flt = SampleFilter(since=1.0, states=frozenset({SampleState.RUNNING, SampleState.BLOCKED}))
    assert sum(s.count for _, s in reader.samples(flt)) == 12
    assert sum(s.count for _, s in reader.samples(SampleFilter(until=1.0))) == 2


def test_requests_round_trip_with_queries(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    query = QueryStat("SELECT * FROM lines WHERE order_id = ?", 12, 3.5, "/app/orders.py", 41)
    record = RequestRecord(10, 100.0, 12.5, "GET", "/orders/{order_id}", 200, queries=(query,))
    with SessionWriter(path) as writer:
        writer.put_requests([record])
        writer.put_resources([ResourceSample(100.0, 10, 12.0, 50_000_000, 4, 20)])
    reader = SessionReader(path)
    assert reader.requests(with_queries=True) == [record]
    assert [(r.query_count, r.query_ms) for r in reader.requests_after(0)] == [(12, 3.5)]
    assert reader.resources()[0].rss_bytes == 50_000_000


def test_a_request_kept_for_n_reads_as_n_requests(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    kept = RequestRecord(10, 100.0, 2.0, "GET", "/items", 200, weight=4)
    failed = RequestRecord(10, 100.5, 9.0, "GET", "/items", 500)
    with SessionWriter(path) as writer:
        writer.put_requests([kept, failed])
    with SessionReader(path) as reader:
        assert reader.requests() == [kept] * 4 + [failed]
        assert [r.weight for r in reader.requests_after(0)] == [4, 1]
    assert stored(path, "SELECT sum(weight) FROM requests") == 5


def test_a_session_written_before_weights_reads_every_request_once(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with SessionWriter(path) as writer:
        writer.put_requests([RequestRecord(10, 100.0 + i, 2.0, "GET", "/items", 200, weight=3)
                             for i in range(2)])
    conn = sqlite3.connect(path)  # as schema 2 wrote it: no weight column
    conn.execute("ALTER TABLE requests DROP COLUMN weight")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with SessionReader(path) as reader:
        assert [r.weight for r in reader.requests()] == [1, 1]
        assert [r.weight for r in reader.requests_after(0)] == [1, 1]


def test_a_streams_time_to_its_head_round_trips_and_older_files_have_none(
        tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    stream = RequestRecord(10, 100.0, 600.0, "GET", "/events", 200, first_byte_ms=3.5)
    whole = RequestRecord(10, 100.5, 9.0, "GET", "/items", 200)
    with SessionWriter(path) as writer:
        writer.put_requests([stream, whole])
    with SessionReader(path) as reader:
        assert reader.requests() == [stream, whole]
        assert [r.latency_ms for r in reader.requests()] == [3.5, 9.0]
    conn = sqlite3.connect(path)  # as schema 4 wrote it: no first_byte_ms column
    conn.execute("ALTER TABLE requests DROP COLUMN first_byte_ms")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    with SessionReader(path) as reader:
        assert [r.first_byte_ms for r in reader.requests()] == [None, None]


def test_foreign_and_missing_files_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(SessionFileError, match="no session file"):
        SessionReader(tmp_path / "missing.sqlite")
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, just some text " * 100)
    with pytest.raises(SessionFileError, match="not an apiscope session"):
        SessionReader(text)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)")
    with pytest.raises(SessionFileError, match="not an apiscope session"):
        SessionReader(other)


def test_reader_sees_batches_while_the_writer_runs(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with SessionWriter(path) as writer:
        writer.put_window(window(0.0))
        writer.flush()
        reader = SessionReader(path)
        assert len(reader.windows()) == 1
        writer.put_window(window(1.0))
        writer.flush()
        assert len(reader.windows()) == 2


def test_committed_data_survives_a_killed_collector(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    marker = tmp_path / "flushed"
    script = textwrap.dedent(f"""
        import time
        from apiscope.model import RequestRecord
        from apiscope.store import SessionWriter
        w = SessionWriter({str(path)!r})
        w.put_requests([RequestRecord(1, float(i), 1.0, "GET", "/x", 200) for i in range(100)])
        w.flush()
        open({str(marker)!r}, "w").close()
        i = 0
        while True:  # keep writing until killed
            w.put_requests([RequestRecord(1, 1000.0 + i, 1.0, "GET", "/x", 200)])
            i += 1
            time.sleep(0.001)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_until(marker.exists, timeout=30, what="the writer to commit its first batch")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert len(SessionReader(path).requests()) >= 100
    assert stored(path, "PRAGMA integrity_check") == "ok"


def test_sample_totals_sum_windows_per_thread_stack_and_state(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with SessionWriter(path) as writer:
        writer.put_window(window(0.0, 2, SampleState.WAITING))
        writer.put_window(window(1.0, 5))
        writer.put_window(window(2.0, 7))
    reader = SessionReader(path)
    totals = {s.state: s.count for s in reader.sample_totals()}
    assert totals == {SampleState.WAITING: 2, SampleState.RUNNING: 12}
    assert [s.count for s in reader.sample_totals(SampleFilter(since=2.0))] == [7]


def test_profile_trees_round_trip_compressed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    tree = {"function": "quote", "file": "/app/q.py", "line": 24, "time_ms": 250.0,
            "await_ms": 248.0, "children": [{"function": "fetch", "children": []}] * 50}
    with SessionWriter(path) as writer:
        writer.put_profile(10, 1.0, "GET", "/items/{item_id}/quote", 251.0, tree)
    reader = SessionReader(path)
    fetch = ProfileNode("fetch", "", 0, 0.0, 0.0)  # what the agent left out reads as empty
    assert reader.profiles("/items/{item_id}/quote")[0].tree == ProfileNode(
        "quote", "/app/q.py", 24, 250.0, 248.0, (fetch,) * 50)
    assert stored(path, "SELECT length(tree) FROM profiles") < len(json.dumps(tree)) / 4


def test_profile_trees_are_typed_once_read_and_stored_as_the_agent_sent_them(
        tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    leaf = {"function": "sleep", "file": "/usr/lib/python3.12/asyncio/tasks.py", "line": 665,
            "time_ms": 80.0, "await_ms": 80.0, "children": []}
    tree = {"function": "GET /q", "file": "", "line": 0, "time_ms": 81.0, "await_ms": 0.0,
            "children": [leaf]}
    node = ProfileNode.from_json(tree)
    assert node.to_json() == tree and [n.function for n in node.walk()] == ["GET /q", "sleep"]
    with SessionWriter(path) as writer:
        writer.put_profile(10, 1.0, "GET", "/q", 81.0, node)
        writer.put_profile(10, 2.0, "GET", "/q", 81.0, tree)
        writer.put_profile(10, 3.0, "GET", "/q", 81.0, None)
    trees = [p.tree for p in SessionReader(path).profiles("/q")]
    assert trees == [node, node, None]


def test_profiles_read_back_typed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    leaf = ProfileNode("sleep", "/usr/lib/python3.12/asyncio/tasks.py", 665, 80.0, 80.0)
    tree = ProfileNode("GET /q", "", 0, 81.0, 0.0, (leaf,))
    with SessionWriter(path) as writer:
        writer.put_profile(11, 2.5, "POST", "/r", 12.0, None)
        writer.put_profile(10, 1.5, "GET", "/q", 81.0, tree)
    with SessionReader(path) as reader:
        profiles = reader.profiles()
        assert reader.profiles("/r") == [StoredProfile(11, 2.5, "POST", "/r", 12.0, None)]
    assert profiles == [StoredProfile(10, 1.5, "GET", "/q", 81.0, tree),
                        StoredProfile(11, 2.5, "POST", "/r", 12.0, None)]
    assert all(isinstance(p, StoredProfile) for p in profiles)
    assert isinstance(profiles[0].tree, ProfileNode) and profiles[0].endpoint == "GET /q"


def test_a_routes_view_round_trips_and_older_files_have_none(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    inherited = RouteInfo("GET", "/tickets/", "rest_framework.mixins:ListModelMixin.list",
                          "/venv/rest_framework/mixins.py", 38, False,
                          "desk.views:TicketViewSet", "/srv/desk/views.py", 80)
    own = RouteInfo("GET", "/health", "desk.views:health", "/srv/desk/views.py", 10, True)
    with SessionWriter(path) as writer:
        writer.put_routes(10, [inherited, own])
    with SessionReader(path) as reader:
        assert reader.routes() == [own, inherited]
    conn = sqlite3.connect(path)  # as schema 6 wrote it: no view columns
    for column in ("view", "view_file", "view_line"):
        conn.execute(f"ALTER TABLE routes DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 6")
    conn.commit()
    conn.close()
    with SessionReader(path) as reader:
        assert [r.view for r in reader.routes()] == ["", ""]


def test_a_threads_role_shown_once_is_kept_through_windows_that_show_nothing(
        tmp_path: Path) -> None:
    # A recycled gunicorn worker: its main thread runs the event loop, then the worker's
    # shutdown, where no loop frame is on its stack. It served requests all the same.
    shutdown = (Frame("run", "/srv/venv/lib/python3.11/site-packages/gunicorn/workers/base.py",
                      142),)

    def seen(start: float, tid: int, frames: tuple[Frame, ...], role: ThreadRole,
             name: str = "MainThread") -> StackWindow:
        return StackWindow(start, start + 1.0, 100,
                           (StackSample(7, tid, name, frames, 3, SampleState.RUNNING),),
                           threads={(7, tid): role})

    path = tmp_path / "s.sqlite"
    with SessionWriter(path) as writer:
        writer.put_window(seen(1.0, 1, LOOP, ThreadRole.LOOP))
        writer.put_window(seen(2.0, 1, shutdown, ThreadRole.OTHER))
        writer.put_window(seen(0.0, 3, shutdown, ThreadRole.OTHER))  # a worker booting
        writer.put_window(seen(1.0, 3, LOOP, ThreadRole.LOOP))
        writer.put_window(seen(0.0, 2, shutdown, ThreadRole.OTHER, "Thread-2"))
        writer.put_window(seen(1.0, 2, shutdown, ThreadRole.OTHER, "renamed"))
    with SessionReader(path) as reader:
        assert reader.threads() == {(7, 1): ("MainThread", ThreadRole.LOOP),
                                    (7, 2): ("renamed", ThreadRole.OTHER),
                                    (7, 3): ("MainThread", ThreadRole.LOOP)}
