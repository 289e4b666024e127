"""cpu_hotspot: one application line taking a large share of the CPU.

RUNNING samples of the handler threads are grouped by endpoint (or, without a route table, by
application function) and leaf-most application line. A line is a hotspot when its share of
the CPU is large *and* it keeps a core busy (`cpu_hotspot_min_core`) *and* costs at least
`cpu_hotspot_min_ms_per_request` per request, so a cheap line of the only endpoint of an idle
app is not flagged. One flag per group: its hottest line.

The share depends on what the sampler knew. With an activity probe (BLOCKED samples or GIL
ownership recorded), RUNNING samples are on-CPU and the share is the line's part of all RUNNING
handler-thread samples. Without it, a RUNNING sample may be a thread sleeping or in I/O at that
line (a sync handler calling `time.sleep` in eight pool threads looks like eight busy cores), so
the line's claimed CPU is checked against the CPU the processes really used (psutil): a claim
above `CPU_PLAUSIBILITY` times the measured cores is off-CPU waiting, left to the other rules
(threadpool_saturation, slow_endpoint), and the share is the claim over the measured cores.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from apiscope.analysis.context import AnalysisContext, Attributed, Flag
from apiscope.analysis.flags import frame_location, make_flag, pct, where
from apiscope.analysis.stats import active_samples, measured_cores, sampled_seconds
from apiscope.analysis.thresholds import grade
from apiscope.model import Frame, SampleState

CPU_PLAUSIBILITY = 1.25

SUGGESTION = ("optimise or cache the work at this line (a profile of one request with pyinstrument"
              " shows the detail), or move it out of the request path")

Group = tuple[str | None, str]  # (endpoint, function key when there is no endpoint)


def _group(a: Attributed, frame: Frame) -> Group:
    return (a.endpoint, "" if a.endpoint else f"{frame.file}:{frame.function.split('.')[0]}")


class CpuHotspotRule:
    kind = "cpu_hotspot"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        running = [a for a in active_samples(ctx) if a.sample.state is SampleState.RUNNING]
        total = sum(a.sample.count for a in running)
        wall = sampled_seconds(ctx)
        if not total or wall <= 0:
            return []
        counts: dict[Group, Counter[Frame]] = defaultdict(Counter)
        busy: dict[tuple[Group, Frame], float] = defaultdict(float)
        for a in running:
            if a.user is not None and not a.importing:  # start-up imports are not requests
                counts[_group(a, a.user)][a.user] += a.sample.count
                busy[(_group(a, a.user), a.user)] += a.seconds
        flags = []
        for group in sorted(counts, key=lambda g: (g[0] or "", g[1])):
            lines = sorted(counts[group].items(),
                           key=lambda kv: (-kv[1], kv[0].file, kv[0].line))
            for frame, count in lines:  # the hottest line that qualifies
                flag = self._flag(ctx, group[0], frame, count / total, busy[(group, frame)],
                                  wall)
                if flag is not None:
                    flags.append(flag)
                    break
        return flags

    def _flag(self, ctx: AnalysisContext, endpoint: str | None, frame: Frame, share: float,
              busy: float, wall: float) -> Flag | None:
        th = ctx.thresholds
        core = busy / wall
        measured = None if ctx.activity_known else measured_cores(ctx.data.resources)
        if measured is not None:
            if core > CPU_PLAUSIBILITY * measured or measured <= 0:
                return None
            share = min(1.0, core / measured)
        severity = grade(share, th.cpu_hotspot_share)
        requests = len(ctx.by_endpoint.get(endpoint, [])) if endpoint else 0
        per_request = busy * 1000 / requests if requests else None
        if severity is None or core < th.cpu_hotspot_min_core or (
                per_request is not None and per_request < th.cpu_hotspot_min_ms_per_request):
            return None
        loc = frame_location(frame)
        of_what = "the CPU the processes used" if measured is not None else "the CPU samples"
        evidence = f"{where(loc)} took {pct(share)} of {of_what} ({core:.2f} of a core)"
        metric = {"cpu_share": share, "core_fraction": core, "cpu_seconds": busy}
        if per_request is not None:
            evidence += f", {per_request:.1f} ms of CPU per request"
            metric["cpu_ms_per_request"] = per_request
        return make_flag(self.kind, severity, endpoint, loc, evidence, metric, SUGGESTION)
