"""event_loop_blocked: application code holding the event loop thread.

Two sources, the measured one first:

- **The agent's loop watchdog** (when the agent ran in the process): every pass of the loop
  longer than the hold threshold (10 ms; a probed loop: every stall longer than 25 ms), with
  its exact duration and, for those the watchdog followed while they lasted, the loop thread's
  stack, whether one task held the loop all along (`LoopStall.held`) and the CPU time the thread
  used meanwhile. Passes held by one task are grouped by endpoint (or, without a route table,
  by application function) through the deepest application frame of their stack. A pass whose
  stack holds no application frame is the framework's own work for the request its task served
  when the watchdog named that request's route (`LoopStall.route`: FastAPI validating and
  serialising what a handler returned), located where the handler hands its result back;
  without a route, or in which many callbacks ran, it is the server's own work and no flag.
  Passes of a route's requests seen only at I/O that lets the GIL go (its response's send) or
  run mostly by the garbage collector add to a hold the route was seen making (`_seen_elsewhere`).
  Passes not seen in the act (ended between two looks, or
  seen once while shorter than a stall) are shared out among what was seen in passes of the
  same length on the same loop, so that a hold every request makes counts in full even though
  the watchdog, which looks only ten times a second unless alerted, catches some of them.
  What the loop thread was doing is the kernel's word: at each look during a stall the
  watchdog reads the thread's current system call (none: on a CPU; a sleep; a futex: a lock or
  the GIL; anything else: I/O), which tells a `time.sleep` from a sync query from CPU work even
  on a busy host; the thread's CPU time over the stall stands in where that is unreadable.
  Severity grades the group's share of the session's loop time (`loop_blocked_fraction`); a
  group that stalled the loop at least `LOW_MIN_STALLS` times and `loop_blocking_min_fraction`
  of the window is flagged low below that. A pass in which the kernel found the thread ready
  to run but waiting for a CPU at most looks is the host's (`HOST_MAJORITY`); of the others,
  the share of looks so queued is taken off the pass's time. The cause is `cpu` when the
  thread was running at most of the remaining looks, else `wait` (a sync sleep, sync I/O, a
  lock). Running looks that
  the watchdog took right as it got the GIL at once (`nogil`) found C code that released the
  GIL (hashing, compression): when they are most of the running ones, the evidence says so
  (`metric.gil_free_share`) and the advice is a thread, where such code runs in parallel with
  the loop. A hold seen fewer
  than `MIN_RECURRENCES` times (stalls, or sampling windows) is a one-off, such as an index
  built on first use, and no flag.
- **Stack samples** (also with the watchdog, for holds shorter than its threshold repeated on
  every request, such as a quick sync query; with the watchdog, only inside an endpoint's
  handler, whose request count tells many short holds from a long one: code outside any
  handler, such as a FastAPI dependency, is the watchdog's to judge, also in a worker it did
  not watch, such as one recycled before its agent reported): the loop thread's
  non-idle samples inside one endpoint's handler, RUNNING (the kernel measured the thread on
  a CPU) or BLOCKED (off-CPU, less the time the kernel says it waited in the run queue for a
  CPU; off-CPU samples in fewer than `MIN_RECURRENCES` windows count as none). Only long
  holds count:
  `loop_stall_ms_per_request` of off-CPU time per request, or `loop_cpu_ms_per_request` of loop
  time in all; without request counts (no agent), only the medium grade and above is flagged.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from apiscope.analysis.advice import (
    blocking_advice,
    cpu_advice,
    framework_of,
    native_advice,
    sync_handler_advice,
)
from apiscope.analysis.attribution import (
    framework_route,
    is_app_frame,
    library_call,
    tool_work_or_import,
    user_frame,
)
from apiscope.analysis.context import AnalysisContext, Attributed, Flag
from apiscope.analysis.flags import MetricValue, frame_location, make_flag, pct, where
from apiscope.analysis.thresholds import grade
from apiscope.frames import package_of
from apiscope.model import Frame, LoopStall, ThreadRole
from apiscope.source import hands_back_at

LOW_MIN_STALLS = 3
# A pass this long seen at one look only is taken as held by the code seen (a stall's stack
# before `held` was told); a shorter one needs two looks at one task (see LoopStall.held).
LONG_STALL_MS = 25.0
HOLD_MS = 10.0  # the shortest pass the agent records: the first length class
# A hold seen in fewer stalls, or fewer sampling windows, than this is a one-off (a cache or an
# index built on first use, once per worker), not what every other request keeps waiting for.
MIN_RECURRENCES = 3
# ... of which seen in the act (the rest: passes of its requests seen only in the collector or
# at I/O, see `_seen_elsewhere`).
MIN_SEEN = 2
# Running looks that found the GIL free, as a share of all running looks, from which the code
# that held the loop is called C code that released the GIL.
GIL_FREE_MAJORITY = 0.5
# Looks that found the loop thread ready to run but waiting for a CPU (a host short of CPUs),
# as a share of a pass's looks, from which the pass is the host's, not the code's: on a host
# whose two cores a load and other tenants kept busy, an `await client.get(...)` line and a
# middleware's `await call_next(request)` "held" the loop 9 and 5 times, 67-75% of the looks
# in the run queue. Below it, the queued share of a pass is taken off its time.
HOST_MAJORITY = 0.5
# Sleep and I/O looks, as a share of the looks, from which a hold described as running also
# names its waiting: a connection opened per call (password hashing, then the server's reply)
# runs about half the time and waits the rest.
ALSO_WAITING = 0.25

Group = tuple[str | None, str]  # (endpoint, function key when there is no endpoint)


@dataclass(slots=True)
class _Stalls:
    count: int = 0
    seconds: float = 0.0
    estimated: float = 0.0  # seconds of passes not seen in the act, shared out to this group
    estimated_count: float = 0.0
    # seconds seen, per (pid, length class)
    by_class: dict[tuple[int, int], float] = field(default_factory=lambda: defaultdict(float))
    cpu_seconds: float = 0.0
    cpu_known: float = 0.0  # seconds of stalls whose CPU time was measured
    longest_ms: float = 0.0
    lines: Counter[Frame] = field(default_factory=Counter)
    stacks: list[tuple[Frame, ...]] = field(default_factory=list)
    activity: Counter[str] = field(default_factory=Counter)  # the kernel's looks (see model)
    # Stalls held in the framework's own work for the route's requests (no line of the app
    # running), and the framework's calls the looks found them in.
    framework_work: int = 0
    framework_calls: Counter[str] = field(default_factory=Counter)
    # The library functions the app's line called in the holds (`library_call`): a sleep, a
    # driver's connect, a hash.
    calls: Counter[str] = field(default_factory=Counter)
    # Passes during the route's requests in which the garbage collector ran most of the time
    # (seconds, count): its allocations set the collector off.
    collected: float = 0.0
    collected_count: int = 0
    # Passes its requests' tasks held that the looks saw only at I/O letting the GIL go (the
    # response handed to the socket, a log line): seconds, count.
    at_io: float = 0.0
    at_io_count: int = 0
    # The routes of the requests whose tasks held the loop (as the watchdog named them), for a
    # group of app code outside any handler (a dependency, a middleware of the app's).
    routes: Counter[str] = field(default_factory=Counter)

    @property
    def elsewhere(self) -> float:
        return self.collected + self.at_io


SERVER: Group = (None, "<server>")  # passes seen holding no application code, or many
# Packages whose frames are a web framework's own request handling (routing, validation,
# serialisation, rendering through it).
WEB_FRAMEWORKS = frozenset({"starlette", "fastapi", "litestar", "django", "rest_framework",
                            "ninja", "quart", "falcon", "sanic", "blacksheep"})
# Modules whose frames at a look's leaf are I/O that lets the GIL go (a response's bytes
# handed to the socket, a log line written): the watchdog takes the GIL there at once, so its
# looks land in them far more often than the loop spends there. A hold seen there was not
# the framework's work, whatever else the pass did.
IO_MODULES = frozenset({"asyncio", "socket", "ssl", "selectors", "logging", "io", "_pyio"})
# The CPU a C library's own threads used while the loop waited in the call, as a share of the
# stalls' length, from which the stalls are that C code's (argon2's four lanes: about 3x).
NATIVE_MIN_SHARE = 0.5


FRAMEWORK_WORK_ADVICE = (
    "the framework's work for each request of this route (validating, serialising or rendering"
    " what the handler returns) holds the event loop: send less per request (paginate, fewer"
    " fields), or serialise once and cache the result (return a ready response)")


def _handler_frame(ctx: AnalysisContext, endpoint: str) -> Frame | None:
    """The handler of `endpoint` as a frame where it hands its result to the framework (its
    one `return`, else its `def` line, as its source says; its first line when the source is
    not readable here), when it is the app's own (a route the framework serves itself, such as
    FastAPI's /openapi.json, is not)."""
    route = ctx.route_info(endpoint)
    if route is None or framework_route(route):
        return None
    function = route.handler.rpartition(":")[2]
    file, line = (route.view_file, route.view_line) if route.view_file else (route.file,
                                                                             route.line)
    frame = Frame(function, file, line)
    if not file or not is_app_frame(frame, ctx.matcher.roots):
        return None
    return Frame(function, file, hands_back_at(file, line) or line)


