"""The session file's schema.

Stacks are stored de-duplicated: `frames` holds each distinct (function, file, line) once,
`stacks` each distinct root-first sequence of frame ids once, and `samples` counts per window,
thread, stack and state. Everything else is one row per observation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

# 2: thread_cpu and process_cpu (the kernel's CPU time per window); older files still read.
# 3: requests.weight (a request kept for n): an older apiscope would count such a file short.
# 4: loop_stalls.held (who held a pass of the loop, see LoopStall): an older apiscope would
#    take a short pass seen once, or one of many callbacks, for a handler's stall.
# 5: requests.first_byte_ms (a streamed response's time to its head): an older apiscope would
#    judge a stream by its whole length.
# 6: unfinished (requests still running, no response begun, as the collection ended): an older
#    apiscope would call a server whose requests hung healthy.
# 7: routes.view, view_file, view_line (the app's class of a handler inherited from a
#    library): an older apiscope would locate such a route's flags in the library.
# 8: loop_stalls.held "gc" (the garbage collector held the loop): an older apiscope would
#    blame the line the looks found; and the offloaded table.
# 9: offloaded.cpu (the timed CPU of the calls endpoints handed to pools); older files read 0.
# 10: loop_stalls.route (the request a hold served, where no line of the app ran); older files
#     read None.
# 11: native_cpu (the CPU of threads Python does not run, a C extension's own): an older
#     apiscope would leave it out of the routes' CPU shares; older files have none.
# 12: host_cpu (the host's busy share per window: whether waiting for a CPU was for want of
#     one); older files have none.
# 13: gil_holders (which thread held the GIL while others waited for it): an older apiscope
#     would locate gil_contention at the waiting threads' lines; older files have none.
# 14: thread_spans (the threads that ran each endpoint's handed calls: Django's thread per
#     request); older files have none.
SCHEMA_VERSION = 14
# PRAGMA application_id marks the file as ours, so a foreign SQLite file is refused clearly.
APPLICATION_ID = 0x61706973  # "apis"

DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS processes (
    pid INTEGER PRIMARY KEY, ppid INTEGER, role TEXT NOT NULL, command TEXT NOT NULL,
    first_seen REAL NOT NULL, exited_at REAL
);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY, function TEXT NOT NULL, file TEXT NOT NULL, line INTEGER NOT NULL,
    UNIQUE (function, file, line)
);
CREATE TABLE IF NOT EXISTS stacks (id INTEGER PRIMARY KEY, frame_ids TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS threads (
    pid INTEGER NOT NULL, tid INTEGER NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
    PRIMARY KEY (pid, tid)
);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY, start REAL NOT NULL, end REAL NOT NULL, rate_hz INTEGER NOT NULL,
    errors INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS samples (
    window_id INTEGER NOT NULL, pid INTEGER NOT NULL, tid INTEGER NOT NULL,
    stack_id INTEGER NOT NULL, state TEXT NOT NULL, gil INTEGER, count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_window ON samples (window_id);
CREATE TABLE IF NOT EXISTS thread_cpu (
    window_id INTEGER NOT NULL, pid INTEGER NOT NULL, tid INTEGER NOT NULL,
    seconds REAL NOT NULL, runqueue REAL
);
CREATE TABLE IF NOT EXISTS thread_gil (
    window_id INTEGER NOT NULL, pid INTEGER NOT NULL, tid INTEGER NOT NULL,
    looks INTEGER NOT NULL, gil INTEGER NOT NULL
);
-- Looks that found a thread waiting for the GIL, per thread holding it then (tid 0: unnamed).
CREATE TABLE IF NOT EXISTS gil_holders (
    window_id INTEGER NOT NULL, pid INTEGER NOT NULL, tid INTEGER NOT NULL,
    held INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS process_cpu (
    window_id INTEGER NOT NULL, pid INTEGER NOT NULL, seconds REAL NOT NULL
);
-- The share of the host's CPU time (all CPUs, every process) in use over each window.
CREATE TABLE IF NOT EXISTS host_cpu (window_id INTEGER PRIMARY KEY, busy REAL NOT NULL);
-- CPU of threads Python does not run, on the stack of the request thread waiting for them
-- (stack_id NULL, tid 0: not placed).
CREATE TABLE IF NOT EXISTS native_cpu (
    window_id INTEGER NOT NULL, pid INTEGER NOT NULL, tid INTEGER NOT NULL, stack_id INTEGER,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS routes (
    pid INTEGER NOT NULL, method TEXT NOT NULL, template TEXT NOT NULL, handler TEXT NOT NULL,
    file TEXT NOT NULL, line INTEGER NOT NULL, is_async INTEGER NOT NULL,
    view TEXT, view_file TEXT, view_line INTEGER,
    PRIMARY KEY (pid, method, template)
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, start REAL NOT NULL,
    duration_ms REAL NOT NULL, method TEXT NOT NULL, route TEXT NOT NULL,
    status INTEGER NOT NULL, exc_type TEXT, exc_file TEXT, exc_line INTEGER,
    query_count INTEGER NOT NULL DEFAULT 0, query_ms REAL NOT NULL DEFAULT 0,
    weight INTEGER NOT NULL DEFAULT 1, first_byte_ms REAL
);
CREATE INDEX IF NOT EXISTS requests_start ON requests (start);
CREATE TABLE IF NOT EXISTS statements (id INTEGER PRIMARY KEY, sql TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS request_queries (
    request_id INTEGER NOT NULL, statement_id INTEGER NOT NULL, count INTEGER NOT NULL,
    total_ms REAL NOT NULL, file TEXT, line INTEGER
);
CREATE INDEX IF NOT EXISTS request_queries_request ON request_queries (request_id);
CREATE TABLE IF NOT EXISTS resources (
    ts REAL NOT NULL, pid INTEGER NOT NULL, cpu_percent REAL NOT NULL, rss_bytes INTEGER NOT NULL,
    threads INTEGER NOT NULL, fds INTEGER NOT NULL, connections INTEGER NOT NULL,
    ctx_voluntary INTEGER NOT NULL, ctx_involuntary INTEGER NOT NULL,
    read_bytes INTEGER NOT NULL, write_bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS resources_ts ON resources (ts);
CREATE TABLE IF NOT EXISTS threadpool (
    ts REAL NOT NULL, pid INTEGER NOT NULL, total_tokens INTEGER NOT NULL,
    borrowed_tokens INTEGER NOT NULL, waiting INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_stats (
    ts REAL NOT NULL, pid INTEGER NOT NULL, recorded INTEGER NOT NULL, dropped INTEGER NOT NULL,
    errors INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS flags (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, severity TEXT NOT NULL, route TEXT,
    file TEXT, line INTEGER, function TEXT, evidence TEXT NOT NULL, metric TEXT NOT NULL,
    suggestion TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS profiles (
    id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, start REAL NOT NULL, method TEXT NOT NULL,
    route TEXT NOT NULL, duration_ms REAL NOT NULL,
    tree BLOB NOT NULL  -- zlib-compressed JSON
);
CREATE TABLE IF NOT EXISTS loop_stalls (
    pid INTEGER NOT NULL, tid INTEGER NOT NULL, start REAL NOT NULL, duration_ms REAL NOT NULL,
    stack_id INTEGER NOT NULL, cpu_ms REAL, activity TEXT, held TEXT, route TEXT
);
CREATE TABLE IF NOT EXISTS loop_lag (
    ts REAL NOT NULL, pid INTEGER NOT NULL, probes INTEGER NOT NULL, p50_ms REAL NOT NULL,
    p99_ms REAL NOT NULL, max_ms REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS unfinished (
    pid INTEGER NOT NULL, ts REAL NOT NULL, method TEXT NOT NULL, route TEXT NOT NULL,
    elapsed_ms REAL NOT NULL, awaiting TEXT,
    chain_stack_id INTEGER NOT NULL, thread_stack_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS offloaded (
    ts REAL NOT NULL, pid INTEGER NOT NULL, endpoint TEXT NOT NULL, looks INTEGER NOT NULL,
    cpu REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS thread_spans (
    pid INTEGER NOT NULL, tid INTEGER NOT NULL, endpoint TEXT NOT NULL, start REAL NOT NULL,
    end REAL NOT NULL, requests INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gil_wait (
    ts REAL NOT NULL, pid INTEGER NOT NULL, seconds REAL NOT NULL, wait_seconds REAL NOT NULL,
    acquisitions INTEGER NOT NULL, max_wait_ms REAL NOT NULL, runqueue_known INTEGER NOT NULL
);
"""


def create(conn: sqlite3.Connection) -> None:
    """Create the schema in an empty database and stamp it as an apiscope session."""
    conn.executescript(DDL)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def encode_frame_ids(frame_ids: Iterable[int]) -> str:
    """A stack's `frame_ids` column: its frame ids, root first, joined by commas."""
    return ",".join(map(str, frame_ids))


def decode_frame_ids(text: str) -> tuple[int, ...]:
    """The frame ids of a stored stack, root first (the empty text is a stack of no frames).

    The one reading of the column: the reader resolves stacks through it, whatever view asks.
    """
    return tuple(int(fid) for fid in text.split(",") if fid)
