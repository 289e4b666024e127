"""slow_endpoint: p95 latency above the objective (`--slo-ms`).

Needs `min_requests` requests, so one slow request among few is not a trend (and one slow
request among thousands does not move p95). Severity grows with p95 / slo, where the p95 is the
value the route's true p95 is at least with 90% confidence (`stats.quantile_lower_bound`): the
p95 of a dozen requests is their slowest one or two, and a single request that waited behind a
busy host's other work read 476 ms beside a 129 ms median; the bound of a dozen is their
third slowest, and of thousands a hair under the p95 itself. When an earlier
flag explains the latency, the evidence says so: the event loop blocked by *another* endpoint
(for async routes, and for sync routes whose handler took under half their latency), a
saturated thread pool (for sync routes), or a flag on this very route.
A route slowed only by another route's flag is a symptom, not a bottleneck of its own: it gets
no flag (a healthy endpoint gets none), the cause is flagged on its own route, and the
report's endpoint table still shows the route's latency.

A streamed response (server-sent events, a download, generated tokens) lasts as long as its
stream by design: its latency is the time to the response's head (`RequestRecord.latency_ms`),
what the client waited before the stream began. The evidence names as streams only the
responses whose body went on for `STREAM_MIN_MS` and `STREAM_MIN_SHARE` of the request after the
head: a middleware that passes every response on in pieces (Starlette's `BaseHTTPMiddleware`,
which FastAPI's `@app.middleware("http")` is) sends a whole body within a millisecond of its
head, and such a request is not a stream to the user.

p95 is judged on the requests after the session's warm-up (`warmup_end`, as the other
steady-state rules do), when at least `min_requests` of them remain: the first requests of a
freshly started server fill caches and connection pools once, and a p95 driven only by them
says nothing about the endpoint's steady latency. The endpoint table still counts them all.

Three measured causes that are not a defect of the route's code grade the flag low and say so:
its profiled requests spend their time waiting to be notified by something else in the same
process (an asyncio `Event.wait()`, `Condition.wait()` or `Queue.get()`: a long poll or a
subscription waits so by design; see `analysis.profiles.rendezvous`),
the host had no CPU to spare (the request threads waited in the OS run queue for
`STARVED_SHARE` or more of the time they could run, and the host's CPUs were `HOST_BUSY` or
more in use: add capacity, or find the route that eats it; on a host with CPUs to spare the
same waits are wake-up latency, measured 52-56% of a Django server's thread time on a host
57% idle), or most of the route's median latency is CPU inside a library call it makes on purpose
(a password hash on login: `LIBRARY_SHARE` of p50 or more).

A route whose requests open database connections (the agent counts and times the drivers'
`connect`: no pool, SQLAlchemy's `NullPool`, Django's `CONN_MAX_AGE = 0`) is told so when the
handshakes take `CONNECT_SHARE` of its median latency or more, and advised to keep connections
in a pool: a Piccolo admin without its pool opened three connections a request, a third of its
latency, and each one a new PostgreSQL backend process on a host with no CPU to spare.

The location is the slow call, not the route's decorator: the dominant await site of its
profiled requests when one dominates, else the application line where the route's threads
spent most of their (wall-clock) time in the stack samples when that accounts for a fifth of
the median request at least, else the handler.

Requests that never finished are slow too, and the slowest of all: a route whose requests were
stuck when the session ended (see `analysis.unfinished`) is flagged for them, located where
they waited, whatever its finished requests' p95.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from apiscope.agent.queries import connection_driver, is_connection
from apiscope.analysis.attribution import library_call
from apiscope.analysis.context import HANDLER_ROLES, AnalysisContext, Flag
from apiscope.analysis.cpu import host_busy_share, runqueue_shares
from apiscope.analysis.flags import (
    Location,
    MetricValue,
    frame_location,
    handler_location,
    location,
    make_flag,
    pct,
)
from apiscope.analysis.profiles import (
    RouteProfiles,
    describe_dominant,
    dominant_site,
    graded_wait,
    route_profiles,
)
from apiscope.analysis.stats import percentile, quantile_lower_bound, warmup_end
from apiscope.analysis.thresholds import grade
from apiscope.analysis.unfinished import SUGGESTION as SUGGEST_STUCK
from apiscope.analysis.unfinished import Stuck, stuck_requests
from apiscope.model import Frame, RequestRecord, ThreadRole

STARVED_SHARE = 0.25
HOST_BUSY = 0.8
LIBRARY_SHARE = 0.5
LOOP_SHARE = 0.5
LINE_SHARE = 0.2  # of the median request: a sampled line that explains less is not the slow call
CONNECT_SHARE = 0.2  # of the median request: connections opened that take less are no cause
STREAM_MIN_MS = 10.0
STREAM_MIN_SHARE = 0.1
CONFIDENCE = 0.9  # of the p95's lower bound, which grades the flag
FEW_REQUESTS = 100  # fewer: the evidence gives the bound beside the p95

SUGGEST_CAPACITY = ("the host's CPUs were saturated: give the server more CPU or fewer"
                    " competing processes, or reduce the CPU the busiest routes use (see"
                    " cpu_hotspot and each route's CPU share)")
SUGGEST_LIBRARY = ("the time is the library call's own work: lower its cost (its parameters),"
                   " cache its result, or serve this route from more workers")
SUGGEST_POOL = {
    "asyncpg": "keep connections open in a pool and reuse them across requests: one"
               " asyncpg.create_pool() at start-up, connections acquired from it (an ORM's own"
               " pool: SQLAlchemy's default QueuePool, not NullPool; Piccolo's"
               " engine.start_connection_pool())",
    "psycopg": "keep connections open in a pool and reuse them across requests: psycopg_pool's"
               " ConnectionPool, SQLAlchemy's default QueuePool (not NullPool), or Django's"
               " CONN_MAX_AGE (persistent connections) or OPTIONS['pool']",
    "psycopg2": "keep connections open in a pool and reuse them across requests:"
                " psycopg2.pool, SQLAlchemy's default QueuePool (not NullPool), or Django's"
                " CONN_MAX_AGE (persistent connections)",
}
SEVERITY_ORDER = ("low", "medium", "high")
SUGGESTION = ("profile one slow request (see the flamegraph for this route) and fix what"
              " dominates it; the other flags on this report point at likely causes")


def handler_ms(ctx: AnalysisContext, endpoint: str) -> float:
    """Milliseconds per request the endpoint's sync handler spent in its thread-pool threads,
    running or waiting on its own calls (stack samples, wall clock)."""
    seconds = sum(a.seconds for a in ctx.samples
                  if a.endpoint == endpoint and a.active and a.role is ThreadRole.WORKER
                  and not a.tool)
    return seconds * 1000 / max(1, len(ctx.by_endpoint.get(endpoint, ())))


def explanations(ctx: AnalysisContext, endpoint: str, p50: float) -> tuple[list[str], bool]:
    """Why the endpoint is slow, from earlier flags; and whether only *other* routes' flags
    explain it (then it is a symptom, not a cause of its own).

    A blocked event loop delays every request of an ASGI server, a sync handler's too (the
    loop reads it, dispatches it to the thread pool and sends its response). For a sync route
    it is taken as the explanation only when the handler's own time in its thread is under
    half the route's median latency (`LOOP_SHARE`), so a slow handler is not hidden by
    another route's flag."""
    route = ctx.route_info(endpoint)
    is_async = route.is_async if route is not None else None
    loop_delays = is_async is not False or handler_ms(ctx, endpoint) < LOOP_SHARE * p50
    out, own = set(), False
    for flag in ctx.earlier:
        kind, other = flag.kind, flag.route
        if kind == "event_loop_blocked" and other != endpoint and loop_delays:
            out.add(f"the event loop was blocked by {other or 'unattributed code'}"
                    " (see event_loop_blocked)")
        elif kind == "threadpool_saturation" and is_async is False:
            out.add("sync handlers waited for the saturated thread pool"
                    " (see threadpool_saturation)")
            own = own or other == endpoint
        elif other == endpoint and kind != "error_rate":
            out.add(f"see {kind} on this route")
            own = True
    return sorted(out), bool(out) and not own