def _framework_call(frames: tuple[Frame, ...]) -> str | None:
    """The web framework's call nearest the leaf of a stack ("fastapi's
    serialize_response()"), with the library below it when the leaf is another's; None when
    no framework frame is on the stack (the server's own work)."""
    for index in range(len(frames) - 1, -1, -1):
        package = package_of(frames[index].file)
        if package in WEB_FRAMEWORKS:
            call = f"{package}'s {frames[index].function}()"
            leaf = package_of(frames[-1].file)
            if index < len(frames) - 1 and leaf and leaf not in WEB_FRAMEWORKS:
                call += f", {leaf} below it"
            return call
    return None


MAX_ROUTES_NAMED = 4


def _route_framework(ctx: AnalysisContext, endpoint: str | None) -> str | None:
    """The framework serving a route, read off its requests' samples, else off any request's
    samples or holds of the loop (a quick route may have no sample): a hold in a task the
    request started (`asyncio.gather`'s children) shows no frame of the framework's own."""
    if endpoint is None:
        return None
    return framework_of(a.sample.frames for a in ctx.samples if a.endpoint == endpoint) or \
        framework_of(a.sample.frames for a in ctx.samples if a.endpoint is not None) or \
        framework_of(stall.frames for stall in ctx.data.loop_stalls)


