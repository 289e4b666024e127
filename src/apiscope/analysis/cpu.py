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
- A task a request started (`asyncio.create_task`, `gather`) runs with no frame of the
  request's handler on its stack: its root is the function the task runs. The agent counts,
  as each such task is made (the loop's task factory while watched), that function with the
  request's route (`task_routes`), and the CPU of the app's code in such a stack with no
  route's frame is shared out among those routes by those counts (`task_cpu`). A LiteLLM
  proxy runs each completion in a task of its own: a third of its CPU was no endpoint's before.
  The app's own middleware, run in the server's task for the request before the route's
  handler, stays no endpoint's (nor the server's).
- The run-queue share (per process): of the time the request threads were runnable, the part
  they waited for a CPU (schedstat). High on a busy host (`host_busy_share`), and every route
  is slow for want of CPU, not because of its own code; on a host with CPUs to spare it is
  wake-up latency (a thread woken at each hand-over of the GIL waits for its CPU to wake).
- The server's share (per process): the CPU of the request-handling threads (event loop,
  thread pool) while no application frame and no route's handler (one in a library, such as
  a CMS's page view, is the route's) was on their stack: HTTP parsing, routing,
  middleware, logging, serialisation in the framework, dispatch to the pool; less the timed
  handed work the samples put on a pool thread's idle stack. A request's sync code run by
  asgiref in a thread of its own (Django's views, sync middleware, a `TemplateResponse`
  rendering after its view returned) is the request's, not the server's, even where no frame
  names its route (then it is no endpoint's either): on a Wagtail site it was 61% of the
  process's CPU, read as the server's until then. So is a greenlet's stack on the loop thread
  (`Attributed.request_work`): a third of a Prefect server's CPU; and so is a compiled
  database protocol's callback on the loop (asyncpg's Cython protocol reading query results).
- The native threads' share (per process): the CPU of threads Python does not run, which
  py-spy cannot sample: a C extension's own threads (argon2's lanes, a BLAS pool, a
  compressor's workers), measured as the process's CPU beyond its Python threads'. The
  collector places each window's on the request threads then blocked inside a C extension's
  call (`collectors/native.py`): an endpoint's share includes what its requests waited for.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from apiscope.analysis.context import HANDLER_ROLES, AnalysisContext, Attributed, app_task_entry
from apiscope.model import ThreadRole

# A process that used less CPU than this over the session has no server or native share: the
# kernel counts a process's time in clock ticks (10 ms) and its threads' in nanoseconds, so a
# worker stuck for the whole session (0.01 s in all) read "native CPU 100%".
MIN_SPLIT_SECONDS = 0.1


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
    for endpoint, cpu in shared_handler_cpu(ctx).items():
        used[endpoint] += cpu
    for endpoint, cpu in task_cpu(ctx).items():
        used[endpoint] += cpu
    return {endpoint: min(1.0, cpu / total) for endpoint, cpu in used.items()}


def task_cpu(ctx: AnalysisContext) -> dict[str, float]:
    """CPU seconds of the app's code on an event loop with no route's frame on the stack,
    whose task runs an app function that tasks requests started ran (`SessionMeta.task_routes`):
    shared out among those requests' routes by how many each started."""
    noted: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for file, function, route, tasks in ctx.data.meta.task_routes:
        noted[(file, function)][route] = noted[(file, function)].get(route, 0) + tasks
    if not noted:
        return {}
    out: dict[str, float] = defaultdict(float)
    entries: dict[int, dict[str, int] | None] = {}  # per stack
    for a in ctx.samples:
        if a.endpoint is not None or not a.cpu or a.tool or a.offloaded or a.user is None \
                or a.role is not ThreadRole.LOOP:
            continue
        key = id(a.sample.frames)
        if key not in entries:
            entries[key] = None
            # Only the app's own functions: a library's wrapper that every task runs (anyio's
            # task groups run each coroutine in `TaskHandle._run_coro`) also runs the app's
            # background tasks, which no request started. A handler several routes share is
            # `shared_handler_cpu`'s.
            entry = app_task_entry(a.sample.frames, ctx.matcher.roots)
            if entry in noted and not ctx.matcher.sharing(a.sample.frames):
                entries[key] = noted[entry]
        routes = entries[key]
        if routes:
            tasks = sum(routes.values())
            for route, n in routes.items():
                out[route] += a.cpu * n / tasks
    return dict(out)


def shared_handler_cpu(ctx: AnalysisContext) -> dict[str, float]:
    """CPU seconds of samples in a handler that serves several endpoints with nothing in the
    stack to tell which (`RouteMatcher.sharing`: an admin's one generated list function for
    every table), shared out among those endpoints by the requests each served. Charged to
    none, they read 0% CPU each: on a Piccolo admin, every table's routes did."""
    out: dict[str, float] = defaultdict(float)
    shared: dict[int, tuple[str, ...]] = {}
    for a in ctx.samples:
        if a.endpoint is not None or not a.cpu or a.tool or a.offloaded:
            continue
        key = id(a.sample.frames)
        endpoints = shared.get(key)
        if endpoints is None:
            endpoints = shared[key] = ctx.matcher.sharing(a.sample.frames)
        counts = [len(ctx.by_endpoint.get(e, ())) for e in endpoints]
        served = sum(counts)
        for endpoint, count in zip(endpoints, counts, strict=True):
            if count:
                out[endpoint] += a.cpu * count / served
    return dict(out)


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


