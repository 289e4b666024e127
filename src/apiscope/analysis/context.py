"""Everything the rules read, loaded from a session once and attributed once.

`SessionData` is plain data (so tests and the diff can build or reuse it); `AnalysisContext`
adds what every rule needs derived from it: each stack sample's thread role, endpoint and
application frame, the endpoints' statistics and the thresholds.
"""

from __future__ import annotations

import linecache
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any

from apiscope.analysis.attribution import (
    RouteMatcher,
    app_roots,
    dispatch_lines,
    is_tool_work,
    offloaded_work,
    passes_on,
    request_frame,
)
from apiscope.analysis.thresholds import DEFAULT_SLO_MS, Thresholds
from apiscope.collectors.threads import stack_role
from apiscope.flag import Flag as Flag  # the rules' output type, re-exported for them
from apiscope.frames import is_app_frame, is_tool_file, package_of
from apiscope.model import (
    Frame,
    GilSample,
    LoopLagSample,
    LoopStall,
    OffloadLooks,
    ProfileNode,
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
from apiscope.source import enclosing_function
from apiscope.store.reader import SessionReader

# Thread roles whose samples run request handlers: the denominators of every share.
HANDLER_ROLES = frozenset({ThreadRole.LOOP, ThreadRole.WORKER})


@dataclass(frozen=True, slots=True)
class SessionData:
    """The parts of a session the analysis reads."""

    meta: SessionMeta
    routes: list[RouteInfo]
    roles: dict[tuple[int, int], ThreadRole]
    windows: list[WindowInfo]
    samples: list[tuple[float, StackSample]]  # (window start, sample)
    requests: list[RequestRecord]
    resources: list[ResourceSample]
    threadpool: list[ThreadPoolSample]
    profiles: list[StoredProfile]
    start: float
    end: float
    # The kernel's CPU seconds per window and thread (tid 0: the process); empty for sessions
    # recorded before it was measured.
    thread_cpu: list[ThreadCpu] = field(default_factory=list)
    process_cpu: list[ThreadCpu] = field(default_factory=list)
    # Looks at pool threads busy with endpoints' handed-off work (empty without the agent).
    offloaded: list[OffloadLooks] = field(default_factory=list)
    # What the agent's watchdogs measured in the target (empty without the agent).
    loop_stalls: list[LoopStall] = field(default_factory=list)
    loop_lag: list[LoopLagSample] = field(default_factory=list)
    gil: list[GilSample] = field(default_factory=list)
    # Requests still running, no response begun, as the collection ended (with the agent).
    unfinished: list[UnfinishedRequest] = field(default_factory=list)
    thread_names: dict[tuple[int, int], str] = field(default_factory=dict)
    # CPU seconds of threads Python does not run: (window start, pid, tid, frames of the
    # request thread waiting for them, seconds); tid 0 and no frames: not placed.
    native: list[tuple[float, int, int, tuple[Frame, ...], float]] = field(default_factory=list)
    # Window start -> the share of the host's CPU time in use (all CPUs, every process); empty
    # for sessions recorded before it was measured.
    host_busy: dict[float, float] = field(default_factory=dict)
    # (window start, pid, tid) -> looks that found a thread of the process waiting for the GIL
    # while this one held it (tid 0: not named); empty for older sessions.
    gil_holders: dict[tuple[float, int, int], int] = field(default_factory=dict)
    # pid -> when a process the session followed exited before the session ended.
    exited: dict[int, float] = field(default_factory=dict)
    # The threads that ran endpoints' handed calls, per pull (empty without the agent).
    thread_spans: list[ThreadSpan] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


def load_session(reader: SessionReader) -> SessionData:
    meta = reader.meta()
    windows = reader.windows()
    span = reader.time_range()
    start = float(meta.start or (span[0] if span else 0.0))
    end = float(meta.end or (span[1] if span else start))
    threads = reader.threads()
    return SessionData(
        meta=meta, routes=reader.routes(),
        roles={key: role for key, (_, role) in threads.items()},
        thread_names={key: name for key, (name, _) in threads.items() if name},
        windows=windows, samples=list(reader.samples()),
        requests=reader.requests(with_queries=True), resources=reader.resources(),
        threadpool=reader.threadpool(), profiles=reader.profiles(), start=start,
        end=max(start, end), thread_cpu=reader.thread_cpu(), process_cpu=reader.process_cpu(),
        loop_stalls=reader.loop_stalls(), loop_lag=reader.loop_lag(), gil=reader.gil_samples(),
        unfinished=reader.unfinished(), offloaded=reader.offloaded(),
        native=[(start, c.pid, c.tid, reader.stack(c.stack_id) if c.stack_id else (), c.seconds)
                for start, c in reader.native_cpu()],
        host_busy=reader.host_busy(), gil_holders=reader.gil_holders(),
        exited={p.pid: p.exited_at for p in reader.processes() if p.exited_at is not None},
        thread_spans=reader.thread_spans())


@dataclass(frozen=True, slots=True)
class Attributed:
    """One stack sample with what the rules ask of it."""

    window: float  # the window's start
    sample: StackSample
    role: ThreadRole
    endpoint: str | None
    user: Frame | None  # the leaf-most application frame
    seconds: float  # the time its `count` samples stand for (count / rate)
    importing: bool = False  # inside an import (the app being loaded at start-up)
    tool: bool = False  # apiscope's agent or an in-process profiler at work (overhead)
    cpu: float = 0.0  # CPU seconds these samples stand for (see `cpu_seconds`)
    # A BLOCKED sample's seconds: off-CPU for a reason of the thread's own (a sleep, I/O, a
    # lock, the GIL); waiting for a free CPU is RUNNABLE, measured apart.
    waited: float = 0.0
    # Work a handler handed to a pool thread, no app or framework frame on it (see
    # `attribution.offloaded_work`): the endpoints' by the agent's looks (`cpu.offloaded_cpu`).
    offloaded: bool = False
    # CPU seconds of threads Python does not run that these (BLOCKED) samples waited for in a
    # C extension's call (`collectors/native.py`): the route's, never a line's own CPU.
    native: float = 0.0
    # A request's own work that no frame may name the route of: its sync code, run by asgiref
    # in a thread of its own (a Django view, a `TemplateResponse` rendered after it returned),
    # or a greenlet's stack on the loop thread, with no loop under it (SQLAlchemy's asyncio
    # ORM compiling a query and loading its rows), or a compiled database protocol's callback
    # on the loop (`_in_compiled_protocol`). Never the server's own work.
    request_work: bool = False

    @property
    def active(self) -> bool:
        return self.sample.state is not SampleState.WAITING


@dataclass(frozen=True, slots=True)
class AnalysisContext:
    data: SessionData
    thresholds: Thresholds
    matcher: RouteMatcher
    samples: list[Attributed]
    by_endpoint: dict[str, list[RequestRecord]]
    earlier: tuple[Flag, ...] = ()  # flags of the rules run before this one
    functions: dict[tuple[str, int], str] = field(default_factory=dict)
    # True when RUNNING means on a CPU: measured by the kernel (thread_cpu), or told by an
    # older sampler's probe (BLOCKED samples). Without it a RUNNING sample may be a thread
    # sleeping or in I/O at that line.
    activity_known: bool = False
    # The application's lines seen above a handler's frame: its middleware passing requests
    # on (`attribution.dispatch_lines`). No work below them is theirs.
    dispatch: frozenset[tuple[str, int]] = frozenset()
    # What several rules compute from the same session, computed once (kept across the
    # copies `run_rules` makes of the context): see `profiles.route_profiles`.
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def slo_ms(self) -> float:
        return self.thresholds.slo_ms or DEFAULT_SLO_MS

    def route_info(self, endpoint: str) -> RouteInfo | None:
        method, _, template = endpoint.partition(" ")
        for route in self.data.routes:
            if route.method == method and route.template == template:
                return route
        handler = self.matcher.handler_of(endpoint)
        for route in self.data.routes:  # e.g. HEAD charged to its GET
            if handler is not None and route.handler == handler:
                return route
        return None

    def function_at(self, file: str | None, line: int | None) -> str | None:
        """The function a (file, line) belongs to: as a stack sample there named it, else as
        the source file says (when it is readable here)."""
        if file is None or line is None:
            return None
        return self.functions.get((file, line)) or enclosing_function(file, line)


def cpu_seconds(data: SessionData) -> dict[tuple[float, int, int], float]:
    """The kernel's CPU seconds per RUNNING sample of each (window, pid, tid).

    A thread's measured CPU in a window is shared out over its RUNNING samples, so the figures
    of its stacks add up to exactly what the kernel measured, even when py-spy missed some
    samples of it. Threads not measured (older sessions, a thread that ended within the
    window) count 1 / rate per RUNNING sample.
    """
    measured = {(c.window, c.pid, c.tid): c.seconds for c in data.thread_cpu}
    running: dict[tuple[float, int, int], int] = defaultdict(int)
    for window, sample in data.samples:
        if sample.state is SampleState.RUNNING:
            running[(window, sample.pid, sample.tid)] += sample.count
    return {key: measured[key] / count for key, count in running.items() if key in measured}


def attribute(data: SessionData, matcher: RouteMatcher,
              ) -> tuple[list[Attributed], set[tuple[str, int]]]:
    """Each sample attributed, and the middleware lines passing requests on."""
    rates = {w.start: w.rate_hz for w in data.windows}
    per_sample = cpu_seconds(data)
    native = {(window, pid, tid, frames): seconds
              for window, pid, tid, frames, seconds in data.native if frames}
    facts, passing = _stack_facts(data, matcher)
    out = []
    for window, sample in data.samples:
        # The reader shares one tuple per distinct stack, so its id is a cheap key; the tuple is
        # kept in the facts, so the id cannot be reused while they live.
        hit = facts[id(sample.frames)]
        role = data.roles.get((sample.pid, sample.tid), ThreadRole.OTHER)
        rate = rates.get(window) or data.meta.rate_hz or 100
        seconds = sample.count / rate
        cpu = waited = 0.0
        key = (window, sample.pid, sample.tid)
        if sample.state is SampleState.RUNNING:
            each = per_sample.get(key)
            cpu = seconds if each is None else each * sample.count
        elif sample.state is SampleState.BLOCKED:
            waited = seconds
        waited_for = native.get((window, sample.pid, sample.tid, sample.frames), 0.0) \
            if native and sample.state is SampleState.BLOCKED else 0.0
        request_work = hit[6] or (role is ThreadRole.LOOP and not hit[7])
        out.append(Attributed(window, sample, role, hit[1], hit[2], seconds, hit[3], hit[4],
                              cpu, waited, hit[5], waited_for, request_work))
    return _one_request_threads(out, data), passing


def _runs_sync_request_code(frames: Sequence[Frame]) -> bool:
    """Inside asgiref's `SyncToAsync.thread_handler`: a request's sync code (a Django view,
    sync middleware, a `TemplateResponse` rendered after its view returned)."""
    return any(f.function.endswith("thread_handler") and f.file.endswith("asgiref/sync.py")
               for f in frames)


# Where asyncio's transports hand received bytes to their protocol (`selector_events` for a
# plain socket, `sslproto` for TLS), and the protocol methods they call.
_TRANSPORT_READS = (("asyncio/selector_events.py", ("_read_ready__data_received",
                                                    "_read_ready__get_buffer")),
                    ("asyncio/sslproto.py", ("_do_read__copied", "_do_read__buffered")))
_PROTOCOL_METHODS = ("data_received", "buffer_updated", "get_buffer")


def _in_compiled_protocol(frames: Sequence[Frame]) -> bool:
    """Inside a compiled protocol's callback on the loop: a database driver's (asyncpg's Cython
    protocol parsing query results and answering its authentication) reading what its socket
    received. The transport calls the protocol and no Python frame of the protocol's own
    follows: the next frame, if any, is something the compiled code called (the transport's
    `write`, `base64`, `re`). That work is the requests' queries, not the server's: a Piccolo
    admin's asyncpg connections read as 40% of its server's CPU. An HTTP server's protocols
    (uvicorn's, hypercorn's, the standard library's streams) are Python: their
    `data_received` is the next frame.

    At the leaf, the transport's line tells: the protocol call (`protocol.data_received(data)`),
    not the socket's `recv`, as the source says where it is readable here."""
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        if any(frame.file.endswith(file) and frame.function.endswith(functions)
               for file, functions in _TRANSPORT_READS):
            if index + 1 < len(frames):
                return not frames[index + 1].function.endswith(_PROTOCOL_METHODS)
            text = linecache.getline(frame.file, frame.line)
            return any(f"{name}(" in text for name in _PROTOCOL_METHODS)
    return False


def _one_request_threads(samples: list[Attributed], data: SessionData) -> list[Attributed]:
    """Django's ASGI handler runs each request's sync code in a thread of its own (asgiref's
    executor per `ThreadSensitiveContext`), and much of it with no handler frame on the stack:
    a `TemplateResponse` renders after its view returned, sync middleware runs around it (an
    event's permission check, its queries), waits there while an async part runs on the loop.

    What the agent measured says whose such a thread's samples are: the threads that ran each
    route's handed calls (`ThreadSpan`). An active sample of a thread whose spans overlapping
    its window all name one endpoint is that endpoint's. On pretalx (Django 6, its sync
    middleware querying the event of each request), sampled at 1-2 Hz by the budget on a busy
    host, 250 such threads held 38% of the sampled CPU with no route before.

    Without spans (an older session, `--no-inject`), the frames say what they can: where a
    thread's samples in a window name one endpoint, its route-less samples inside asgiref's
    handler are that endpoint's too. A thread whose samples or spans name several endpoints (a
    pool shared by requests) keeps them route-less."""

    def sync_code(a: Attributed) -> bool:  # request work off the loop thread: asgiref's
        return a.request_work and a.role is not ThreadRole.LOOP

    spans: dict[tuple[int, int], list[ThreadSpan]] = defaultdict(list)
    for span in data.thread_spans:
        spans[(span.pid, span.tid)].append(span)
    ends = {w.start: w.end for w in data.windows}

    def spanned(a: Attributed) -> str | None:
        found = spans.get((a.sample.pid, a.sample.tid))
        if not found:
            return None
        end = ends.get(a.window, a.window)
        named = {s.endpoint for s in found if s.start <= end and s.end >= a.window}
        return next(iter(named)) if len(named) == 1 else None

    named: dict[tuple[float, int, int], set[str]] = defaultdict(set)
    for a in samples:
        if a.endpoint is not None and sync_code(a):
            named[(a.window, a.sample.pid, a.sample.tid)].add(a.endpoint)
    if not named and not spans:
        return samples
    out = []
    for a in samples:
        if a.endpoint is None and not a.tool and not a.offloaded \
                and a.role is not ThreadRole.LOOP:
            endpoint = spanned(a) if spans and a.active else None
            if endpoint is None and sync_code(a):
                endpoints = named.get((a.window, a.sample.pid, a.sample.tid))
                if endpoints is not None and len(endpoints) == 1:
                    endpoint = next(iter(endpoints))
            if endpoint is not None:
                a = replace(a, endpoint=endpoint, request_work=True)
        out.append(a)
    return out


_Facts = tuple[tuple[Frame, ...], str | None, Frame | None, bool, bool, bool, bool, bool]


def task_entry(frames: Sequence[Frame]) -> tuple[str, str] | None:
    """(file, function) of the coroutine an event loop's task runs in a loop thread's stack:
    the first frame after the loop's own (asyncio's, from `asyncio.run` down to the handle it
    runs; uvloop runs its handles in C below `Runner.run`), past apiscope's profiler; None for
    a stack of no loop."""
    in_loop = False
    for frame in frames:
        if package_of(frame.file) == "asyncio":
            in_loop = True
        elif in_loop and not is_tool_file(frame.file):
            return frame.file, frame.function
    return None


def app_task_entry(frames: Sequence[Frame], roots: Sequence[str]) -> tuple[str, str] | None:
    """`task_entry`, where it is the application's function (not a library's wrapper that runs
    every task of its kind, nor a server's request task)."""
    entry = task_entry(frames)
    if entry is not None and is_app_frame(Frame(entry[1], entry[0], 0), roots):
        return entry
    return None


def task_routes(stalls: Sequence[LoopStall], roots: Sequence[str],
                ) -> dict[tuple[str, str], str]:
    """The route of the requests each application coroutine run as a task of its own served
    (`task_entry`), where the agent's loop watchdog named one route at every hold it saw in
    such tasks: a task a request started (`asyncio.gather`'s children, a fetch in a task of
    its own) shows no handler frame, but carries its request in its context
    (`agent.loopwatch.serving_scope`). An entry seen for several routes, or for none (a
    background task), names none; so does one of a server's or a library's (a request's own
    task, run by the server, serves every route)."""
    seen: dict[tuple[str, str], set[str | None]] = defaultdict(set)
    for stall in stalls:
        entry = app_task_entry(stall.frames, roots)
        if entry is not None:
            seen[entry].add(stall.route)
    return {entry: route for entry, routes in seen.items() if len(routes) == 1
            for route in routes if route is not None}


def _stack_facts(data: SessionData, matcher: RouteMatcher,
                 ) -> tuple[dict[int, _Facts], set[tuple[str, int]]]:
    """Per distinct stack: (frames, endpoint, application frame, importing, tool work, work
    handed to a pool, inside asgiref's sync code, a loop under it). The
    application frame is the handler's (`request_frame`); a middleware line passing requests
    on (`dispatch_lines`) is none when no handler runs below it. A task a request started
    has its route where the loop watchdog named it (`task_routes`), and no handler frame."""
    handlers: dict[int, tuple[tuple[Frame, ...], int | None, str | None]] = {}
    spawned = task_routes(data.loop_stalls, matcher.roots)
    for _, sample in data.samples:
        if id(sample.frames) not in handlers:
            found = matcher.handler_at(sample.frames)
            index, endpoint = found if found is not None else (None, None)
            if found is None and spawned:  # a task a request started: its route, no handler
                endpoint = spawned.get(task_entry(sample.frames) or ("", ""))
            handlers[id(sample.frames)] = (sample.frames, index, endpoint)
    passing = dispatch_lines(((f, i) for f, i, _ in handlers.values()), matcher.roots)
    facts = {}
    for key, (frames, index, endpoint) in handlers.items():
        user = request_frame(frames, index, matcher.roots)
        if passes_on(user, index, passing):
            user = None
        facts[key] = (frames, endpoint, user,
                      any(f.file.startswith("<frozen importlib") for f in frames),
                      is_tool_work(frames),
                      endpoint is None and offloaded_work(frames, matcher.roots),
                      _runs_sync_request_code(frames) or _in_compiled_protocol(frames),
                      stack_role(frames) is ThreadRole.LOOP)
    return facts, passing


def distinct_stacks(data: SessionData) -> Iterator[tuple[Frame, ...]]:
    """Each stack the samples and the watchdog's stalls show, once (the store hands out one
    tuple per distinct stack)."""
    seen: set[int] = set()
    for frames in chain((s.frames for _, s in data.samples),
                        (s.frames for s in data.loop_stalls)):
        if id(frames) not in seen:
            seen.add(id(frames))
            yield frames


def labelled_stacks(stalls: Iterable[LoopStall], profiles: Iterable[StoredProfile],
                    roots: Sequence[str]) -> Iterator[tuple[tuple[Frame, ...], str]]:
    """Stacks the agent saw running one request, with its endpoint: the watchdog's holds of
    the loop, and each sampled request's profile (its paths down to an application frame, by
    the app's directories `roots`)."""
    for stall in stalls:
        if stall.route and stall.frames:
            yield stall.frames, stall.route
    for profile in profiles:
        if profile.tree is None:
            continue
        todo: list[tuple[ProfileNode, tuple[Frame, ...]]] = [
            (child, ()) for child in profile.tree.children]
        while todo:
            node, above = todo.pop()
            path = (*above, Frame(node.function, node.file, node.line))
            if node.file and is_app_frame(path[-1], roots):
                yield path, profile.endpoint
                continue
            todo.extend((child, path) for child in node.children)


def build_context(data: SessionData, thresholds: Thresholds) -> AnalysisContext:
    by_endpoint: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in data.requests:
        by_endpoint[record.endpoint].append(record)
    roots = app_roots(data.routes, distinct_stacks(data))
    matcher = RouteMatcher(data.routes, by_endpoint, roots)
    matcher.learn(labelled_stacks(data.loop_stalls, data.profiles, roots))
    functions: dict[tuple[str, int], str] = {}
    seen: set[int] = set()
    for _, sample in data.samples:
        if id(sample.frames) not in seen:  # each distinct stack once (see `attribute`)
            seen.add(id(sample.frames))
            for frame in sample.frames:
                functions.setdefault((frame.file, frame.line), frame.function)
    samples, passing = attribute(data, matcher)
    known = bool(data.thread_cpu) or any(
        a.sample.gil is not None or a.sample.state is SampleState.BLOCKED for a in samples)
    return AnalysisContext(data, thresholds, matcher, samples, dict(by_endpoint),
                           functions=functions, activity_known=known,
                           dispatch=frozenset(passing))