def _only_route(group: _Stalls) -> str | None:
    """The one route whose requests made every hold of a group of app code outside the
    handlers (a dependency only that route uses), as the watchdog named them; None when the
    holds were several routes' or some unnamed."""
    if len(group.routes) == 1 and sum(group.routes.values()) == group.count:
        return next(iter(group.routes))
    return None


def _seen_elsewhere(stall: LoopStall) -> str | None:
    """Why a pass of a routed request's task was no one code's hold: "gc" (the collector ran
    most of it), "io" (its one task seen only at I/O that lets the GIL go), else None."""
    if not stall.route:
        return None
    if stall.held == "gc":
        return "gc"
    if stall.held in ("one", "glimpse") and stall.frames and _at_io(stall.frames):
        return "io"
    return None


def _at_io(frames: tuple[Frame, ...]) -> bool:
    """The look was taken at I/O that lets the GIL go (`IO_MODULES`)."""
    return package_of(frames[-1].file) in IO_MODULES


def _host_share(stall: LoopStall) -> float:
    """The share of the kernel's looks during a pass that found the loop thread ready to run
    but waiting for a CPU (0 without looks)."""
    looks = sum(stall.activity.values())
    return stall.activity.get("queue", 0) / looks if looks else 0.0


def _length_class(duration_ms: float) -> int:
    """Passes of 10-20 ms, 20-40 ms, 40-80 ms ... are compared with each other."""
    return max(0, int(math.log2(max(duration_ms, HOLD_MS) / HOLD_MS)))


def _key(endpoint: str | None, frame: Frame) -> Group:
    return (endpoint, "" if endpoint else f"{frame.file}:{frame.function.split('.')[0]}")


_WAITS = {"sleep": "in a sync sleep", "io": "in blocking I/O on a file or socket",
          "lock": "waiting for a lock or the GIL", "gil": "waiting for the GIL"}


@dataclass(frozen=True, slots=True)
class _Looks:
    """What the loop was doing in a group's stalls, in words, and its cause."""

    what: str
    cause: str  # "cpu", "wait" or "unknown"
    gil_free: float | None = None  # share of the running looks that found the GIL free

    @property
    def native(self) -> bool:
        """C code that released the GIL held the loop (most running looks found it free)."""
        return self.gil_free is not None and self.gil_free >= GIL_FREE_MAJORITY


