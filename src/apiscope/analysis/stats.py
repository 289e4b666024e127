"""Per-endpoint and per-process figures of the report.

`cpu_share` is an endpoint's share of the target's measured CPU time and `server_cpu_share`
the server's and framework's own share of a process's (both from `cpu.py`). `loop_lag_ms` is
how late the event loop ran the agent's probe callbacks, measured in the target.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from apiscope.analysis.context import HANDLER_ROLES, AnalysisContext, Attributed
from apiscope.analysis.cpu import (
    cpu_shares,
    native_cpu_shares,
    runqueue_shares,
    server_cpu_shares,
)
from apiscope.model import LoopLagSample, RequestRecord, ResourceSample
from apiscope.report import EndpointStats, GcPauses, LoopLag, ProcessStats

MB = 1024 * 1024


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of ascending values, by linear interpolation between closest ranks.

    The one definition the report, its rules and the dashboard share, so a p95 reads the same
    everywhere. An empty sequence has no quantile: it raises `ValueError` rather than return a
    NaN that would travel silently into a table or a JSON report, so callers decide what an
    empty set shows (the report's null, the dashboard's gap in a series).
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def quantile_lower_bound(sorted_values: Sequence[float], q: float,
                         confidence: float = 0.9) -> float:
    """A value the true q-quantile is at least, with `confidence`, from ascending values.

    Distribution-free: the k-th smallest of n values lies at or below the q-quantile when k of
    them do, so the bound is the largest k-th value with P(Binomial(n, q) >= k) >= confidence
    (the normal approximation past 200 values). A dozen requests' p95 is their slowest one or
    two: one slow request among them moves it, and its bound (the 10th of 12 at 90%) does
    not. Among thousands the bound is within a hair of the quantile itself. With too few
    values to bound anything, the smallest is returned.
    """
    if not sorted_values:
        raise ValueError("quantile bound of no values")
    n = len(sorted_values)
    if n > 200:
        z = _Z.get(confidence) or 1.2816
        k = math.floor(n * q - z * math.sqrt(n * q * (1 - q)))
    else:
        k, tail = 0, 0.0  # tail: P(Binomial(n, q) >= k), summed from k = n down
        for j in range(n, 0, -1):
            tail += math.comb(n, j) * q ** j * (1 - q) ** (n - j)
            if tail >= confidence:
                k = j
                break
    return min(sorted_values[max(k, 1) - 1], percentile(sorted_values, q))


_Z = {0.9: 1.2816, 0.95: 1.6449, 0.99: 2.3263}  # one-sided normal quantiles


@dataclass(frozen=True, slots=True)
class LineFit:
    """A least-squares line y = intercept + slope * x with its goodness of fit."""

    slope: float
    intercept: float
    r2: float
    t: float  # slope / its standard error (inf for a perfect fit)
    n: int


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> LineFit | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    syy = sum((y - my) ** 2 for y in ys)
    slope = sxy / sxx
    intercept = my - slope * mx
    sse = max(0.0, syy - slope * sxy)
    r2 = 1.0 - sse / syy if syy > 0 else 0.0
    se = math.sqrt(sse / (n - 2) / sxx)
    t = slope / se if se > 0 else (math.inf if slope else 0.0)
    return LineFit(slope, intercept, r2, t, n)


def active_samples(ctx: AnalysisContext) -> list[Attributed]:
    """The non-waiting samples of the handler threads (see the module docstring)."""
    active = [a for a in ctx.samples if a.active and not a.tool]
    handler = [a for a in active if a.role in HANDLER_ROLES]
    known_roles = any(a.role in HANDLER_ROLES for a in ctx.samples)
    return handler if known_roles else active


def window_ticks(ctx: AnalysisContext) -> dict[float, int]:
    """Samples taken per window: the most any one thread got (each thread is sampled once a
    tick with `--idle`; fewer than duration x rate when py-spy fell behind)."""
    per_thread: Counter[tuple[float, int, int]] = Counter()
    for a in ctx.samples:
        per_thread[(a.window, a.sample.pid, a.sample.tid)] += a.sample.count
    ticks: dict[float, int] = {}
    for (window, _, _), count in per_thread.items():
        ticks[window] = max(ticks.get(window, 0), count)
    return ticks


def sampled_seconds(ctx: AnalysisContext) -> float:
    """Seconds of sampled time, summed over the windows."""
    rates = {w.start: w.rate_hz for w in ctx.data.windows}
    return sum(count / (rates.get(w) or 100) for w, count in window_ticks(ctx).items())


WARMUP_SHARE = 0.2  # of the session
WARMUP_SECONDS = (3.0, 30.0)  # at least, at most


def warmup_end(ctx: AnalysisContext) -> float:
    """When the session's warm-up ends: a fifth of it, 3 s at least and 30 s at most.

    While caches fill (a computed result cached per key, an index built by the first request)
    a healthy app does, once, work that would be a bottleneck if it went on; rules about
    steady-state behaviour judge what comes after.
    """
    low, high = WARMUP_SECONDS
    return ctx.data.start + min(high, max(low, WARMUP_SHARE * ctx.data.seconds))


def _latency(records: list[RequestRecord]) -> tuple[float | None, ...]:
    """p50, p95, p99 and max of the requests' durations (ms), None without requests."""
    durations = sorted(r.duration_ms for r in records)
    if not durations:
        return (None, None, None, None)
    return (round(percentile(durations, 0.50), 3), round(percentile(durations, 0.95), 3),
            round(percentile(durations, 0.99), 3), round(durations[-1], 3))


