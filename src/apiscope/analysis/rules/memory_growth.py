"""memory_growth: a process whose RSS keeps rising.

After a warm-up prefix (the longer of `memory_warmup_seconds` and `memory_warmup_share` of the
process's samples' span: caches, pools and lazy imports fill up first), a least-squares line is
fitted to RSS (MB) over time (minutes). The growth is flagged only when the line is steep
(`memory_slope_mb_per_min`), explains the data (`memory_min_r2`), is statistically clear
(`memory_min_t`, the slope over its standard error), adds up to real memory
(`memory_min_growth_mb` over the fitted span) and the span is long enough to judge. A warm-up
followed by a plateau, or noise around a level, is not growth.

Which endpoint grows it is a guess the evidence marks as such: between consecutive resource
samples, RSS increments are correlated with each endpoint's request count in the interval, and
an endpoint whose correlation reaches `SUSPECT_MIN_R` (and is clearly the best) is named as the
route. The allocating line itself is not known without an allocation tracer: location is null.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Sequence

from apiscope.analysis.context import AnalysisContext, Flag
from apiscope.analysis.flags import make_flag
from apiscope.analysis.stats import MB, fit_line
from apiscope.analysis.thresholds import grade
from apiscope.model import ResourceSample

SUSPECT_MIN_R = 0.3
SUSPECT_MARGIN = 0.1  # ahead of the second-best endpoint by this much

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


def suspect_endpoint(ctx: AnalysisContext, pid: int,
                     steady: list[ResourceSample]) -> tuple[str, float] | None:
    """The endpoint whose request counts best track the RSS increments, with its r."""
    deltas = [(b.rss_bytes - a.rss_bytes) / MB for a, b in zip(steady, steady[1:], strict=False)]
    edges = [s.ts for s in steady]
    scores = []
    for endpoint, records in ctx.by_endpoint.items():
        starts = sorted(r.start for r in records if r.pid == pid)
        if len(starts) < 5:
            continue
        counts = [bisect.bisect_left(starts, hi) - bisect.bisect_left(starts, lo)
                  for lo, hi in zip(edges, edges[1:], strict=False)]
        scores.append((pearson([float(c) for c in counts], deltas), endpoint))
    scores.sort(reverse=True)
    if not scores or scores[0][0] < SUSPECT_MIN_R:
        return None
    if len(scores) > 1 and scores[0][0] - scores[1][0] < SUSPECT_MARGIN:
        return None
    return scores[0][1], scores[0][0]


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
        warmup = max(th.memory_warmup_seconds, th.memory_warmup_share * (t1 - t0))
        steady = [s for s in samples if s.ts >= t0 + warmup]
        if len(steady) < th.memory_min_points:
            return None
        span = steady[-1].ts - steady[0].ts
        if span < th.memory_min_span_seconds:
            return None
        fit = fit_line([(s.ts - steady[0].ts) / 60 for s in steady],
                       [s.rss_bytes / MB for s in steady])
        if fit is None:
            return None
        growth = fit.slope * span / 60
        severity = grade(fit.slope, th.memory_slope_mb_per_min)
        if (severity is None or fit.r2 < th.memory_min_r2 or fit.t < th.memory_min_t
                or growth < th.memory_min_growth_mb):
            return None
        evidence = (f"process {pid} grew {fit.slope:.1f} MB/min over {span:.0f} s after a"
                    f" {warmup:.0f} s warm-up (+{growth:.1f} MB, R² {fit.r2:.2f}), reaching"
                    f" {max(s.rss_bytes for s in steady) / MB:.0f} MB")
        metric: dict[str, object] = {
            "pid": pid, "slope_mb_per_min": fit.slope, "r2": fit.r2, "t_stat": min(fit.t, 1e6),
            "growth_mb": growth, "span_seconds": span}
        suspect = suspect_endpoint(ctx, pid, steady)
        route = None
        if suspect is not None:
            route, r = suspect
            evidence += f"; the growth tracks {route} requests (r {r:.2f}), a likely source"
            metric["route_correlation"] = r
        return make_flag(self.kind, severity, route, None, evidence, metric, SUGGESTION)