# An endpoint whose requests handed this share of a process's pool work (the agent's timing,
# else its looks) is the one its pool threads work for.
SOLE_HANDER = 0.9


def handed_routes(ctx: AnalysisContext) -> dict[int, str]:
    """Per process, the endpoint that handed its pool threads nearly all their work, when one
    did: pool-thread stacks whose frames name no route (a GraphQL server's resolvers, run by
    `run_in_threadpool` from a library's handler) are that endpoint's work. Processes whose
    requests of several endpoints share the pool have none."""
    handed = HandedWork.of(ctx)
    out: dict[int, str] = {}
    for pid in set(handed.timed) | set(handed.looks):
        weights = handed.timed.get(pid) or handed.looks.get(pid) or {}
        total = sum(weights.values())
        if total > 0:
            endpoint, weight = max(weights.items(), key=lambda kv: (kv[1], kv[0]))
            if weight >= SOLE_HANDER * total:
                out[pid] = endpoint
    return out


def endpoint_or_handed(a: Attributed, handed: dict[int, str]) -> str | None:
    """A sample's endpoint; for a pool thread's stack that names none, the endpoint that
    handed its process's pool nearly all its work (`handed_routes`), if one did."""
    if a.endpoint is not None or a.role is not ThreadRole.WORKER:
        return a.endpoint
    return handed.get(a.sample.pid)


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


@dataclass(frozen=True, slots=True)
class NativeCpu:
    """CPU seconds of the threads Python does not run: per process, and the part of it the
    routes' request threads waited for in a C extension's call (`collectors/native.py`)."""

    processes: dict[int, float]
    endpoints: dict[str, float]


def native_cpu(ctx: AnalysisContext) -> NativeCpu:
    processes: dict[int, float] = defaultdict(float)
    for _, pid, _, _, seconds in ctx.data.native:
        processes[pid] += seconds
    endpoints: dict[str, float] = defaultdict(float)
    for a in ctx.samples:
        if a.native and a.endpoint is not None:
            endpoints[a.endpoint] += a.native
    return NativeCpu(dict(processes), dict(endpoints))


def native_cpu_shares(ctx: AnalysisContext) -> dict[int, float]:
    """Each process's share of its CPU time used by threads Python does not run ({} where
    the processes' CPU time was not measured)."""
    if not ctx.data.process_cpu:
        return {}
    native = native_cpu(ctx).processes
    return {pid: min(1.0, native.get(pid, 0.0) / total)
            for pid, total in process_cpu_seconds(ctx).items() if total >= MIN_SPLIT_SECONDS}


def server_cpu_shares(ctx: AnalysisContext) -> dict[int, float]:
    """Each process's share of its CPU time spent in the server's and framework's own work."""
    totals = process_cpu_seconds(ctx)
    server: dict[int, float] = defaultdict(float)
    pool: dict[int, float] = defaultdict(float)  # on pool threads
    shared: dict[int, bool] = {}  # per stack: in a handler of several endpoints
    for a in ctx.samples:
        if a.cpu and a.user is None and a.endpoint is None and not a.tool and not a.offloaded \
                and not a.request_work and a.role in HANDLER_ROLES:
            key = id(a.sample.frames)
            if key not in shared:
                shared[key] = bool(ctx.matcher.sharing(a.sample.frames))
            if shared[key]:
                continue  # the endpoints' it serves (`shared_handler_cpu`), not the server's
            (pool if a.role is ThreadRole.WORKER else server)[a.sample.pid] += a.cpu
    # The timed handed work the samples put on a pool thread's idle stack is the routes'; not
    # the loop's own work. (Handed calls of the app's own functions show them, and so were
    # never the server's: taken from the loop's, a BentoML worker's 9 s read 0.)
    for pid, cpu in HandedWork.of(ctx).beyond_seen().items():
        pool[pid] = max(0.0, pool[pid] - cpu)
    return {pid: min(1.0, (server[pid] + pool[pid]) / total)
            for pid, total in totals.items() if total >= MIN_SPLIT_SECONDS}


def host_busy_share(ctx: AnalysisContext,
                    windows: Iterable[tuple[float, float]] | None = None) -> float | None:
    """The share of the host's CPU time (all CPUs, every process) in use over the session's
    windows (or those `(start, end)` given), weighted by their length; None for a session that
    did not measure it."""
    spans = windows if windows is not None else [(w.start, w.end) for w in ctx.data.windows]
    weighted = seconds = 0.0
    for start, end in spans:
        busy = ctx.data.host_busy.get(start)
        if busy is not None:
            length = max(0.0, end - start)
            weighted += busy * length
            seconds += length
    return weighted / seconds if seconds > 0 else None


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