def _handler_name(ctx: AnalysisContext, endpoint: str) -> str | None:
    """"module:qualname" of an endpoint's handler: the application's class with the method
    it inherits from a library (`tracker.views:IssueList.get`, not Django's
    `BaseListView.get`), where the route table names that class."""
    handler = ctx.matcher.handler_of(endpoint)
    route = ctx.route_info(endpoint) if handler is not None else None
    return route.app_handler if route is not None and route.handler == handler else handler


def endpoint_stats(ctx: AnalysisContext) -> list[EndpointStats]:
    """One entry per endpoint seen in requests or in samples, busiest first."""
    shares = cpu_shares(ctx)
    seconds = ctx.data.seconds
    out: list[EndpointStats] = []
    for endpoint in set(ctx.by_endpoint) | set(shares):
        records = ctx.by_endpoint.get(endpoint, [])
        errors = sum(1 for r in records if r.status >= 500)
        p50, p95, p99, top = _latency(records)
        heads = sorted(r.first_byte_ms for r in records if r.first_byte_ms is not None)
        out.append(EndpointStats(
            route=endpoint,
            handler=_handler_name(ctx, endpoint),
            count=len(records),
            rps=round(len(records) / seconds, 3) if seconds > 0 else 0.0,
            p50_ms=p50, p95_ms=p95, p99_ms=p99, max_ms=top,
            error_rate=round(errors / len(records), 4) if records else 0.0,
            cpu_share=round(shares.get(endpoint, 0.0), 4),
            first_byte_p95_ms=round(percentile(heads, 0.95), 3) if heads else None,
        ))
    out.sort(key=lambda e: (-e.count, e.route))
    return out


def rss_slope_mb_per_min(samples: Sequence[ResourceSample]) -> float:
    if len(samples) < 3:
        return 0.0
    t0 = samples[0].ts
    fit = fit_line([(s.ts - t0) / 60 for s in samples], [s.rss_bytes / MB for s in samples])
    return fit.slope if fit else 0.0


def loop_gc_pauses(ctx: AnalysisContext, pid: int) -> GcPauses | None:
    """The passes of a process's event loop its garbage collector held, as the agent's loop
    watchdog timed them (None without such a pass). No line's fault, so no flag; but a full
    collection of a large heap holds every request on the loop (a Prefect server's: 250-420 ms
    every 11-17 s, its health checks' p99)."""
    return gc_pauses_of([s.duration_ms for s in ctx.data.loop_stalls
                         if s.pid == pid and s.held == "gc"])


