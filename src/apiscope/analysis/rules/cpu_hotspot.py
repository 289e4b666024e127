"""cpu_hotspot: one application line taking a large share of the CPU.

RUNNING samples of the handler threads are grouped by endpoint (or, without a route table, by
application function) and leaf-most application line. A line is a hotspot when its share of
the CPU is large *and* it keeps a core busy (`cpu_hotspot_min_core`) *and* costs at least
`cpu_hotspot_min_ms_per_request` per request, so a cheap line of the only endpoint of an idle
app is not flagged. One flag per group: its hottest line.

The share depends on what the sampler knew. With an activity probe (BLOCKED samples or GIL
ownership recorded), RUNNING samples are on-CPU and the share is the line's part of all RUNNING
handler-thread samples. Without it, a RUNNING sample may be a thread sleeping or in I/O at that
line: a sync handler calling `time.sleep` or a blocking client in pool threads looks exactly
like one computing, and that is the common case for sync handlers. So only the event loop
thread's samples are considered (a loop thread that sleeps stalls everything and is flagged as
event_loop_blocked anyway), the share is the line's part of the loop's RUNNING samples, and
the line's claimed CPU must be plausible against the CPU the processes really used (psutil; at
most `CPU_PLAUSIBILITY` times the measured cores: py-spy's pauses and lost samples make the two
disagree by tens of percent, not by multiples). A CPU hotspot in a sync handler then needs the
sampler's activity probe to be seen.

A line that is not a large share of the CPU but costs a lot *per request* is a hotspot too
(low): `cpu_hotspot_heavy_ms_per_request` of CPU per request of its endpoint, over at least
`min_requests` requests, whatever the traffic. Sampled time overstates CPU time when the machine
is short of cores (a runnable thread waiting for a core still shows its line), so that figure is
scaled by the process's measured CPU (psutil) over the CPU its running samples claim, when that
is below 1: every line's per-request time stretches alike on a starved machine, and a cheap
healthy line must not pass for a heavy one.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from apiscope.analysis.context import AnalysisContext, Attributed, Flag
from apiscope.analysis.flags import frame_location, make_flag, pct, where
from apiscope.analysis.stats import (
    active_samples,
    cpu_time_scale,
    measured_cores,
    sampled_seconds,
)
from apiscope.analysis.thresholds import grade
from apiscope.model import Frame, SampleState, ThreadRole

CPU_PLAUSIBILITY = 2.0

SUGGESTION = ("optimise or cache the work at this line (a profile of one request with pyinstrument"
              " shows the detail), or move it out of the request path")

Group = tuple[str | None, str]  # (endpoint, function key when there is no endpoint)


def _group(a: Attributed, frame: Frame) -> Group:
    return (a.endpoint, "" if a.endpoint else f"{frame.file}:{frame.function.split('.')[0]}")


class CpuHotspotRule:
    kind = "cpu_hotspot"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        running = [a for a in active_samples(ctx) if a.sample.state is SampleState.RUNNING]
        if not ctx.activity_known and any(a.role is ThreadRole.LOOP for a in running):
            running = [a for a in running if a.role is ThreadRole.LOOP]
        total = sum(a.sample.count for a in running)
        wall = sampled_seconds(ctx)
        if not total or wall <= 0:
            return []
        # Lines are (file, line): a comprehension is its own frame in py-spy (`f.<locals>.
        # <listcomp>`) but the same line of code as its enclosing function's.
        counts: dict[Group, Counter[tuple[str, int]]] = defaultdict(Counter)
        names: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
        busy: dict[tuple[Group, tuple[str, int]], float] = defaultdict(float)
        for a in running:
            if a.user is not None and not a.importing:  # start-up imports are not requests
                site = (a.user.file, a.user.line)
                counts[_group(a, a.user)][site] += a.sample.count
                names[site][a.user.function] += a.sample.count
                busy[(_group(a, a.user), site)] += a.seconds
        scale = cpu_time_scale(ctx)
        flags = []
        for group in sorted(counts, key=lambda g: (g[0] or "", g[1])):
            lines = sorted(counts[group].items(), key=lambda kv: (-kv[1], kv[0]))
            for site, count in lines:  # the hottest line that qualifies
                function = sorted(names[site].items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
                flag = self._flag(ctx, group[0], Frame(function, *site), count / total,
                                  busy[(group, site)], wall, scale)
                if flag is not None:
                    flags.append(flag)
                    break
        return flags

    def _flag(self, ctx: AnalysisContext, endpoint: str | None, frame: Frame, share: float,
              busy: float, wall: float, scale: float) -> Flag | None:
        th = ctx.thresholds
        core = busy / wall
        measured = None if ctx.activity_known else measured_cores(ctx.data.resources)
        if measured is not None and core > CPU_PLAUSIBILITY * measured:
            return None
        severity = grade(share, th.cpu_hotspot_share)
        requests = len(ctx.by_endpoint.get(endpoint, [])) if endpoint else 0
        per_request = busy * 1000 / requests if requests else None
        if severity is not None and (core < th.cpu_hotspot_min_core or (
                per_request is not None and per_request < th.cpu_hotspot_min_ms_per_request)):
            severity = None
        if severity is None and per_request is not None and requests >= th.min_requests \
                and per_request * scale >= th.cpu_hotspot_heavy_ms_per_request:
            severity = "low"
        if severity is None:
            return None
        loc = frame_location(frame)
        of_what = ("the event loop's busy samples" if not ctx.activity_known
                   else "the running thread samples")
        evidence = f"{where(loc)} took {pct(share)} of {of_what} ({core:.2f} of a core)"
        metric = {"cpu_share": share, "core_fraction": core, "cpu_seconds": busy}
        if per_request is not None:
            evidence += f", {per_request:.1f} ms of CPU per request"
            metric["cpu_ms_per_request"] = per_request
        return make_flag(self.kind, severity, endpoint, loc, evidence, metric, SUGGESTION)

