"""Reading a session file, while it is written or after.

The reader opens the file read-only, checks it is an apiscope session of a schema it knows, and
returns the model's plain dataclasses. Frames and stacks are resolved through small caches, so
iterating a million samples reads each distinct stack once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apiscope.errors import SessionFileError
from apiscope.flag import Flag, Location
from apiscope.model import (
    AgentStats,
    Frame,
    GilSample,
    LoopLagSample,
    LoopStall,
    OffloadLooks,
    ProcessInfo,
    ProfileNode,
    QueryStat,
    RequestRecord,
    ResourceSample,
    RouteInfo,
    SampleState,
    StackSample,
    StoredProfile,
    ThreadCpu,
    ThreadPoolSample,
    ThreadRole,
    ThreadSpan,
    UnfinishedRequest,
    WindowInfo,
)
from apiscope.sessionmeta import SessionMeta
from apiscope.store import schema
from apiscope.store.queries import ViewQueries


@dataclass(frozen=True, slots=True)
class SampleFilter:
    """A slice of the samples: every field left as None matches everything."""

    since: float | None = None  # epoch seconds, inclusive (by window start)
    until: float | None = None  # epoch seconds, exclusive (by window start)
    pid: int | None = None
    tid: int | None = None
    states: frozenset[SampleState] | None = None
    gil: bool | None = None


@dataclass(frozen=True, slots=True)
class StackCpu:
    """The CPU seconds one thread's RUNNING samples of one stack stand for (see `running_cpu`)."""

    pid: int
    tid: int
    stack_id: int
    seconds: float