def slow_call(ctx: AnalysisContext, endpoint: str, profiles: RouteProfiles | None,
              p50_ms: float = 0.0) -> Location | None:
    """Where the endpoint's time goes (see the module docstring). A line of the samples must
    account for `LINE_SHARE` of the median request at least: an awaiting route leaves few
    samples, at whatever bit of Python it ran (rendering its small answer), which is not
    where its time goes."""
    site = profiles.dominant if profiles is not None else None
    if site is not None and site.share >= ctx.thresholds.await_share[0]:
        return location(site.file, site.line, site.function)
    lines: dict[Frame, float] = defaultdict(float)
    for a in ctx.samples:
        if (a.endpoint == endpoint and a.active and a.user is not None and not a.tool
                and a.role in HANDLER_ROLES):
            lines[a.user] += a.seconds
    requests = len(ctx.by_endpoint.get(endpoint, ()))
    if lines and requests:
        hot, seconds = max(lines.items(), key=lambda kv: (kv[1], kv[0].file, kv[0].line))
        if seconds * 1000 / requests >= LINE_SHARE * p50_ms:
            return frame_location(hot)
    return handler_location(ctx, endpoint)


def library_cost(ctx: AnalysisContext, endpoint: str, requests: int) -> tuple[str, float] | None:
    """(the library function, CPU ms per request inside library calls) of an endpoint: its
    own threads' and the CPU of a library's own threads its requests waited for there
    (`Attributed.native`: argon2's lanes use 96% of what a verify costs)."""
    calls: Counter[str] = Counter()
    cpu = 0.0
    for a in ctx.samples:
        if a.endpoint == endpoint and (a.cpu > 0 or a.native > 0) and not a.tool:
            call = library_call(a.sample.frames, a.user)
            if call is not None:
                calls[call] += a.sample.count
                cpu += a.cpu + a.native
    if not calls or not requests:
        return None
    return calls.most_common(1)[0][0], cpu * 1000 / requests


