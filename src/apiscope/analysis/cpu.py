"""The target's CPU time and where it went: to endpoints, to the server, to the tools.

Every figure here rests on the kernel's per-thread CPU time (`context.cpu_seconds`): a sample
counts only as the CPU its thread really used, so a handler sleeping or waiting on a socket
costs nothing, whatever its stack shows. The denominator is the processes' own CPU time over
the session (threads that ended within a window included), so the shares of the endpoints, the
server's own work and the rest add up to at most one.

- An endpoint's share: the CPU of the samples inside its handler, and of the work its requests
  handed to pool threads with nothing of the app on the thread's stack (C code or a library's
  run through `asyncio.to_thread` and its likes), as the agent timed it by the threads' CPU
  clocks (`offloaded_cpu`; an older agent's looks share out what py-spy saw of it).
- The run-queue share (per process): of the time the request threads were runnable, the part
  they waited for a CPU the host did not have (schedstat). High, and every route is slow for
  want of CPU, not because of its own code.
- The server's share (per process): the CPU of the request-handling threads (event loop,
  thread pool) while no application frame was on their stack: HTTP parsing, routing,
  middleware, logging, serialisation in the framework, dispatch to the pool; less the timed
  handed work the samples put on a pool thread's idle stack.
- The native threads' share (per process): the CPU of threads Python does not run, which
  py-spy cannot sample: a C extension's own threads (argon2's lanes, a BLAS pool, a
  compressor's workers), measured as the process's CPU beyond its Python threads'. Each
  window's is the routes' whose request threads were then blocked inside a C extension's call
  (a library that is not a known wait: sockets, database drivers, locks, sleeps): the caller
  of argon2 with four lanes waits for them, using next to no CPU of its own (`native_cpu`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from apiscope.analysis.context import HANDLER_ROLES, AnalysisContext, Attributed
from apiscope.frames import package_of
from apiscope.model import SampleState


def process_cpu_seconds(ctx: AnalysisContext) -> dict[int, float]:
    """CPU seconds each process used over the session: measured, or (older sessions) what its
    RUNNING samples stand for."""
    totals: dict[int, float] = defaultdict(float)
    if ctx.data.process_cpu:
        for c in ctx.data.process_cpu:
            totals[c.pid] += c.seconds
    else:
        for a in ctx.samples:
            totals[a.sample.pid] += a.cpu
    return dict(totals)


def total_cpu_seconds(ctx: AnalysisContext) -> float:
    return sum(process_cpu_seconds(ctx).values())


def cpu_shares(ctx: AnalysisContext) -> dict[str, float]:
    """Each endpoint's share of the target's CPU time."""
    total = total_cpu_seconds(ctx)
    if total <= 0:
        return {}
    used: dict[str, float] = defaultdict(float, offloaded_cpu(ctx))
    for endpoint, cpu in native_cpu(ctx).endpoints.items():
        used[endpoint] += cpu
    for a in ctx.samples:
        if a.endpoint is not None and a.cpu and not a.tool:
            used[a.endpoint] += a.cpu
    return {endpoint: min(1.0, cpu / total) for endpoint, cpu in used.items()}


@dataclass(frozen=True, slots=True)
class HandedWork:
    """Per process, the work its requests handed to pool threads: what py-spy saw of it on
    offloaded stacks (measured CPU), and, per endpoint, what the agent timed by the threads'
    CPU clocks and how often it looked."""

    seen: dict[int, float]
    timed: dict[int, dict[str, float]]
    looks: dict[int, dict[str, float]]

    @classmethod
    def of(cls, ctx: AnalysisContext) -> HandedWork:
        seen: dict[int, float] = defaultdict(float)
        for a in ctx.samples:
            if a.offloaded and a.cpu and not a.tool and a.role in HANDLER_ROLES:
                seen[a.sample.pid] += a.cpu
        timed: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        looks: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for handed in ctx.data.offloaded:
            timed[handed.pid][handed.endpoint] += handed.cpu
            looks[handed.pid][handed.endpoint] += handed.looks
        return cls(dict(seen), {pid: dict(t) for pid, t in timed.items()},
                   {pid: dict(w) for pid, w in looks.items()})

    def beyond_seen(self) -> dict[int, float]:
        """Per process, the timed CPU beyond what py-spy saw of it on offloaded stacks: the
        pool threads' CPU the samples put elsewhere (their idle stacks, which count as the
        server's)."""
        return {pid: max(0.0, sum(t.values()) - self.seen.get(pid, 0.0))
                for pid, t in self.timed.items()}


def offloaded_cpu(ctx: AnalysisContext) -> dict[str, float]:
    """CPU seconds of the work each endpoint's requests handed to pool threads. Where the agent
    timed the handed calls by their threads' CPU clocks (`PoolTiming`), that is the figure:
    measured, whatever py-spy saw of it (at the budget's rates a 50 ms bcrypt call is seen
    now and then, and its thread's CPU lands on the pool's idle stack it shows the rest of the
    time), or what the samples found on offloaded stacks where that is more, shared as the
    timed CPU is. Otherwise (an older agent's session) the measured CPU of a process's pool
    threads' offloaded stacks (`Attributed.offloaded`) is shared by the agent's looks
    (`OffloadLooks`); a process with neither keeps it unnamed (neither an endpoint's nor the
    server's)."""
    handed = HandedWork.of(ctx)
    used: dict[str, float] = defaultdict(float)
    for pid in set(handed.seen) | set(handed.timed):
        timed = handed.timed.get(pid, {})
        seen = handed.seen.get(pid, 0.0)
        spent = sum(timed.values())
        if spent > 0:
            # More seen on offloaded stacks than timed (calls handed over before the agent
            # came, a pool it does not hook): that too, shared as the timed CPU is.
            scale = max(spent, seen) / spent
            for endpoint, cpu in timed.items():
                used[endpoint] += cpu * scale
            continue
        weights = handed.looks.get(pid, {})
        total = sum(weights.values())
        for endpoint, weight in weights.items():
            if weight > 0:
                used[endpoint] += seen * weight / total
    return dict(used)


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
    "hypercorn", "granian"})


