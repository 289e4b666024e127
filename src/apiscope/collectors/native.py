"""CPU of the threads Python does not run, and the waits it stands for.

A C extension may run its work on threads of its own: argon2 hashes each lane on a thread of
its C library (four by default), a BLAS library keeps a pool, a compressor has workers. py-spy
cannot see them (they have no Python stack), and their CPU is in the process's total and in no
Python thread's: argon2's caller uses 7 ms of the 170 ms a verify costs, waiting for its lanes
meanwhile. Left there, the route whose login costs most of the server's CPU reads 10% of it.

Measured, per window and process: the CPU of threads the kernel was asked about that py-spy
never showed, and the process's CPU beyond every thread read (threads that ended within the
window). The latter is counted only where no Python thread that ended unread worked in the
window, and only for a process some of whose threads were read: a thread per request
(Django's `sync_to_async`) or a worker that exited leaves CPU in the same remainder, and there
it is no one's here. A pool thread idling out is no such doubt.

Placed, per window: on the samples of request threads (event loop, pool workers) blocked inside
a call into an installed library that is not a known wait (`WAITING_PACKAGES`: sockets,
database drivers, HTTP clients, locks, sleeps), by the seconds they stand for: the caller
waiting for the lanes. A window with no such wait keeps its figure unplaced (the process's).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from apiscope.frames import THIRD_PARTY, package_of
from apiscope.model import Frame, SampleState, StackSample, ThreadRole

# Libraries where a blocked request thread waits on something other than a C extension's own
# threads: a socket, a database or another service, a subprocess, a lock, another Python
# thread, a sleep. Its wait takes no share of the native threads' CPU.
WAITING_PACKAGES = frozenset({
    "asyncio", "socket", "ssl", "selectors", "select", "threading", "queue", "subprocess",
    "concurrent", "multiprocessing", "http", "urllib", "time", "logging", "io", "_pyio",
    "sqlite3", "anyio", "psycopg", "psycopg2", "psycopg_pool", "asyncpg", "pymysql", "MySQLdb",
    "mysql", "aiomysql", "oracledb", "pymongo", "motor", "redis", "valkey", "pymemcache",
    "urllib3", "requests", "httpx", "httpcore", "h11", "aiohttp", "grpc", "botocore", "boto3",
    "kafka", "pika", "elasticsearch", "sqlalchemy", "django", "gunicorn", "uvicorn",
    "hypercorn", "anycorn", "granian", "apiscope"})

_REQUEST_ROLES = frozenset({ThreadRole.LOOP, ThreadRole.WORKER})

# (pid, tid, frames): a stack the native CPU was placed on; (pid, 0, ()) what was not placed.
NativeKey = tuple[int, int, tuple[Frame, ...]]


def waits_on_native(sample: StackSample, role: ThreadRole) -> bool:
    """A request thread blocked inside a call into an installed library that is not a known
    wait. An app line calling C directly is not taken (a `time.sleep` there looks the same),
    nor a line of the standard library: none runs threads of its own for a call, and a thread
    blocked at one (a `WeakKeyDictionary` lookup in SQLAlchemy's ORM, under an event loop's
    blocking query) was waiting for the GIL behind the pool threads, which took argon2's lanes'
    CPU for a C library's wait on the loop."""
    if sample.state is not SampleState.BLOCKED or role not in _REQUEST_ROLES \
            or not sample.frames:
        return False
    leaf = sample.frames[-1].file
    if not THIRD_PARTY.search(leaf):
        return False
    package = package_of(leaf)
    return bool(package) and package not in WAITING_PACKAGES


def native_cpu(samples: Iterable[StackSample], rate: int, threads: Mapping[tuple[int, int], float],
               processes: Mapping[int, float], roles: Mapping[tuple[int, int], ThreadRole],
               ) -> dict[NativeKey, float]:
    """One window's native CPU seconds, placed (see the module's doc)."""
    shown: set[tuple[int, int]] = set()
    unread_cpu: dict[int, float] = defaultdict(float)  # CPU placed on threads not read
    unread_working: set[int] = set()
    waits: dict[int, dict[tuple[int, tuple[Frame, ...]], float]] = defaultdict(
        lambda: defaultdict(float))
    for s in samples:
        thread = (s.pid, s.tid)
        shown.add(thread)
        if thread not in threads:
            if s.state is SampleState.RUNNING:
                unread_cpu[s.pid] += s.count / rate
            if s.state is not SampleState.WAITING:
                unread_working.add(s.pid)
        if waits_on_native(s, roles.get(thread, ThreadRole.OTHER)):
            waits[s.pid][(s.tid, s.frames)] += s.count / rate
    native: dict[int, float] = defaultdict(float)
    read: dict[int, float] = defaultdict(float)
    for (pid, tid), seconds in threads.items():
        read[pid] += seconds
        if (pid, tid) not in shown:
            native[pid] += seconds
    for pid, seconds in processes.items():
        # A worker that exited within the window has no thread read: its figure is what its
        # master reaped, all of it its Python's as much as anyone's.
        if pid in read and pid not in unread_working:
            native[pid] += max(0.0, seconds - read[pid] - unread_cpu[pid])
    out: dict[NativeKey, float] = {}
    for pid, seconds in native.items():
        if seconds <= 0:
            continue
        stacks = waits.get(pid)
        if not stacks:
            out[(pid, 0, ())] = seconds
            continue
        total = sum(stacks.values())
        for (tid, frames), waited in stacks.items():
            out[(pid, tid, frames)] = seconds * waited / total
    return out