def _describe_looks(activity: Counter[str], cpu_share: float | None) -> _Looks:
    """What the loop was doing, from what the kernel said at each look in the stalls.

    Looks at a thread ready to run but waiting for a CPU ("queue") are the host's, not the
    code's: they count for neither side, and the stalls' measured CPU share decides when they
    are all there is."""
    queued = activity.get("queue", 0)
    looks = sum(activity.values()) - queued
    host = (f"; ready but waiting for a CPU at {pct(queued / (looks + queued))} of them"
            if queued else "")
    if looks <= 0:
        what, cause = _describe(cpu_share)
        return _Looks(what + host, cause)
    free = activity.get("nogil", 0)
    running = (activity.get("cpu", 0) + free) / looks
    waits = (activity.get("sleep", 0) + activity.get("io", 0)) / looks
    # A futex is the GIL as often as a lock (and is the GIL where the agent knew its address):
    # Python computing beside other threads waits for the GIL between its turns, so only
    # sleeps and I/O count against CPU work. More running
    # looks than those, strictly: the first look is taken as the watchdog posts its probe,
    # before it knows there is a stall, and may catch the code just before it blocks.
    if running > waits and running > 0:
        gil_free = free / (running * looks)
        also = ""
        if waits >= ALSO_WAITING:
            kind = "sleep" if activity.get("sleep", 0) > activity.get("io", 0) else "io"
            also = f", {_WAITS[kind]} at {pct(waits)}"
        if gil_free >= GIL_FREE_MAJORITY:
            return _Looks(f"running C code that released the GIL, such as hashing or"
                          f" compression (on a CPU at {pct(running)} of the kernel's looks{also};"
                          f" the GIL free at {pct(gil_free)} of those on a CPU{host})", "cpu",
                          gil_free)
        # Computing Python gives the GIL up to the watchdog at each look, so a share of the
        # looks finds it waiting to take the GIL back: part of running, not a cause of its own
        # (a single thread computing alone was "waiting to take the GIL back at 45%", read as
        # contention; contention is measured apart, see gil_contention).
        on_gil, on_lock = activity.get("gil", 0) / looks, activity.get("lock", 0) / looks
        if on_lock:
            return _Looks(f"running CPU work (on a CPU at {pct(running)} of the kernel's looks,"
                          f" waiting for the GIL or a lock at {pct(on_gil + on_lock)}{also}"
                          f"{host})", "cpu", gil_free)
        turns = ", or between two turns of the GIL," if on_gil else ""
        return _Looks(f"running CPU work (on a CPU{turns} at {pct(running + on_gil)} of the"
                      f" kernel's looks{also}{host})", "cpu", gil_free)
    kind, count = max(((k, n) for k, n in activity.items()
                       if k not in ("cpu", "nogil", "queue")),
                      key=lambda kv: (kv[1], kv[0]))
    return _Looks(f"{_WAITS.get(kind, 'off-CPU')} (at {pct(count / looks)} of the kernel's"
                  f" looks{host})", "wait")


def _held_in(group: _Stalls) -> str | None:
    """The library call the app's line made in most of a group's holds, if any."""
    if not group.calls:
        return None
    call, count = group.calls.most_common(1)[0]
    return call if count * 2 > group.count else None


def _native_seconds(ctx: AnalysisContext, endpoint: str | None, lines: set[Frame]) -> float:
    """CPU seconds of a C library's own threads the loop waited for at `lines` (of
    `endpoint`'s requests): `Attributed.native` of the loop's samples there."""
    return sum(a.native for a in ctx.samples
               if a.native and a.role is ThreadRole.LOOP and a.endpoint == endpoint
               and a.user in lines)


def _native_looks(activity: Counter[str], native: float) -> _Looks:
    """The loop thread waited in the call (a futex, off-CPU) while its library's own threads
    computed `native` CPU seconds: C code's CPU, whatever the loop thread's looks say."""
    itself = ""
    counted = sum(activity.values()) - activity.get("queue", 0)
    if counted > 0:
        on_cpu = activity.get("cpu", 0) + activity.get("nogil", 0)
        itself = (f"; the loop thread itself on a CPU at {pct(on_cpu / counted)} of the"
                  f" kernel's looks")
    return _Looks(f"running C code on its library's own threads, such as argon2's lanes"
                  f" ({native:.2f} s of their CPU while the loop waited in the call{itself})",
                  "cpu", 1.0)


