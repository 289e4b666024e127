"""cpu_hotspot: one application line taking a large share of the active samples.

RUNNING samples of the handler threads are grouped by endpoint and leaf-most application line;
a line is a hotspot when its share of all active samples is large *and* it keeps a core busy
(`cpu_hotspot_min_core`) *and* costs at least `cpu_hotspot_min_ms_per_request` per request, so a
cheap line of the only endpoint of an idle app is not flagged. One flag per endpoint: its
hottest line.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from apiscope.analysis.context import AnalysisContext, Flag
from apiscope.analysis.flags import frame_location, make_flag, pct, where
from apiscope.analysis.stats import active_samples
from apiscope.analysis.thresholds import grade
from apiscope.model import Frame, SampleState

SUGGESTION = ("optimise or cache the work at this line (a profile of one request with pyinstrument"
              " shows the detail), or move it out of the request path")


def sampled_seconds(ctx: AnalysisContext) -> float:
    """Seconds of sampled time: per window, the longest-sampled thread's samples."""
    per_thread: Counter[tuple[float, int, int]] = Counter()
    for a in ctx.samples:
        per_thread[(a.window, a.sample.pid, a.sample.tid)] += a.sample.count
    ticks: dict[float, int] = {}
    for (window, _, _), count in per_thread.items():
        ticks[window] = max(ticks.get(window, 0), count)
    rates = {w.start: w.rate_hz for w in ctx.data.windows}
    return sum(count / (rates.get(w) or 100) for w, count in ticks.items())


class CpuHotspotRule:
    kind = "cpu_hotspot"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        active = active_samples(ctx)
        total = sum(a.sample.count for a in active)
        wall = sampled_seconds(ctx)
        if not total or wall <= 0:
            return []
        lines: Counter[tuple[str | None, Frame]] = Counter()
        seconds: dict[tuple[str | None, Frame], float] = defaultdict(float)
        for a in active:
            if a.sample.state is SampleState.RUNNING and a.user is not None:
                lines[(a.endpoint, a.user)] += a.sample.count
                seconds[(a.endpoint, a.user)] += a.seconds
        hottest: dict[str | None, tuple[Frame, int]] = {}
        for (endpoint, frame), count in sorted(lines.items(), key=lambda kv: (
                -kv[1], kv[0][0] or "", kv[0][1].file, kv[0][1].line)):
            hottest.setdefault(endpoint, (frame, count))
        flags = []
        for endpoint, (frame, count) in hottest.items():
            flag = self._flag(ctx, endpoint, frame, count / total,
                              seconds[(endpoint, frame)], wall)
            if flag is not None:
                flags.append(flag)
        return flags

    def _flag(self, ctx: AnalysisContext, endpoint: str | None, frame: Frame, share: float,
              busy: float, wall: float) -> Flag | None:
        th = ctx.thresholds
        severity = grade(share, th.cpu_hotspot_share)
        core = busy / wall
        requests = len(ctx.by_endpoint.get(endpoint, [])) if endpoint else 0
        per_request = busy * 1000 / requests if requests else None
        if severity is None or core < th.cpu_hotspot_min_core or (
                per_request is not None and per_request < th.cpu_hotspot_min_ms_per_request):
            return None
        loc = frame_location(frame)
        evidence = (f"{where(loc)} ran in {pct(share)} of the active samples"
                    f" ({core:.2f} of a core)")
        metric = {"cpu_share": share, "core_fraction": core, "cpu_seconds": busy}
        if per_request is not None:
            evidence += f", {per_request:.1f} ms of CPU per request"
            metric["cpu_ms_per_request"] = per_request
        return make_flag(self.kind, severity, endpoint, loc, evidence, metric, SUGGESTION)