@dataclass(frozen=True, slots=True)
class NativeCpu:
    """CPU seconds of the threads Python does not run: per process, and the part of it placed
    on the routes whose request threads waited inside a C extension's call meanwhile."""

    processes: dict[int, float]
    endpoints: dict[str, float]


def native_cpu(ctx: AnalysisContext) -> NativeCpu:
    """Per window and process: the measured CPU of threads with no Python stack (threads read
    by the kernel that py-spy never showed, and the process's CPU beyond every thread read
    where no Python thread that ended unread worked), shared over the routes by the seconds their
    request threads were seen blocked inside a C extension's call (`_waits_on_native`) in
    that window. A window with none keeps its share unplaced (the process's figure only)."""
    if not ctx.data.process_cpu:
        return NativeCpu({}, {})
    shown: set[tuple[float, int, int]] = set()
    read = {(c.window, c.pid, c.tid) for c in ctx.data.thread_cpu}
    # Per (window, pid): CPU placed on Python threads shown but not read (they ended within
    # the window), and whether any of them worked there (its CPU not surely placed).
    unread_cpu: dict[tuple[float, int], float] = defaultdict(float)
    unread_working: set[tuple[float, int]] = set()
    waits: dict[tuple[float, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for a in ctx.samples:
        key = (a.window, a.sample.pid, a.sample.tid)
        shown.add(key)
        if key not in read:
            unread_cpu[key[:2]] += a.cpu
            if a.active:
                unread_working.add(key[:2])
        if a.endpoint is not None and _waits_on_native(a):
            waits[key[:2]][a.endpoint] += a.seconds
    native: dict[tuple[float, int], float] = defaultdict(float)
    threads: dict[tuple[float, int], float] = defaultdict(float)
    for c in ctx.data.thread_cpu:
        threads[(c.window, c.pid)] += c.seconds
        if (c.window, c.pid, c.tid) not in shown:
            native[(c.window, c.pid)] += c.seconds
    for c in ctx.data.process_cpu:
        # Beyond its threads read: threads that ended within the window. Not Python's where
        # the Python threads that ended unread only idled (a pool thread timing out); where one
        # worked (a thread per request, a worker that exited), the rest is theirs as well as
        # anyone's, and no one's here.
        at = (c.window, c.pid)
        if at not in unread_working:
            native[at] += max(0.0, c.seconds - threads[at] - unread_cpu[at])
    processes: dict[int, float] = defaultdict(float)
    endpoints: dict[str, float] = defaultdict(float)
    for (window, pid), cpu in native.items():
        processes[pid] += cpu
        routes = waits.get((window, pid))
        total = sum(routes.values()) if routes else 0.0
        for endpoint, seconds in (routes or {}).items():
            endpoints[endpoint] += cpu * seconds / total
    return NativeCpu(dict(processes), dict(endpoints))


def _waits_on_native(a: Attributed) -> bool:
    """A request thread blocked inside a C extension's call: its last Python frame in an
    installed library that is not a known wait (`WAITING_PACKAGES`). An app line calling C
    directly is not taken (a `time.sleep` there looks the same)."""
    if a.sample.state is not SampleState.BLOCKED or a.tool or a.role not in HANDLER_ROLES \
            or not a.sample.frames:
        return False
    package = package_of(a.sample.frames[-1].file)
    return bool(package) and package not in WAITING_PACKAGES


def native_cpu_shares(ctx: AnalysisContext) -> dict[int, float]:
    """Each process's share of its CPU time used by threads Python does not run."""
    totals = process_cpu_seconds(ctx)
    native = native_cpu(ctx).processes
    return {pid: min(1.0, native.get(pid, 0.0) / total)
            for pid, total in totals.items() if total > 0 and ctx.data.process_cpu}


def server_cpu_shares(ctx: AnalysisContext) -> dict[int, float]:
    """Each process's share of its CPU time spent in the server's and framework's own work."""
    totals = process_cpu_seconds(ctx)
    server: dict[int, float] = defaultdict(float)
    for a in ctx.samples:
        if a.cpu and a.user is None and not a.tool and not a.offloaded \
                and a.role in HANDLER_ROLES:
            server[a.sample.pid] += a.cpu
    # The timed handed work the samples put on a pool thread's idle stack is the routes'.
    for pid, cpu in HandedWork.of(ctx).beyond_seen().items():
        server[pid] = max(0.0, server[pid] - cpu)
    return {pid: min(1.0, server[pid] / total) for pid, total in totals.items() if total > 0}


def runqueue_shares(ctx: AnalysisContext) -> dict[int, float]:
    """Per process: run-queue seconds / (run-queue + CPU seconds) of its request threads."""
    waited: dict[int, float] = defaultdict(float)
    ran: dict[int, float] = defaultdict(float)
    for c in ctx.data.thread_cpu:
        if c.runqueue is not None and ctx.data.roles.get((c.pid, c.tid)) in HANDLER_ROLES:
            waited[c.pid] += c.runqueue
            ran[c.pid] += c.seconds
    return {pid: waited[pid] / (waited[pid] + ran[pid])
            for pid in waited if waited[pid] + ran[pid] > 0}
