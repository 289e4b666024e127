"""The session writer: one thread owns the connection and commits in batches.

Collectors call the `put_*` methods from any thread; each call only enqueues. The writer thread
drains the queue and commits one transaction per batch, so a reader (the dashboard) sees whole
batches, and a killed collector leaves every committed batch intact (WAL mode).

The write-ahead log is checkpointed into the main file every few seconds and truncated at
`close()`: a session copied as its `.sqlite` file alone (without `-wal`) holds all but the last
seconds even after a `kill -9`, and everything after a clean end. A write that fails (disk
full, file system turned read-only) stops the writer for good: later rows are counted as lost
rather than written around a hole, `failure` says why, and what was committed stays readable.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from apiscope.agent.queries import is_connection
from apiscope.errors import ApiscopeError, UsageError
from apiscope.flag import Flag, metric_to_json
from apiscope.model import (
    AgentStats,
    Frame,
    GilSample,
    LoopLagSample,
    LoopStall,
    OffloadLooks,
    ProcessInfo,
    ProfileNode,
    RequestRecord,
    ResourceSample,
    RouteInfo,
    StackWindow,
    ThreadPoolSample,
    ThreadRole,
    ThreadSpan,
    UnfinishedRequest,
)
from apiscope.store import schema

Job = Callable[[sqlite3.Connection], object]
_STOP = object()
CHECKPOINT_SECONDS = 2.0
_OTHER = ThreadRole.OTHER.value


class SessionWriteError(ApiscopeError):
    """The session file could not be written any more (disk full, read-only): exit 1, the
    rows committed before stay readable."""

    exit_code = 1


class SessionPathError(UsageError):
    """The session path cannot hold a session (a directory, read-only, not SQLite): exit 2."""


def open_error(path: Path, exc: BaseException) -> SessionPathError:
    """The user-facing error for a session path that cannot be opened for writing."""
    if path.is_dir():
        return SessionPathError(f"--session {path} is a directory: give a file path, such as"
                                f" {path / 'session.sqlite'}")
    detail = getattr(exc, "strerror", None) or str(exc)
    return SessionPathError(f"cannot write the session file {path}: {detail}. Give a --session"
                            " path in a writable directory with free space")


class SessionWriter:
    """Writes one session file. Thread-safe; call `close()` to flush and stop."""

    def __init__(self, path: str | os.PathLike[str], *, batch_seconds: float = 0.25) -> None:
        self.path = Path(path)
        self._batch_seconds = batch_seconds
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._frame_ids: dict[Frame, int] = {}
        self._stack_ids: dict[tuple[int, ...], int] = {}
        self._statement_ids: dict[str, int] = {}
        self._threads: dict[tuple[int, int], tuple[str, str]] = {}  # (name, role) as written
        self._error: BaseException | None = None
        self._flushed = threading.Condition()
        self._pending = 0
        self.lost_jobs = 0  # enqueued after a failure: never written
        self.committed_samples = 0  # what the file holds, for summaries that must not lie
        self.committed_requests = 0
        self.request_cpu = 0.0  # CPU seconds of this writer's thread spent storing requests
        try:
            conn = self._open()
        except (OSError, sqlite3.Error) as exc:
            raise open_error(self.path, exc) from None
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="apiscope-session-writer", daemon=True
        )
        self._thread.start()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The session may hold file paths and SQL of the target: private to the user.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            schema.create(conn)
        return conn

    # -- the public, enqueue-only API -------------------------------------------------------

    def set_meta(self, **values: Any) -> None:
        rows = [(key, json.dumps(value)) for key, value in values.items()]
        self._submit(lambda c: c.executemany("REPLACE INTO meta VALUES (?, ?)", rows))

    def put_process(self, info: ProcessInfo) -> None:
        row = (info.pid, info.ppid, info.role, info.command, info.first_seen, info.exited_at)
        self._submit(lambda c: c.execute("REPLACE INTO processes VALUES (?, ?, ?, ?, ?, ?)", row))

    def mark_exited(self, pid: int, ts: float) -> None:
        self._submit(
            lambda c: c.execute("UPDATE processes SET exited_at = ? WHERE pid = ?", (ts, pid))
        )

    def put_window(self, window: StackWindow) -> None:
        self._submit(lambda c: self._write_window(c, window),
                     samples=sum(s.count for s in window.samples))

    def put_routes(self, pid: int, routes: Iterable[RouteInfo]) -> None:
        rows = [
            (pid, r.method, r.template, r.handler, r.file, r.line, int(r.is_async),
             r.view or None, r.view_file or None, r.view_line or None) for r in routes
        ]
        self._submit(lambda c: c.executemany("REPLACE INTO routes VALUES (?,?,?,?,?,?,?,?,?,?)",
                                             rows))

    def put_requests(self, records: Iterable[RequestRecord]) -> None:
        batch = list(records)
        if batch:
            self._submit(lambda c: self._write_requests(c, batch), requests=len(batch))

    def put_resources(self, samples: Iterable[ResourceSample]) -> None:
        rows = [
            (s.ts, s.pid, s.cpu_percent, s.rss_bytes, s.threads, s.fds, s.connections,
             s.ctx_voluntary, s.ctx_involuntary, s.read_bytes, s.write_bytes)
            for s in samples
        ]
        self._submit(
            lambda c: c.executemany("INSERT INTO resources VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        )

    def put_threadpool(self, samples: Iterable[ThreadPoolSample]) -> None:
        rows = [(s.ts, s.pid, s.total_tokens, s.borrowed_tokens, s.waiting) for s in samples]
        self._submit(lambda c: c.executemany("INSERT INTO threadpool VALUES (?,?,?,?,?)", rows))

    def put_agent_stats(self, stats: AgentStats) -> None:
        row = (stats.ts, stats.pid, stats.recorded, stats.dropped, stats.errors)
        self._submit(lambda c: c.execute("INSERT INTO agent_stats VALUES (?,?,?,?,?)", row))

    def put_profile(self, pid: int, start: float, method: str, route: str,
                    duration_ms: float, tree: ProfileNode | dict[str, Any] | None) -> None:
        """Store one profile; its tree is stored in the agent's JSON shape (a tree as JSON is
        stored as it is)."""
        data = tree.to_json() if isinstance(tree, ProfileNode) else tree
        # Call trees are the bulkiest rows and compress about five to one.
        row = (pid, start, method, route, duration_ms,
               zlib.compress(json.dumps(data, separators=(",", ":")).encode()))
        self._submit(
            lambda c: c.execute(
                "INSERT INTO profiles (pid, start, method, route, duration_ms, tree)"
                " VALUES (?,?,?,?,?,?)", row)
        )

    def put_loop_stalls(self, stalls: Iterable[LoopStall]) -> None:
        batch = list(stalls)
        if batch:
            self._submit(lambda c: c.executemany(
                "INSERT INTO loop_stalls VALUES (?,?,?,?,?,?,?,?,?)",
                [(s.pid, s.tid, s.start, s.duration_ms, self._stack_id(c, s.frames), s.cpu_ms,
                  json.dumps(s.activity) if s.activity else None, s.held, s.route)
                 for s in batch]))

    def put_unfinished(self, requests: Iterable[UnfinishedRequest]) -> None:
        batch = list(requests)
        if batch:
            self._submit(lambda c: c.executemany(
                "INSERT INTO unfinished VALUES (?,?,?,?,?,?,?,?)",
                [(u.pid, u.ts, u.method, u.route, u.elapsed_ms, u.awaiting,
                  self._stack_id(c, u.chain), self._stack_id(c, u.thread)) for u in batch]))

    def put_loop_lag(self, samples: Iterable[LoopLagSample]) -> None:
        rows = [(s.ts, s.pid, s.probes, s.p50_ms, s.p99_ms, s.max_ms) for s in samples]
        if rows:
            self._submit(lambda c: c.executemany("INSERT INTO loop_lag VALUES (?,?,?,?,?,?)",
                                                 rows))

    def put_offloaded(self, looks: Iterable[OffloadLooks]) -> None:
        rows = [(o.ts, o.pid, o.endpoint, o.looks, o.cpu) for o in looks]
        if rows:
            self._submit(lambda c: c.executemany(
                "INSERT INTO offloaded (ts, pid, endpoint, looks, cpu) VALUES (?,?,?,?,?)", rows))

    def put_thread_spans(self, spans: Iterable[ThreadSpan]) -> None:
        rows = [(s.pid, s.tid, s.endpoint, s.start, s.end, s.requests) for s in spans]
        if rows:
            self._submit(lambda c: c.executemany(
                "INSERT INTO thread_spans (pid, tid, endpoint, start, end, requests)"
                " VALUES (?,?,?,?,?,?)", rows))

    def put_gil(self, samples: Iterable[GilSample]) -> None:
        rows = [(s.ts, s.pid, s.seconds, s.wait_seconds, s.acquisitions, s.max_wait_ms,
                 int(s.runqueue_known)) for s in samples]
        if rows:
            self._submit(lambda c: c.executemany("INSERT INTO gil_wait VALUES (?,?,?,?,?,?,?)",
                                                 rows))

    def replace_flags(self, flags: Iterable[Flag]) -> None:
        """Store `flags` in place of the session's flags (one column per location field, the
        metric as its JSON object), and note that they were (meta `flags_stored`: a session
        with none stored may not have been analysed yet)."""
        rows = []
        for f in flags:
            loc = f.location
            rows.append((f.kind, f.severity, f.route, loc.file if loc else None,
                         loc.line if loc else None, loc.function if loc else None, f.evidence,
                         json.dumps(metric_to_json(f.metric)), f.suggestion))

        def job(c: sqlite3.Connection) -> None:
            c.execute("REPLACE INTO meta VALUES ('flags_stored', 'true')")
            c.execute("DELETE FROM flags")
            c.executemany(
                "INSERT INTO flags (kind, severity, route, file, line, function, evidence,"
                " metric, suggestion) VALUES (?,?,?,?,?,?,?,?,?)", rows)

        self._submit(job)

    @property
    def failure(self) -> str | None:
        """Why the session can no longer be written, or None while it can."""
        return None if self._error is None else describe_failure(self._error)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything enqueued so far is committed."""
        with self._flushed:
            self._flushed.wait_for(lambda: self._pending == 0 or self._error is not None, timeout)
        if self._error is not None:
            raise SessionWriteError(f"the session file {self.path} could not be written:"
                                    f" {self.failure}; what was written before is kept")

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread ------------------------------------------------------------------

    def _submit(self, job: Job, samples: int = 0, requests: int = 0) -> None:
        with self._flushed:
            self._pending += 1
        self._queue.put((job, samples, requests))

    def _run(self, conn: sqlite3.Connection) -> None:
        stop = False
        next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
        while not stop:
            jobs = [self._queue.get()]
            # Gather what arrives within the batch interval into one transaction.
            deadline = time.monotonic() + self._batch_seconds
            while jobs[-1] is not _STOP and len(jobs) < 500:
                try:
                    jobs.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            stop = jobs[-1] is _STOP
            real = [job for job in jobs if job is not _STOP]
            self._commit(conn, real)
            with self._flushed:
                self._pending -= len(real)
                self._flushed.notify_all()
            if self._error is None and (stop or time.monotonic() >= next_checkpoint):
                next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
                _checkpoint(conn, "TRUNCATE" if stop else "PASSIVE")
        conn.close()

    def _commit(self, conn: sqlite3.Connection, jobs: list[tuple[Job, int, int]]) -> None:
        if self._error is not None:
            self.lost_jobs += len(jobs)  # nothing is written after a failure: no holes
            return
        try:
            conn.execute("BEGIN")
            for job, _, _ in jobs:
                job(conn)
            conn.execute("COMMIT")
        except BaseException as exc:  # keep what was committed; report on flush
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolls back by itself on a full disk
            self._error = exc
            self.lost_jobs += len(jobs)
            return
        self.committed_samples += sum(samples for _, samples, _ in jobs)
        self.committed_requests += sum(requests for _, _, requests in jobs)

    def _frame_id(self, c: sqlite3.Connection, frame: Frame) -> int:
        fid = self._frame_ids.get(frame)
        if fid is None:
            c.execute("INSERT OR IGNORE INTO frames (function, file, line) VALUES (?, ?, ?)",
                      (frame.function, frame.file, frame.line))
            fid = c.execute("SELECT id FROM frames WHERE function = ? AND file = ? AND line = ?",
                            (frame.function, frame.file, frame.line)).fetchone()[0]
            self._frame_ids[frame] = fid
        return fid

    def _stack_id(self, c: sqlite3.Connection, frames: tuple[Frame, ...]) -> int:
        key = tuple(self._frame_id(c, f) for f in frames)
        sid = self._stack_ids.get(key)
        if sid is None:
            text = schema.encode_frame_ids(key)
            c.execute("INSERT OR IGNORE INTO stacks (frame_ids) VALUES (?)", (text,))
            sid = c.execute("SELECT id FROM stacks WHERE frame_ids = ?", (text,)).fetchone()[0]
            self._stack_ids[key] = sid
        return sid

    def _write_window(self, c: sqlite3.Connection, w: StackWindow) -> None:
        cur = c.execute("INSERT INTO windows (start, end, rate_hz, errors) VALUES (?, ?, ?, ?)",
                        (w.start, w.end, w.rate_hz, w.errors))
        window_id = cur.lastrowid
        rows = []
        for s in w.samples:
            role = w.threads.get((s.pid, s.tid), ThreadRole.OTHER).value
            written = self._threads.get((s.pid, s.tid))
            if written is not None and role == _OTHER and written[1] != _OTHER:
                # A window that saw no loop or pool frame proves nothing against one that did:
                # a recycled gunicorn worker's event loop thread ends in the worker's shutdown.
                role = written[1]
            if written != (s.thread_name, role):
                c.execute("REPLACE INTO threads VALUES (?, ?, ?, ?)",
                          (s.pid, s.tid, s.thread_name, role))
                self._threads[(s.pid, s.tid)] = (s.thread_name, role)
            gil = None if s.gil is None else int(s.gil)
            rows.append((window_id, s.pid, s.tid, self._stack_id(c, s.frames), s.state.value,
                         gil, s.count))
        c.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        c.executemany("INSERT INTO thread_cpu VALUES (?, ?, ?, ?, ?)",
                      [(window_id, pid, tid, sec, w.thread_runqueue.get((pid, tid)))
                       for (pid, tid), sec in w.thread_cpu.items()])
        c.executemany("INSERT INTO thread_gil VALUES (?, ?, ?, ?, ?)",
                      [(window_id, pid, tid, looks, gil)
                       for (pid, tid), (looks, gil) in w.thread_gil.items()])
        c.executemany("INSERT INTO gil_holders VALUES (?, ?, ?, ?)",
                      [(window_id, pid, tid, held)
                       for (pid, tid), held in w.gil_holders.items()])
        if w.host_busy is not None:
            c.execute("INSERT INTO host_cpu VALUES (?, ?)", (window_id, w.host_busy))
        c.executemany("INSERT INTO process_cpu VALUES (?, ?, ?)",
                      [(window_id, pid, sec) for pid, sec in w.process_cpu.items()])
        c.executemany("INSERT INTO native_cpu VALUES (?, ?, ?, ?, ?)",
                      [(window_id, pid, tid, self._stack_id(c, frames) if frames else None, sec)
                       for (pid, tid, frames), sec in w.native_cpu.items()])

    def _statement_id(self, c: sqlite3.Connection, sql: str) -> int:
        sid = self._statement_ids.get(sql)
        if sid is None:
            c.execute("INSERT OR IGNORE INTO statements (sql) VALUES (?)", (sql,))
            sid = c.execute("SELECT id FROM statements WHERE sql = ?", (sql,)).fetchone()[0]
            self._statement_ids[sql] = sid
        return sid

    def _write_requests(self, c: sqlite3.Connection, batch: list[RequestRecord]) -> None:
        began = time.thread_time()
        try:
            self._insert_requests(c, batch)
        finally:
            self.request_cpu += time.thread_time() - began  # what keeping requests costs

    def _insert_requests(self, c: sqlite3.Connection, batch: list[RequestRecord]) -> None:
        # Most requests ran no query: those go in runs of one executemany each (a busy server
        # sends thousands a second); one with queries needs its row id for them.
        plain: list[tuple[Any, ...]] = []
        for r in batch:
            if not r.queries:
                plain.append(_request_row(r, 0, 0.0))
                continue
            if plain:
                c.executemany(_INSERT_REQUEST, plain)
                plain = []
            statements = [q for q in r.queries if not is_connection(q.statement)]
            cur = c.execute(_INSERT_REQUEST, _request_row(
                r, sum(q.count for q in statements), sum(q.total_ms for q in statements)))
            c.executemany(
                "INSERT INTO request_queries VALUES (?, ?, ?, ?, ?, ?)",
                [(cur.lastrowid, self._statement_id(c, q.statement), q.count, q.total_ms,
                  q.file, q.line) for q in r.queries])
        if plain:
            c.executemany(_INSERT_REQUEST, plain)


_INSERT_REQUEST = ("INSERT INTO requests (pid, start, duration_ms, method, route, status,"
                   " exc_type, exc_file, exc_line, query_count, query_ms, weight, first_byte_ms)"
                   " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)")


def _request_row(r: RequestRecord, query_count: int, query_ms: float) -> tuple[Any, ...]:
    return (r.pid, r.start, r.duration_ms, r.method, r.route, r.status, r.exc_type, r.exc_file,
            r.exc_line, query_count, query_ms, r.weight, r.first_byte_ms)


def _checkpoint(conn: sqlite3.Connection, mode: str) -> None:
    """Copy the write-ahead log into the main file (PASSIVE never waits for readers)."""
    try:
        conn.execute(f"PRAGMA wal_checkpoint({mode})")
    except sqlite3.Error:
        pass  # a busy or full file: the next checkpoint, or SQLite's own, tries again


def describe_failure(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "full" in text.lower():
        return f"{text} (the disk is full: free space or give --session another disk)"
    if "readonly" in text.lower() or "read-only" in text.lower():
        return f"{text} (the file system is read-only)"
    return text