class SlowEndpointRule:
    kind = "slow_endpoint"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        flags = self._latency(ctx)
        stuck = stuck_requests(ctx)
        out = []
        for flag in flags:
            found = stuck.pop(flag.route or "", None)
            out.append(flag if found is None else _with_stuck(flag, found))
        for endpoint, found in sorted(stuck.items()):
            loc = frame_location(found.where) or handler_location(ctx, endpoint)
            out.append(make_flag(self.kind, found.severity, endpoint, loc, found.evidence(),
                                 _stuck_metric(found), SUGGEST_STUCK))
        return out

    def _latency(self, ctx: AnalysisContext) -> list[Flag]:
        flags = []
        profiled = route_profiles(ctx) if ctx.data.profiles else {}
        warm = warmup_end(ctx)
        # Whether the host had no CPU to spare: one answer for every route.
        starved = max(runqueue_shares(ctx).values(), default=0.0)
        host = host_busy_share(ctx)
        if host is not None and host < HOST_BUSY:
            starved = 0.0  # CPUs to spare: the waits were wake-ups, not want of CPU
        for endpoint in sorted(ctx.by_endpoint):
            records = ctx.by_endpoint[endpoint]
            steady = [r for r in records if r.start >= warm]
            if len(steady) >= ctx.thresholds.min_requests:
                records = steady
            if len(records) < ctx.thresholds.min_requests:
                continue
            latencies = sorted(r.latency_ms for r in records)
            p95 = percentile(latencies, 0.95)
            bound = quantile_lower_bound(latencies, 0.95, CONFIDENCE)
            severity = grade(bound / ctx.slo_ms, ctx.thresholds.slow_p95_ratio)
            if severity is None or bound <= ctx.slo_ms:
                continue
            evidence = f"p95 {p95:.0f} ms over {len(records)} requests"
            if len(records) < FEW_REQUESTS:
                evidence += f" (at least {bound:.0f} ms at {CONFIDENCE:.0%} confidence)"
            evidence += (f", above the {ctx.slo_ms:.0f} ms objective"
                         f" (p50 {percentile(latencies, 0.5):.0f} ms)")
            streams = [r.duration_ms for r in records if _streamed(r)]
            if streams:
                evidence += (f"; {len(streams)} of them streamed, timed to the response's head"
                             f" (their whole streams p50 {percentile(sorted(streams), 0.5):.0f}"
                             " ms)")
            reasons, symptom = explanations(ctx, endpoint, percentile(latencies, 0.5))
            site = dominant_site(profiled.get(endpoint), ctx.thresholds.await_share[0])
            if site is not None:
                evidence += "; " + describe_dominant(site)
            if reasons:
                evidence += "; " + "; ".join(reasons)
            if symptom:  # the cause is flagged on another route, at its own severity
                continue
            p50 = percentile(latencies, 0.5)
            metric: dict[str, MetricValue] = {"p95_ms": p95, "p95_lower_bound_ms": bound,
                                              "p50_ms": p50, "slo_ms": ctx.slo_ms,
                                              "count": len(records)}
            suggestion = SUGGESTION
            library = library_cost(ctx, endpoint, len(ctx.by_endpoint[endpoint]))
            if site is not None and site.waits_for:
                metric["waits_for"] = site.waits_for
                severity, suggestion = graded_wait(site, severity)
            elif library is not None and library[1] >= LIBRARY_SHARE * p50:
                evidence += (f"; {library[1]:.0f} ms of CPU per request inside {library[0]}(),"
                             " a library call the route makes")
                metric["library_cpu_ms_per_request"] = library[1]
                severity, suggestion = "low", SUGGEST_LIBRARY
            elif starved >= STARVED_SHARE:
                evidence += (f"; the host had no CPU to spare: request threads waited for a CPU"
                             f" {pct(starved)} of the time they could run")
                if host is not None:
                    evidence += f", the host's CPUs {pct(host)} in use"
                    metric["host_busy_share"] = host
                metric["runqueue_share"] = starved
                severity, suggestion = "low", SUGGEST_CAPACITY
            opened = connections_opened(records)
            if opened is not None and opened[2] >= CONNECT_SHARE * p50 \
                    and suggestion in (SUGGESTION, SUGGEST_CAPACITY):
                driver, count, ms = opened
                evidence += (f"; each request opened {count:.1f} new database connections"
                             f" ({driver}), {ms:.0f} ms of its {p50:.0f} ms median")
                metric["connections_per_request"] = count
                metric["connect_ms_per_request"] = ms
                suggestion = SUGGEST_POOL.get(driver, SUGGEST_POOL["psycopg"])
            loc = slow_call(ctx, endpoint, profiled.get(endpoint), p50)
            flags.append(make_flag(self.kind, severity, endpoint, loc, evidence, metric,
                                   suggestion))
        return flags