def _describe(cpu_share: float | None) -> tuple[str, str]:
    """(what the loop was doing, cause) from the measured CPU share of the blocked time."""
    if cpu_share is None:
        return "blocking it (CPU time not measured)", "unknown"
    if cpu_share >= 0.5:
        return f"running CPU work ({pct(cpu_share)} of that time on a CPU)", "cpu"
    return (f"waiting off-CPU: a sync sleep, sync I/O or a lock ({pct(cpu_share)} of that time"
            " on a CPU)"), "wait"


def watched_seconds(ctx: AnalysisContext, pids: set[int]) -> float:
    """The loop time the watchdogs watched, summed over the processes: each over the span its
    agent reported loop lag (a worker recycled within the session lived only part of it),
    else the session's length."""
    reported: dict[int, list[float]] = defaultdict(list)
    for lag in ctx.data.loop_lag:
        reported[lag.pid].append(lag.ts)
    total = 0.0
    for pid in pids or {0}:
        times = sorted(reported.get(pid, ()))
        if len(times) < 2:
            total += ctx.data.seconds
            continue
        # Each report covers the pull interval before it.
        interval = statistics.median(b - a for a, b in itertools.pairwise(times))
        total += min(ctx.data.seconds, times[-1] - times[0] + interval)
    return total