class SessionReader(ViewQueries):
    """Read access to one session file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SessionFileError(f"no session file at {self.path}: check the path")
        try:
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                         check_same_thread=False)
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise SessionFileError(
                f"{self.path} is not an apiscope session file ({exc}): pass the .sqlite file"
                " written by `apiscope attach --session`") from None
        if app_id != schema.APPLICATION_ID:
            raise SessionFileError(
                f"{self.path} is an SQLite file but not an apiscope session: pass the file"
                " written by `apiscope attach --session`")
        if version > schema.SCHEMA_VERSION:
            raise SessionFileError(
                f"{self.path} uses session schema {version}, newer than this apiscope"
                f" understands ({schema.SCHEMA_VERSION}): upgrade apiscope")
        self._frames: dict[int, Frame] = {}
        self._stacks: dict[int, tuple[Frame, ...]] = {}
        self._columns: dict[tuple[str, str], bool] = {}

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SessionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query: the SQL stays in the store, callers get dataclasses."""
        return self._conn.execute(sql, params).fetchall()

    # -- metadata -----------------------------------------------------------------------------

    def meta(self) -> SessionMeta:
        """What the collector noted about the session, typed (empty when it noted nothing)."""
        return SessionMeta.from_stored(
            {key: json.loads(value) for key, value in self._query("SELECT key, value FROM meta")})

    def processes(self) -> list[ProcessInfo]:
        return [ProcessInfo(*row) for row in self._query(
            "SELECT pid, ppid, role, command, first_seen, exited_at FROM processes ORDER BY pid")]

    def routes(self) -> list[RouteInfo]:
        """The route table, one entry per (method, template) whichever worker reported it."""
        view = ("view, view_file, view_line" if self._has_column("routes", "view")
                else "NULL, NULL, NULL")  # v7 on
        rows = self._query(f"SELECT method, template, handler, file, line, is_async, {view}"
                           " FROM routes GROUP BY method, template ORDER BY template, method")
        return [RouteInfo(m, t, h, f, ln, bool(a), v or "", vf or "", vl or 0)
                for m, t, h, f, ln, a, v, vf, vl in rows]

    def served_endpoints(self) -> set[str]:
        """The endpoints ("METHOD /template") that served at least one recorded request."""
        return {f"{m} {r}" for m, r in self._query("SELECT DISTINCT method, route FROM requests")}

    def threads(self) -> dict[tuple[int, int], tuple[str, ThreadRole]]:
        return {(pid, tid): (name, ThreadRole(role))
                for pid, tid, name, role in self._query("SELECT pid, tid, name, role FROM threads")}

    def time_range(self) -> tuple[float, float] | None:
        """First and last instant anything was recorded (epoch seconds)."""
        row = self._query(
            "SELECT min(t0), max(t1) FROM ("
            " SELECT min(start) t0, max(end) t1 FROM windows"
            " UNION ALL SELECT min(start), max(start + duration_ms / 1000.0) FROM requests"
            " UNION ALL SELECT min(ts), max(ts) FROM resources)")[0]
        return None if row[0] is None else (row[0], row[1])

    # -- stacks -------------------------------------------------------------------------------

    def windows(self, after_id: int = 0) -> list[WindowInfo]:
        """Every sampling window (those with an id above `after_id`), in the order written,
        which is time order: the sampler delivers windows one after the other."""
        return [WindowInfo(*row) for row in self._query(
            "SELECT id, start, end, rate_hz, errors FROM windows WHERE id > ? ORDER BY id",
            (after_id,))]

    def thread_cpu(self) -> list[ThreadCpu]:
        """The kernel's CPU seconds per window and thread ([] for files from before it)."""
        if not self._has_table("thread_cpu"):
            return []
        if not self._has_table("thread_gil"):
            return [ThreadCpu(*row) for row in self._query(
                "SELECT w.start, c.pid, c.tid, c.seconds, c.runqueue FROM thread_cpu c"
                " JOIN windows w ON w.id = c.window_id ORDER BY w.id")]
        return [ThreadCpu(start, pid, tid, sec, runqueue,
                          gil / looks if looks else None)
                for start, pid, tid, sec, runqueue, looks, gil in self._query(
                    "SELECT w.start, c.pid, c.tid, c.seconds, c.runqueue, g.looks, g.gil"
                    " FROM thread_cpu c JOIN windows w ON w.id = c.window_id"
                    " LEFT JOIN thread_gil g ON g.window_id = c.window_id AND g.pid = c.pid"
                    " AND g.tid = c.tid ORDER BY w.id")]

    def gil_holders(self) -> dict[tuple[float, int, int], int]:
        """(window start, pid, tid) -> looks that found a thread of the process waiting for
        the GIL while that thread held it (tid 0: a holder not named); {} for sessions
        recorded before it was read."""
        if not self._has_table("gil_holders"):
            return {}
        return {(start, pid, tid): held for start, pid, tid, held in self._query(
            "SELECT w.start, g.pid, g.tid, g.held FROM gil_holders g"
            " JOIN windows w ON w.id = g.window_id")}

    def host_busy(self) -> dict[float, float]:
        """Window start -> the share of the host's CPU time in use over it ({} for sessions
        recorded before it was measured)."""
        if not self._has_table("host_cpu"):
            return {}
        return dict(self._query(
            "SELECT w.start, h.busy FROM host_cpu h JOIN windows w ON w.id = h.window_id"))

    def process_cpu(self) -> list[ThreadCpu]:
        """The kernel's CPU seconds per window and process (tid 0), threads ended included."""
        if not self._has_table("process_cpu"):
            return []
        return [ThreadCpu(start, pid, 0, sec) for start, pid, sec in self._query(
            "SELECT w.start, c.pid, c.seconds FROM process_cpu c"
            " JOIN windows w ON w.id = c.window_id ORDER BY w.id")]

    def native_cpu(self, since: float | None = None, until: float | None = None, *,
                   after_window: int = 0, upto_window: int | None = None,
                   ) -> list[tuple[float, StackCpu]]:
        """(window start, CPU seconds of threads Python does not run placed on one thread's
        stack) over the windows starting in [since, until) with an id in (after_window,
        upto_window]; stack id 0 and tid 0: not placed (`collectors/native.py`)."""
        if not self._has_table("native_cpu"):
            return []
        return [(start, StackCpu(pid, tid, stack_id, seconds))
                for start, pid, tid, stack_id, seconds in self._query(
                    "SELECT w.start, n.pid, n.tid, coalesce(n.stack_id, 0), n.seconds"
                    " FROM native_cpu n JOIN windows w ON w.id = n.window_id"
                    " WHERE n.window_id > ? AND n.window_id <= ? AND w.start >= ? AND w.start < ?"
                    " ORDER BY w.id",
                    (after_window, upto_window if upto_window is not None else 2**62,
                     since if since is not None else float("-inf"),
                     until if until is not None else float("inf")))]

    def _has_table(self, name: str) -> bool:
        return bool(self._query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def stack(self, stack_id: int) -> tuple[Frame, ...]:
        frames = self._stacks.get(stack_id)
        if frames is None:
            text = self._query("SELECT frame_ids FROM stacks WHERE id = ?", (stack_id,))[0][0]
            frames = self._stacks[stack_id] = self._resolve(text)
        return frames

    def stacks_after(self, last_id: int) -> dict[int, tuple[Frame, ...]]:
        """The stacks stored after id `last_id`, by id, each root frame first.

        A view that grows with the session reads its new stacks in two queries this way,
        rather than one per stack.
        """
        if self._frames:  # frames written since the cache was filled, in one query
            known = max(self._frames)
            self._frames.update((fid, Frame(fn, f, ln)) for fid, fn, f, ln in self._query(
                "SELECT id, function, file, line FROM frames WHERE id > ?", (known,)))
        found: dict[int, tuple[Frame, ...]] = {}
        for sid, text in self._query("SELECT id, frame_ids FROM stacks WHERE id > ?",
                                     (last_id,)):
            frames = self._stacks.get(sid)
            if frames is None:
                frames = self._stacks[sid] = self._resolve(text)
            found[sid] = frames
        return found

    def _resolve(self, frame_ids: str) -> tuple[Frame, ...]:
        return tuple(self._frame(fid) for fid in schema.decode_frame_ids(frame_ids))

    def _frame(self, frame_id: int) -> Frame:
        frame = self._frames.get(frame_id)
        if frame is None:
            if not self._frames:  # load all at once: a session has thousands, not millions
                self._frames = {fid: Frame(fn, f, ln) for fid, fn, f, ln in
                                self._query("SELECT id, function, file, line FROM frames")}
            frame = self._frames.get(frame_id)
            if frame is None:
                fn, f, ln = self._query("SELECT function, file, line FROM frames WHERE id = ?",
                                       (frame_id,))[0]
                frame = self._frames[frame_id] = Frame(fn, f, ln)
        return frame

    def samples(self, flt: SampleFilter | None = None) -> Iterator[tuple[float, StackSample]]:
        """(window start, sample) for every stored sample row matching the filter."""
        where, params = self._sample_where(flt or SampleFilter())
        names = {key: name for key, (name, _) in self.threads().items()}
        sql = ("SELECT w.start, s.pid, s.tid, s.stack_id, s.state, s.gil, s.count"
               " FROM samples s JOIN windows w ON w.id = s.window_id"
               f" WHERE {where} ORDER BY w.start")
        for start, pid, tid, stack_id, state, gil, count in self._conn.execute(sql, params):
            yield start, StackSample(pid, tid, names.get((pid, tid), ""), self.stack(stack_id),
                                     count, SampleState(state), None if gil is None else bool(gil))

    def sample_totals(self, flt: SampleFilter | None = None) -> list[StackSample]:
        """The matching samples summed over windows: one entry per thread, stack and state.

        Flamegraphs need no time order, and summing in SQL reads far fewer rows.
        """
        where, params = self._sample_where(flt or SampleFilter())
        names = {key: name for key, (name, _) in self.threads().items()}
        sql = ("SELECT s.pid, s.tid, s.stack_id, s.state, s.gil, sum(s.count)"
               " FROM samples s JOIN windows w ON w.id = s.window_id"
               f" WHERE {where} GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5")
        return [StackSample(pid, tid, names.get((pid, tid), ""), self.stack(stack_id), count,
                            SampleState(state), None if gil is None else bool(gil))
                for pid, tid, stack_id, state, gil, count in self._conn.execute(sql, params)]

    @staticmethod
    def _sample_where(flt: SampleFilter) -> tuple[str, list[Any]]:
        where: list[str] = ["1"]
        params: list[Any] = []
        if flt.since is not None:
            where.append("w.start >= ?")
            params.append(flt.since)
        if flt.until is not None:
            where.append("w.start < ?")
            params.append(flt.until)
        if flt.pid is not None:
            where.append("s.pid = ?")
            params.append(flt.pid)
        if flt.tid is not None:
            where.append("s.tid = ?")
            params.append(flt.tid)
        if flt.gil is not None:
            where.append("s.gil = ?")
            params.append(int(flt.gil))
        if flt.states is not None:
            where.append(f"s.state IN ({','.join('?' * len(flt.states))})")
            params.extend(sorted(s.value for s in flt.states))
        return " AND ".join(where), params

    # -- measured CPU time --------------------------------------------------------------------

    def running_cpu(self, since: float | None = None, until: float | None = None, *,
                    after_window: int = 0, upto_window: int | None = None) -> list[StackCpu]:
        """CPU seconds of the RUNNING samples per thread and stack, over the windows starting in
        [since, until) with an id in (after_window, upto_window].

        As the analysis counts them (`analysis.context.cpu_seconds`): a thread's measured CPU
        in a window is shared out over its RUNNING samples there; a thread not measured in that
        window counts 1 / rate per sample. Each window's figures depend on that window alone,
        so ranges of windows can be read apart and added.
        """
        rate = self.meta().rate_hz or 100
        measured = self._has_table("thread_cpu")
        join = ("LEFT JOIN thread_cpu c ON c.window_id = p.window_id AND c.pid = p.pid"
                " AND c.tid = p.tid" if measured else "")
        each = ("CASE WHEN c.seconds IS NULL THEN p.count * 1.0 / p.rate"
                " ELSE c.seconds * p.count / r.n END" if measured else "p.count * 1.0 / p.rate")
        sql = (
            "WITH p AS (SELECT s.window_id, s.pid, s.tid, s.stack_id, s.count,"
            " coalesce(nullif(w.rate_hz, 0), ?) AS rate"
            " FROM samples s JOIN windows w ON w.id = s.window_id"
            " WHERE s.state = ? AND s.window_id > ? AND s.window_id <= ?"
            " AND w.start >= ? AND w.start < ?),"
            " r AS (SELECT window_id, pid, tid, sum(count) AS n FROM p GROUP BY 1, 2, 3)"
            f" SELECT p.pid, p.tid, p.stack_id, sum({each}) FROM p"
            " JOIN r ON r.window_id = p.window_id AND r.pid = p.pid AND r.tid = p.tid"
            f" {join} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
        params = (rate, SampleState.RUNNING.value, after_window,
                  upto_window if upto_window is not None else 2**62,
                  since if since is not None else float("-inf"),
                  until if until is not None else float("inf"))
        return [StackCpu(*row) for row in self._query(sql, params)]

    def process_cpu_seconds(self, since: float | None = None,
                            until: float | None = None) -> dict[int, float]:
        """The kernel's CPU seconds of each process over the windows starting in [since,
        until), threads that ended within a window included ({} for files from before it)."""
        if not self._has_table("process_cpu"):
            return {}
        return dict(self._query(
            "SELECT c.pid, sum(c.seconds) FROM process_cpu c JOIN windows w ON w.id = c.window_id"
            " WHERE w.start >= ? AND w.start < ? GROUP BY c.pid ORDER BY c.pid",
            (since if since is not None else float("-inf"),
             until if until is not None else float("inf"))))

    def measures_thread_cpu(self) -> bool:
        """Whether the file holds the kernel's CPU time of any thread (not files from before)."""
        return self._has_rows("thread_cpu")

    def flags_stored(self) -> bool:
        """Whether the collector has stored its flags (none found counts), live or at the end."""
        return bool(self._query("SELECT 1 FROM meta WHERE key = 'flags_stored'"))

    def measures_process_cpu(self) -> bool:
        return self._has_rows("process_cpu")

    def _has_rows(self, table: str) -> bool:
        return self._has_table(table) and bool(self._query(f"SELECT 1 FROM {table} LIMIT 1"))

    # -- requests and resources ---------------------------------------------------------------

    def requests(self, since: float | None = None, until: float | None = None,
                 with_queries: bool = False) -> list[RequestRecord]:
        """The recorded requests, oldest first. A record kept for `weight` requests (the agent
        kept one in n) is in the list `weight` times, the same object: counts, rates and
        percentiles over the list are then the estimates they stand for."""
        sql = ("SELECT id, pid, start, duration_ms, method, route, status, exc_type, exc_file,"
               f" exc_line, {self._weight_column()}, {self._first_byte_column()} FROM requests"
               " WHERE start >= ? AND start < ? ORDER BY start")
        rows = self._query(sql, (since if since is not None else float("-inf"),
                                until if until is not None else float("inf")))
        queries: dict[int, list[QueryStat]] = {}
        if with_queries:
            for rid, text, count, total, f, ln in self._query(
                    "SELECT q.request_id, st.sql, q.count, q.total_ms, q.file, q.line"
                    " FROM request_queries q JOIN statements st ON st.id = q.statement_id"):
                queries.setdefault(rid, []).append(QueryStat(text, count, total, f, ln))
        out: list[RequestRecord] = []
        for rid, pid, start, dur, method, route, status, et, ef, el, weight, first in rows:
            record = RequestRecord(pid, start, dur, method, route, status, et, ef, el,
                                   tuple(queries.get(rid, ())), weight, first)
            if weight == 1:
                out.append(record)
            else:
                out.extend([record] * max(1, weight))
        return out

    def _weight_column(self) -> str:
        """`weight`, or 1 in a session written before requests were kept one in n."""
        return "weight" if self._has_column("requests", "weight") else "1"

    def _first_byte_column(self) -> str:
        """`first_byte_ms`, or NULL in a session written before streams were told apart."""
        return "first_byte_ms" if self._has_column("requests", "first_byte_ms") else "NULL"

    def resources(self, pid: int | None = None) -> list[ResourceSample]:
        sql = "SELECT * FROM resources" + (" WHERE pid = ?" if pid is not None else "")
        return [ResourceSample(*row) for row in
                self._query(sql + " ORDER BY ts", (pid,) if pid is not None else ())]

    def threadpool(self) -> list[ThreadPoolSample]:
        return [ThreadPoolSample(*row) for row in self._query(
            "SELECT ts, pid, total_tokens, borrowed_tokens, waiting FROM threadpool ORDER BY ts")]

    def agent_stats(self) -> list[AgentStats]:
        return [AgentStats(*row) for row in self._query(
            "SELECT ts, pid, recorded, dropped, errors FROM agent_stats ORDER BY ts")]

    def flags(self) -> list[Flag]:
        """The flags stored in the session (by its collector), in their stored order."""
        out = []
        for kind, sev, route, f, ln, fn, evidence, metric, suggestion in self._query(
                "SELECT kind, severity, route, file, line, function, evidence, metric, suggestion"
                " FROM flags ORDER BY id"):
            location = None if f is None else Location(f, ln, fn)
            out.append(Flag(kind, sev, route, location, evidence, json.loads(metric),
                            suggestion))
        return out

    def profiles(self, route: str | None = None) -> list[StoredProfile]:
        """The stored profiles (of one route template), oldest first, each tree typed."""
        sql = "SELECT pid, start, method, route, duration_ms, tree FROM profiles"
        rows = self._query(sql + (" WHERE route = ?" if route else "") + " ORDER BY start",
                          (route,) if route else ())
        return [StoredProfile(p, s, m, r, d, _tree(t)) for p, s, m, r, d, t in rows]

    # -- what the agent's watchdogs measured (tables absent from older session files) --------

    def loop_stalls(self) -> list[LoopStall]:
        held = "held" if self._has_column("loop_stalls", "held") else "NULL"  # v4 on
        route = "route" if self._has_column("loop_stalls", "route") else "NULL"  # v10 on
        rows = self._rows_if_table(
            "loop_stalls",
            "SELECT pid, tid, start, duration_ms, stack_id, cpu_ms, activity, "
            f"{held}, {route} FROM loop_stalls ORDER BY start")
        return [LoopStall(pid, tid, start, duration, self.stack(stack_id), cpu,
                          json.loads(activity) if activity else {}, who, served)
                for pid, tid, start, duration, stack_id, cpu, activity, who, served in rows]

    def _has_column(self, table: str, column: str) -> bool:
        """Whether the file's table has the column (a file's schema does not change once its
        writer created it, so the answer is kept)."""
        found = self._columns.get((table, column))
        if found is None:
            found = self._columns[(table, column)] = any(
                row[1] == column for row in self._query(f"PRAGMA table_info({table})"))
        return found

    def unfinished(self) -> list[UnfinishedRequest]:
        """Requests still running as the collection ended (none in files before schema 6)."""
        rows = self._rows_if_table(
            "unfinished", "SELECT pid, ts, method, route, elapsed_ms, awaiting, chain_stack_id,"
            " thread_stack_id FROM unfinished ORDER BY elapsed_ms DESC")
        return [UnfinishedRequest(pid, ts, method, route, elapsed, awaiting, self.stack(chain),
                                  self.stack(thread))
                for pid, ts, method, route, elapsed, awaiting, chain, thread in rows]

    def loop_gc_held(self) -> list[tuple[int, float]]:
        """(pid, ms) of each loop pass the garbage collector held: the stalls' own query,
        without their stacks (none in files before schema 8)."""
        if not self._has_column("loop_stalls", "held"):
            return []
        return [(pid, ms) for pid, ms in self._rows_if_table(
            "loop_stalls", "SELECT pid, duration_ms FROM loop_stalls WHERE held = 'gc'")]

    def loop_lag(self) -> list[LoopLagSample]:
        return [LoopLagSample(*row) for row in self._rows_if_table(
            "loop_lag", "SELECT ts, pid, probes, p50_ms, p99_ms, max_ms FROM loop_lag ORDER BY ts")]

    def offloaded(self, since: float | None = None,
                  until: float | None = None) -> list[OffloadLooks]:
        """Looks at pool threads busy with endpoints' handed-off work and the timed CPU of
        those calls, pulled in [since, until) (none in older files; no CPU before schema 9)."""
        cpu = "cpu" if self._has_column("offloaded", "cpu") else "0.0"
        return [OffloadLooks(*row) for row in self._rows_if_table(
            "offloaded", f"SELECT ts, pid, endpoint, looks, {cpu} FROM offloaded WHERE ts >= ?"
            " AND ts < ? ORDER BY ts", (since if since is not None else float("-inf"),
                                        until if until is not None else float("inf")))]

    def thread_spans(self) -> list[ThreadSpan]:
        """The threads that ran endpoints' handed calls, per pull (none before schema 14)."""
        return [ThreadSpan(*row) for row in self._rows_if_table(
            "thread_spans", "SELECT pid, tid, endpoint, start, end, requests FROM thread_spans"
            " ORDER BY start")]

    def gil_samples(self) -> list[GilSample]:
        rows = self._rows_if_table(
            "gil_wait", "SELECT ts, pid, seconds, wait_seconds, acquisitions, max_wait_ms,"
            " runqueue_known FROM gil_wait ORDER BY ts")
        return [GilSample(ts, pid, sec, wait, acq, max_ms, bool(known))
                for ts, pid, sec, wait, acq, max_ms, known in rows]

    def _rows_if_table(self, table: str, sql: str,
                       params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        exists = self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                            (table,))
        return self._query(sql, params) if exists else []


def _tree(stored: bytes | str) -> ProfileNode | None:
    """A profile's call tree, typed here once: zlib-compressed JSON (plain JSON text is read
    too)."""
    data = json.loads(zlib.decompress(stored) if isinstance(stored, bytes) else stored)
    return ProfileNode.from_json(data) if isinstance(data, dict) else None