def connections_opened(records: list[RequestRecord]) -> tuple[str, float, float] | None:
    """(driver, connections, milliseconds) the requests opened on average, by the driver that
    opened most of them; None when they opened none."""
    count: Counter[str] = Counter()
    ms = 0.0
    for record in records:
        for q in record.queries:
            if is_connection(q.statement):
                count[connection_driver(q.statement)] += q.count
                ms += q.total_ms
    if not count or not records:
        return None
    return count.most_common(1)[0][0], sum(count.values()) / len(records), ms / len(records)


def _streamed(record: RequestRecord) -> bool:
    """A response whose body went on after its head long enough to be a stream (see the module
    docstring)."""
    head = record.first_byte_ms
    if head is None:
        return False
    body = record.duration_ms - head
    return body >= STREAM_MIN_MS and body >= STREAM_MIN_SHARE * record.duration_ms


def _stuck_metric(found: Stuck) -> dict[str, MetricValue]:
    return {"unfinished": len(found.requests),
            "unfinished_oldest_ms": found.requests[0].elapsed_ms,
            "finished_p99_ms": found.finished_p99_ms}


def _with_stuck(flag: Flag, found: Stuck) -> Flag:
    """A route slow at p95 whose requests also hung: one flag, graded by the worse, located
    where the stuck requests waited when that is known."""
    severity = max(flag.severity, found.severity, key=SEVERITY_ORDER.index)
    loc = frame_location(found.where) if found.where is not None and found.proven else None
    return make_flag(flag.kind, severity, flag.route, loc or flag.location,
                     f"{flag.evidence}; {found.evidence()}", {**flag.metric,
                                                              **_stuck_metric(found)},
                     SUGGEST_STUCK if found.proven else flag.suggestion)