class EventLoopBlockedRule:
    kind = "event_loop_blocked"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        watched = {s.pid for s in ctx.data.loop_stalls} | {s.pid for s in ctx.data.loop_lag}
        flags = self._from_stalls(ctx, watched) if watched else []
        # Holds shorter than the watchdog's threshold, repeated on every request (a quick sync
        # query on the loop), show only in the samples: a group the watchdog flagged is not
        # flagged twice.
        seen = {(f.route, f.location.file if f.location else None) for f in flags}
        flags += [f for f in self._from_samples(ctx, watched)
                  if (f.route, f.location.file if f.location else None) not in seen]
        return flags

    # -- measured in the target -------------------------------------------------------------

    def _from_stalls(self, ctx: AnalysisContext, pids: set[int]) -> list[Flag]:
        groups: dict[Group, _Stalls] = defaultdict(_Stalls)
        seen: dict[tuple[int, int], float] = defaultdict(float)  # per (pid, length class)
        unseen: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
        # Passes of a route's requests seen only in the collector or at I/O: per route and
        # kind ("gc", "io"), [seconds, count].
        elsewhere: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for stall in ctx.data.loop_stalls:
            length = (stall.pid, _length_class(stall.duration_ms))
            place = self._place(ctx, stall)
            if place is None:
                unseen[length][0] += stall.duration_ms / 1000
                unseen[length][1] += 1
                continue
            seen[length] += stall.duration_ms / 1000
            key, user, framework = place
            kind = _seen_elsewhere(stall) if key == SERVER else None
            if kind is not None:
                elsewhere[(stall.route or "", kind)][0] += stall.duration_ms / 1000
                elsewhere[(stall.route or "", kind)][1] += 1
            if user is not None:
                self._add(groups[key], stall, user, length, framework)
                if key[0] is None and stall.route:  # app code outside the handlers
                    groups[key].routes[stall.route] += 1
        for group in groups.values():
            for length, seconds in group.by_class.items():
                if length in unseen:
                    share = seconds / seen[length]
                    group.estimated += unseen[length][0] * share
                    group.estimated_count += unseen[length][1] * share
        # The passes of a route's requests seen only in the collector or at I/O are that
        # route's, when it held the loop where the looks saw it too (a collection may start
        # in any request's allocation, and any response is sent: a route that holds the loop
        # makes most of them).
        for (route, kind), (seconds, count) in elsewhere.items():
            own = [g for (endpoint, _), g in groups.items() if endpoint == route]
            if own:
                group = max(own, key=lambda g: g.seconds)
                if kind == "gc":
                    group.collected, group.collected_count = seconds, int(count)
                else:
                    group.at_io, group.at_io_count = seconds, int(count)
        loop_seconds = watched_seconds(ctx, pids)
        if loop_seconds <= 0:
            return []
        flags = []
        for (endpoint, _), group in sorted(groups.items(), key=lambda kv: (kv[0][0] or "",
                                                                            kv[0][1])):
            fraction = (group.seconds + group.estimated + group.elsewhere) / loop_seconds
            severity = grade(fraction, ctx.thresholds.loop_blocked_fraction)
            # Seen in the act twice at least, and held that often with the passes of its
            # requests seen elsewhere.
            held = group.count + group.at_io_count + group.collected_count
            if severity is None and held >= LOW_MIN_STALLS and \
                    fraction >= ctx.thresholds.loop_blocking_min_fraction:
                severity = "low"
            if severity is not None and group.count >= MIN_SEEN and held >= MIN_RECURRENCES:
                flags.append(self._stall_flag(ctx, endpoint or _only_route(group), group,
                                              fraction, severity))
        return flags

    @staticmethod
    def _place(ctx: AnalysisContext, stall: LoopStall,
               ) -> tuple[Group, Frame | None, str | None] | None:
        """Whose hold a pass was: an endpoint's (or app function's) with its deepest
        application frame, the server's (`SERVER`, no frame), or not seen in the act (None);
        and, for a hold in the framework's own work for a route, the framework's call."""
        if stall.held in ("many", "gc"):
            # Many callbacks ran (the loop was busy, no one code held it), or the garbage
            # collector did, whatever line the looks found.
            return SERVER, None, None
        frames = stall.frames
        if not frames or (stall.held != "one" and stall.duration_ms < LONG_STALL_MS):
            return None
        if _host_share(stall) >= HOST_MAJORITY:
            # The kernel found the loop thread ready to run but waiting for a CPU at most of
            # its looks: the host had none to give it, whatever line it was at.
            return SERVER, None, None
        user = user_frame(frames, ctx.matcher.roots)
        if tool_work_or_import(frames):
            return SERVER, None, None  # the measurement's own work, or an import
        if user is None:
            # No line of the app ran: the server's own work, or the framework's for the
            # request the holding task served (validating, serialising what its handler
            # returned), which is that route's, located at its handler.
            handler = _handler_frame(ctx, stall.route) if stall.route else None
            call = _framework_call(frames) if handler is not None else None
            if call is None or _at_io(frames):
                return SERVER, None, None
            return (stall.route, ""), handler, call
        return _key(ctx.matcher.endpoint_of(frames), user), user, None

    @staticmethod
    def _add(group: _Stalls, stall: LoopStall, user: Frame, length: tuple[int, int],
             framework: str | None) -> None:
        frames = stall.frames
        # The share of the pass the thread waited for a CPU is the host's, not the code's.
        seconds = stall.duration_ms / 1000 * (1.0 - _host_share(stall))
        if framework is not None:  # the framework's work held the loop, at `framework`
            group.framework_work += 1
            group.framework_calls[framework] += 1
        group.count += 1
        group.seconds += seconds
        group.by_class[length] += seconds
        group.longest_ms = max(group.longest_ms, stall.duration_ms)
        group.lines[user] += 1
        call = library_call(frames, user)
        if call is not None:
            group.calls[call] += 1
        if stall.cpu_ms is not None:
            group.cpu_known += seconds
            group.cpu_seconds += min(seconds, stall.cpu_ms / 1000)
        if len(group.stacks) < 20:
            group.stacks.append(frames)
        group.activity.update(stall.activity)

    def _stall_flag(self, ctx: AnalysisContext, endpoint: str | None, group: _Stalls,
                    fraction: float, severity: str) -> Flag:
        hot = max(group.lines.items(), key=lambda kv: (kv[1], kv[0].file, kv[0].line))[0]
        loc = frame_location(hot)
        cpu_share = group.cpu_seconds / group.cpu_known if group.cpu_known else None
        looks = (_describe_looks(group.activity, cpu_share) if group.activity
                 else _Looks(*_describe(cpu_share)))
        native = _native_seconds(ctx, endpoint, set(group.lines))
        on_native = native >= NATIVE_MIN_SHARE * group.seconds
        if on_native:
            looks = _native_looks(group.activity, native)
        what, cause = looks.what, looks.cause
        framework = framework_of(group.stacks) or _route_framework(ctx, endpoint)
        total = group.seconds + group.estimated + group.elsewhere
        suggestion = (native_advice(framework) if looks.native else cpu_advice(framework)
                      if cause == "cpu" else blocking_advice(framework))
        inside = f"inside {where(loc)}"
        if group.framework_work * 2 > group.count:
            # The handler is where the route's code is; it was not running.
            call = group.framework_calls.most_common(1)[0][0]
            inside = (f"in the framework's own work for {endpoint}, no line of the app"
                      f" running ({call})")
            suggestion = FRAMEWORK_WORK_ADVICE
        else:
            suggestion = _sync_handler(ctx, endpoint, framework) or suggestion
            library = _held_in(group)
            if library is not None:
                inside += f" (calling {library}())"
        own = group.seconds + group.estimated
        own_fraction = fraction * own / total if total > 0 else fraction
        if group.estimated >= 0.005:
            held = (f"the event loop was held {group.count} times {inside} where the agent saw"
                    f" it ({group.seconds:.2f} s, longest {group.longest_ms:.0f} ms); with the"
                    f" passes of the same lengths it did not see in the act, about"
                    f" {group.count + group.estimated_count:.0f} times for {own:.2f} s"
                    f" ({pct(own_fraction)} of the session)")
        else:
            held = (f"the event loop stalled {group.count} times for {group.seconds:.2f} s in"
                    f" all ({pct(own_fraction)} of the session, longest"
                    f" {group.longest_ms:.0f} ms) {inside}")
        also = []
        if group.at_io_count:
            also.append(f"{group.at_io_count} passes ({group.at_io:.2f} s) its requests held"
                        " that the agent saw only as they sent their response or logged")
        if group.collected_count:
            also.append(f"{group.collected_count} passes ({group.collected:.2f} s) during its"
                        " requests in which the garbage collector ran most of the time, set off"
                        " by their allocations")
        if also:
            held += f"; and {' and '.join(also)} ({pct(fraction)} of the session in all)"
        if len(group.routes) > 1:  # app code outside the handlers, in several routes' requests
            named = ", ".join(f"{route} ({count})" for route, count in sorted(
                group.routes.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_ROUTES_NAMED])
            held += f", in the requests of {named}"
        evidence = f"{held}, {what}; every other request on that loop waited"
        requests = len(ctx.by_endpoint.get(endpoint, [])) if endpoint else 0
        metric: dict[str, MetricValue] = {
            "blocked_fraction": fraction, "blocked_seconds": total,
            "seen_seconds": group.seconds, "stalls": group.count,
            "longest_stall_ms": group.longest_ms, "cause": cause, "source": "watchdog"}
        if cpu_share is not None:
            metric["cpu_share"] = cpu_share
        if looks.gil_free is not None:
            metric["gil_free_share"] = looks.gil_free
        if on_native:
            metric["native_cpu_seconds"] = native
        if requests:
            metric["stall_ms_per_request"] = total * 1000 / requests
        if group.framework_work:
            metric["framework_share"] = group.framework_work / group.count
        if group.collected_count:
            metric["collector_seconds"] = group.collected
        if group.at_io_count:
            metric["seen_at_io_seconds"] = group.at_io
        return make_flag(self.kind, severity, endpoint, loc, evidence, metric, suggestion)

    # -- from stack samples -----------------------------------------------------------------

    def _from_samples(self, ctx: AnalysisContext, watched: set[int]) -> list[Flag]:
        loop = [a for a in ctx.samples if a.role is ThreadRole.LOOP]
        per_window: Counter[float] = Counter()
        for a in loop:
            per_window[a.window] += a.sample.count
        if not per_window:
            return []
        inside: dict[Group, list[Attributed]] = defaultdict(list)
        for a in loop:
            # Importing the app at start-up runs on the loop thread too, but before serving;
            # a profiler's sampler inside a handler is the measurement's time, not the app's.
            if a.active and a.user is not None and not a.importing and not a.tool:
                inside[_key(a.endpoint, a.user)].append(a)
        flags = []
        for (endpoint, _), samples in sorted(inside.items(), key=lambda kv: (kv[0][0] or "",
                                                                              kv[0][1])):
            if endpoint is None and watched:
                # No request counts to tell many short holds from a long one, and the
                # watchdog, which times every pass, is the one to say: it flagged what it saw.
                # A worker it did not watch serves the same app as those it did: one a
                # server recycled (gunicorn's --max-requests) before its agent reported read
                # medium here for an error handler's short passes (formatting and logging a
                # traceback, 1-2 ms each) that the others' watchdogs timed under 10 ms.
                continue
            flag = self._sample_flag(ctx, endpoint, samples, per_window,
                                     all(a.sample.pid in watched for a in samples))
            if flag is not None:
                flags.append(flag)
        return flags

    def _sample_flag(self, ctx: AnalysisContext, endpoint: str | None,
                     samples: list[Attributed], per_window: Counter[float],
                     watched: bool = False) -> Flag | None:
        """A flag from the loop thread's samples in one group; `watched`: the watchdog timed
        every pass of their loops."""
        th = ctx.thresholds
        mine: Counter[float] = Counter()
        for a in samples:
            mine[a.window] += a.sample.count
        if len(mine) < MIN_RECURRENCES:
            return None  # one burst (an index built on first use): a warm-up, not a pattern
        # A hold that recurs is there all along: judged without the window that holds most of
        # it, so that a one-off burst (a cache built on first use) with a small tail of later
        # updates is not taken for a pattern.
        burst = max(mine, key=lambda w: (mine[w], w))
        samples = [a for a in samples if a.window != burst]
        total = sum(n for w, n in per_window.items() if w != burst)
        count = sum(a.sample.count for a in samples)
        if not total or not count:
            return None
        fraction = count / total
        severity = grade(fraction, th.loop_blocked_fraction)
        # Off-CPU time waiting in the run queue (a starved host) is not the code's own wait.
        waits = sum(a.waited for a in samples)
        if len({a.window for a in samples if a.waited > 0}) < MIN_RECURRENCES:
            # Off-CPU in one or two windows is no pattern: at the budget's lowest rates one
            # sample stands for half a second (a `pendulum.now()` of 6 us, caught once off-CPU
            # at 2 Hz, read 14 ms of waiting per request of a Prefect route).
            waits = 0.0
        seconds = sum(a.cpu for a in samples) + waits if ctx.activity_known else sum(
            a.seconds for a in samples)
        burst_end = next((w.end for w in ctx.data.windows if w.start == burst), burst)
        requests = sum(1 for r in ctx.by_endpoint.get(endpoint, [])
                       if not burst <= r.start < burst_end) if endpoint else 0
        if requests:
            waits_ms, held_ms = waits * 1000 / requests, seconds * 1000 / requests
            if severity is None and fraction >= th.loop_blocking_min_fraction and \
                    waits_ms >= th.loop_stall_ms_per_request and ctx.activity_known:
                severity = "low"
            if waits_ms < th.loop_stall_ms_per_request and held_ms < th.loop_cpu_ms_per_request:
                return None
        elif severity == "low":
            return None  # without request counts a long stall cannot be told from many short
        if severity is None:
            return None
        lines: Counter[Frame] = Counter()
        for a in samples:
            lines[a.user] += a.sample.count  # type: ignore[index]  # user is set (see above)
        hot = max(lines.items(), key=lambda kv: (kv[1], kv[0].file, kv[0].line))[0]
        loc = frame_location(hot)
        cpu_share = (seconds - waits) / seconds if ctx.activity_known and seconds else None
        what, cause = _describe(cpu_share)
        if watched and cause == "cpu":
            # The watchdog timed every pass of the loop and recorded those that held it: the
            # route's CPU in passes shorter than that, its steps between awaits, kept other
            # requests waiting no longer (Jupyverse's directory listing: 29 ms of CPU a
            # request in many steps, the loop's lag p50 0 ms, read as a high hold). It is the
            # route's CPU (`cpu_hotspot`). Off-CPU waits on the loop, a short sync query's, are
            # blocking however short.
            return None
        framework = framework_of(a.sample.frames for a in samples[:20])
        evidence = (f"the event loop spent {pct(fraction)} of the window inside {where(loc)},"
                    f" {what}; every other request on that loop waited")
        metric: dict[str, MetricValue] = {"blocked_fraction": fraction,
                                          "blocked_seconds": seconds, "cause": cause,
                                          "source": "samples"}
        if requests:
            evidence += f"; {seconds * 1000 / requests:.0f} ms of loop time per request"
            metric["stall_ms_per_request"] = seconds * 1000 / requests
        suggestion = cpu_advice(framework) if cause == "cpu" else blocking_advice(framework)
        suggestion = _sync_handler(ctx, endpoint, framework) or suggestion
        return make_flag(self.kind, severity, endpoint, loc, evidence, metric, suggestion)


def _sync_handler(ctx: AnalysisContext, endpoint: str | None, framework: str | None,
                  ) -> str | None:
    """The advice for a route whose handler is a plain def run on the loop, where the
    framework does that (Litestar); None otherwise."""
    route = ctx.route_info(endpoint) if endpoint else None
    return sync_handler_advice(framework) if route is not None and not route.is_async else None
