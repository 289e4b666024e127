"""memory_growth: a process whose RSS keeps rising.

After a warm-up prefix (`memory_warmup_share` of the process's samples' span, at least
`memory_warmup_min_seconds`: caches, pools and lazy imports fill up first), a least-squares
line is fitted to RSS (MB) over time (minutes). The growth is flagged only when the line
explains the data (`memory_min_r2`), is statistically clear (`memory_min_t`, the slope over its
standard error), adds up to real memory (`memory_min_growth_mb` over the fitted span), the span
is long enough to judge (`memory_min_span_seconds`) and the growth *keeps going*: a line fitted
to the later half of the span must still rise at `memory_late_slope_ratio` of the whole span's
slope. A warm-up that tails off into a plateau (slow at first, flat at the end) fails that;
a leak does not slow down under steady load. The severity grades the later half's slope
(`memory_slope_mb_per_min`): the rate the process grows at now. In a session shorter than
`memory_confident_span_seconds`, growth that no route's requests track is low at most: a
minute of memory rising under load can still be a high-water mark (allocator arenas,
buffers filling up to their bound) that a longer session would see level off. apiscope's own
agent is one: injected by the session, it settles for the first minutes (measured on a
Piccolo admin of 77 MB: 6 MB at the injection, 8 MB more over the next two and a half
minutes as its bounded caches filled, then flat for five), and the evidence of such a
session says so.

Which endpoint grows it is a guess the evidence marks as such: between consecutive resource
samples, RSS increments are correlated with the number of each endpoint's requests that
*finished* in the interval (what a request keeps is usually kept by the time it answers), and
over at least `SUSPECT_MIN_INTERVALS` intervals (shorter series correlate by chance as strongly
as a real leaker does), an endpoint whose correlation reaches `SUSPECT_MIN_R` (and is clearly
the best), and whose
requests times the fitted memory per request account for a plausible part of the growth
(`SUSPECT_EXPLAINED`), is named as the route. The allocating line itself is not known
without an allocation tracer (tracemalloc, memray): the location is then that endpoint's
handler, where to start looking, and the evidence says so; with no suspect endpoint it is null.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from apiscope.analysis.context import AnalysisContext, Flag
from apiscope.analysis.flags import Location, MetricValue, handler_location, make_flag, pct
from apiscope.analysis.stats import MB, LineFit, fit_line
from apiscope.analysis.thresholds import grade
from apiscope.model import ResourceSample

SUSPECT_MIN_R = 0.3
SUSPECT_MARGIN = 0.1  # ahead of the second-best endpoint by this much
# Intervals (resource samples apart) needed before naming a route at all. With a dozen or so
# endpoints and n intervals, the best of the chance correlations is about 2.5 / sqrt(n): over
# the ~18 intervals of a 25 s session, 0.5 to 0.6, as high as a real leaker's. Measured on the
# sample app's 25 s demo: the leaking route came first in 2 runs of 7, a healthy route with a
# plausible fit in 2 others.
SUSPECT_MIN_INTERVALS = 40
# The suspect's requests, times the memory each keeps by the fit, must add up to this part of
# the growth: a correlation with a nearly constant request count means nothing, and its fitted
# memory per request then claims many times the whole growth (or less than nothing).
SUSPECT_EXPLAINED = (0.25, 1.5)

SUGGESTION = ("look for module-level caches, lists or dicts that grow per request (bound them,"
              " e.g. functools.lru_cache(maxsize=...)); tracemalloc or memray show the"
              " allocating lines")


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    n = len(xs)
    if n < 3:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Suspect:
    endpoint: str
    r: float
    mb_per_request: float  # the fitted RSS increment per request
    explained: float  # the part of the growth its requests account for


def suspect_endpoint(ctx: AnalysisContext, pid: int,
                     steady: list[ResourceSample]) -> Suspect | None:
    """The endpoint whose finished requests best track the RSS increments."""
    deltas = [(b.rss_bytes - a.rss_bytes) / MB for a, b in zip(steady, steady[1:], strict=False)]
    if len(deltas) < SUSPECT_MIN_INTERVALS:
        return None
    growth = sum(deltas)
    edges = [s.ts for s in steady]
    scores: list[tuple[float, str, float, float]] = []
    for endpoint, records in ctx.by_endpoint.items():
        ends = sorted(r.start + r.duration_ms / 1000 for r in records if r.pid == pid)
        if len(ends) < 5:
            continue
        counts = [float(bisect.bisect_left(ends, hi) - bisect.bisect_left(ends, lo))
                  for lo, hi in zip(edges, edges[1:], strict=False)]
        fit = fit_line(counts, deltas)
        if fit is None or growth <= 0:
            continue
        explained = fit.slope * sum(counts) / growth
        scores.append((pearson(counts, deltas), endpoint, fit.slope, explained))
    scores.sort(reverse=True)
    if not scores or scores[0][0] < SUSPECT_MIN_R:
        return None
    if len(scores) > 1 and scores[0][0] - scores[1][0] < SUSPECT_MARGIN:
        return None
    r, endpoint, per_request, explained = scores[0]
    low, high = SUSPECT_EXPLAINED
    if not low <= explained <= high:
        return None
    return Suspect(endpoint, r, per_request, explained)


class MemoryGrowthRule:
    kind = "memory_growth"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        by_pid: dict[int, list[ResourceSample]] = defaultdict(list)
        for sample in ctx.data.resources:
            by_pid[sample.pid].append(sample)
        flags = []
        for pid in sorted(by_pid):
            flag = self._flag(ctx, pid, sorted(by_pid[pid], key=lambda s: s.ts))
            if flag is not None:
                flags.append(flag)
        return flags

    def _flag(self, ctx: AnalysisContext, pid: int, samples: list[ResourceSample]) -> Flag | None:
        th = ctx.thresholds
        if len(samples) < th.memory_min_points:
            return None
        t0, t1 = samples[0].ts, samples[-1].ts
        warmup = max(th.memory_warmup_min_seconds, th.memory_warmup_share * (t1 - t0))
        steady = [s for s in samples if s.ts >= t0 + warmup]
        if len(steady) < th.memory_min_points:
            return None
        span = steady[-1].ts - steady[0].ts
        if span < th.memory_min_span_seconds:
            return None
        fit = _fit(steady)
        late = _fit([s for s in steady if s.ts >= steady[0].ts + span / 2])
        if fit is None or late is None:
            return None
        growth = fit.slope * span / 60
        severity = grade(late.slope, th.memory_slope_mb_per_min)
        if (severity is None or fit.r2 < th.memory_min_r2 or fit.t < th.memory_min_t
                or growth < th.memory_min_growth_mb
                or late.slope < th.memory_late_slope_ratio * fit.slope):
            return None
        evidence = (f"process {pid} grew {fit.slope:.1f} MB/min over {span:.0f} s after a"
                    f" {warmup:.0f} s warm-up (+{growth:.1f} MB, R² {fit.r2:.2f}; still"
                    f" {late.slope:.1f} MB/min in the last {span / 2:.0f} s), reaching"
                    f" {max(s.rss_bytes for s in steady) / MB:.0f} MB")
        metric: dict[str, MetricValue] = {
            "pid": pid, "slope_mb_per_min": fit.slope, "late_slope_mb_per_min": late.slope,
            "r2": fit.r2, "t_stat": min(fit.t, 1e6), "growth_mb": growth, "span_seconds": span}
        suspect = suspect_endpoint(ctx, pid, steady)
        route: str | None = None
        loc: Location | None = None
        if suspect is None and span < th.memory_confident_span_seconds:
            severity = "low"  # a short rise no route explains may still be a high-water mark
            if len(steady) <= SUSPECT_MIN_INTERVALS:
                evidence += ("; too short a session to tell which route's requests keep the"
                             " memory (run a minute or more)")
            if ctx.data.meta.inject:
                evidence += ("; the agent this session injected grows the process too in its"
                             " first minutes, as its bounded caches fill (14 MB over 3"
                             " minutes on an 80 MB app, flat after): a session of five"
                             " minutes or more tells a leak from it")
        if suspect is not None:
            route = suspect.endpoint
            loc = handler_location(ctx, route)
            evidence += (f"; the growth tracks {route} requests (r {suspect.r:.2f}, about"
                         f" {suspect.mb_per_request * 1024:.0f} KB kept per request,"
                         f" {pct(suspect.explained)} of the growth), a likely source")
            if loc is not None:
                evidence += (f": start with its handler {loc.function}() (the allocating"
                             " line needs an allocation tracer)")
            metric["route_correlation"] = suspect.r
            metric["mb_per_request"] = suspect.mb_per_request
        return make_flag(self.kind, severity, route, loc, evidence, metric, SUGGESTION)


def _fit(samples: list[ResourceSample]) -> LineFit | None:
    if len(samples) < 3:
        return None
    return fit_line([(s.ts - samples[0].ts) / 60 for s in samples],
                    [s.rss_bytes / MB for s in samples])