def gc_pauses_of(held_ms: Sequence[float]) -> GcPauses | None:
    """How many passes the collector held, their seconds in all and the longest (None for
    none)."""
    if not held_ms:
        return None
    return GcPauses(len(held_ms), round(sum(held_ms) / 1000, 3), round(max(held_ms), 1))


def loop_lag(ctx: AnalysisContext, pid: int) -> LoopLag | None:
    """p50 and p99 of the event loop's lag in one process (ms), from the agent's probes (None
    without the agent)."""
    return loop_lag_of([s for s in ctx.data.loop_lag if s.pid == pid])


def loop_lag_of(samples: Sequence[LoopLagSample]) -> LoopLag | None:
    """The probe-weighted median of the per-interval p50s and the worst interval's p99 of one
    process's loop lag samples (None without probes)."""
    lags = [s for s in samples if s.probes]
    if not lags:
        return None
    ordered = sorted(lags, key=lambda s: s.p50_ms)
    half, seen, p50 = sum(s.probes for s in lags) / 2, 0, ordered[-1].p50_ms
    for s in ordered:
        seen += s.probes
        if seen >= half:
            p50 = s.p50_ms
            break
    return LoopLag(round(p50, 3), round(max(s.p99_ms for s in lags), 3))


EXIT_CAUSES = ("recycled by its server (gunicorn's --max-requests), stopped, killed (a worker"
               " timeout, the out-of-memory killer) or crashed (a segmentation fault in a C"
               " extension); whatever it was serving then, unless it was let finish, failed")
MANY_EXITS = 3  # more processes than this exited: one line for them all


def exit_note(after_seconds: float) -> str:
    """What a process's exit in the middle of a session tells, for the reports."""
    return f"exited {after_seconds:.1f} s into the session: {EXIT_CAUSES}"


def exit_notes(after_seconds: dict[int, float]) -> list[str]:
    """A line per process that exited, by pid; one line for them all when more than
    `MANY_EXITS` did (a server recycling its workers every thousand requests replaced nine
    of them in 40 s)."""
    if len(after_seconds) <= MANY_EXITS:
        return [f"pid {pid} {exit_note(after)}" for pid, after in sorted(after_seconds.items())]
    listing = ", ".join(f"{pid} at {after:.1f} s"
                        for pid, after in sorted(after_seconds.items(), key=lambda kv: kv[1]))
    return [f"{len(after_seconds)} processes exited during the session ({listing}): each"
            f" {EXIT_CAUSES.replace('its server', 'their server', 1)}"]


def process_stats(ctx: AnalysisContext) -> list[ProcessStats]:
    by_pid: dict[int, list[ResourceSample]] = defaultdict(list)
    for sample in ctx.data.resources:
        by_pid[sample.pid].append(sample)
    server = server_cpu_shares(ctx) if ctx.activity_known else {}
    waits = runqueue_shares(ctx)
    native = native_cpu_shares(ctx)
    out: list[ProcessStats] = []
    for pid in sorted(by_pid):
        samples = sorted(by_pid[pid], key=lambda s: s.ts)
        out.append(ProcessStats(
            pid=pid,
            cpu_percent_avg=round(sum(s.cpu_percent for s in samples) / len(samples), 2),
            rss_mb_max=round(max(s.rss_bytes for s in samples) / MB, 2),
            rss_mb_slope_per_min=round(rss_slope_mb_per_min(samples), 3),
            threads_max=max(s.threads for s in samples),
            fds_max=max(s.fds for s in samples),
            server_cpu_share=round(server[pid], 4) if pid in server else None,
            runqueue_share=round(waits[pid], 4) if pid in waits else None,
            loop_lag_ms=loop_lag(ctx, pid),
            loop_gc_pauses=loop_gc_pauses(ctx, pid),
            native_cpu_share=round(native[pid], 4) if pid in native else None,
            exited_after_seconds=round(max(0.0, ctx.data.exited[pid] - ctx.data.start), 1)
            if pid in ctx.data.exited else None,
        ))
    return out
