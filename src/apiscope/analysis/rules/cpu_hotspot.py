"""cpu_hotspot: one application line taking a large share of the target's CPU time.

CPU here is measured: each sample counts as the CPU time the kernel says its thread used
(`context.cpu_seconds`), so a line where a thread sleeps, waits on a socket or on a lock costs
nothing. The samples of the request-handling threads are grouped by endpoint (or, without a
route table, by application function) and leaf-most application line; samples with no
application frame are the server's own work (`cpu.server_cpu_shares`), never a hotspot.

A line is a hotspot when its share of the processes' CPU time is large (`cpu_hotspot_share`)
*and* it keeps a core busy (`cpu_hotspot_min_core`) *and* costs at least
`cpu_hotspot_min_ms_per_request` per request, so a cheap line of the only endpoint of an idle
app is not flagged. A line that is not a large share but costs `cpu_hotspot_heavy_ms_per_request`
of CPU per request (over `min_requests` requests) is a low hotspot. One flag per group: its
hottest qualifying line.

Either way the line needs `cpu_hotspot_min_samples` samples that ran there. At the low rates a
busy host's budget allows (5 Hz), a short session has a few dozen running samples in all, and a
line's share of them is noise: a pool thread's one running sample of a window can land on the
sleep its thread showed all along as well as on the hashing it did in between.

On the event loop the agent's watchdog measures more than the samples can: each pass that held
the loop past its threshold, followed to one task, comes with the CPU the loop thread used in it
(`LoopStall.cpu_ms`), whatever py-spy's rate. A line's CPU is the larger of its samples' and its
held passes' (the two count the same seconds), and `MIN_MEASURED_HOLDS` such passes at a line
stand for the samples it would need (an async search running 100 ms of Python a request, 19
requests in a 15 s session at 5 Hz: 6 to 14 samples at its line from run to run, 2.0 to 2.1 s
of CPU measured in its 18 or 19 passes each time).

Sessions recorded without CPU time (by an older apiscope) get no cpu_hotspot: their RUNNING
samples may be sleeps.

When most of a line's CPU is spent inside a library it calls (a password hash in argon2's C
code, a compression, a serialiser), the evidence names that call and the severity is low at
most: the application chose to pay for that work, and the fix (cheaper parameters, caching,
another worker) is a decision, not a defect.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from apiscope.analysis.attribution import library_call, tool_work_or_import, user_frame
from apiscope.analysis.context import AnalysisContext, Attributed, Flag
from apiscope.analysis.cpu import endpoint_or_handed, handed_routes, total_cpu_seconds
from apiscope.analysis.flags import MetricValue, frame_location, make_flag, pct, where
from apiscope.analysis.stats import active_samples, sampled_seconds
from apiscope.analysis.thresholds import grade
from apiscope.model import Frame

SUGGESTION = ("optimise or cache the work at this line (a profile of one request with pyinstrument"
              " shows the detail), or move it out of the request path")
SUGGEST_LIBRARY = ("this CPU is spent inside {call}: if it is more than the route needs, lower"
                   " its cost (parameters, input size), cache its result, or add workers")

Group = tuple[str | None, str]  # (endpoint, function key when there is no endpoint)
Site = tuple[str, int]  # (file, line)

# Passes of the loop held by one task at a line, each with the loop thread's CPU measured, that
# make the line's CPU a measurement rather than a few samples' share (see the module docstring).
MIN_MEASURED_HOLDS = 5


@dataclass(slots=True)
class _Line:
    cpu: float = 0.0
    samples: int = 0  # samples that ran at the line
    cpu_in_libraries: float = 0.0
    functions: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)  # library functions called from it
    # the loop watchdog's passes held at the line: their measured CPU, how many, inside libraries
    held_cpu: float = 0.0
    holds: int = 0
    held_in_libraries: float = 0.0

    def measured(self) -> bool:
        """True when the held passes' CPU is the line's figure (see the module docstring)."""
        return self.holds >= MIN_MEASURED_HOLDS and self.held_cpu > self.cpu

    def seconds(self) -> tuple[float, float]:
        """The line's CPU seconds, and those of them inside a library it called."""
        if self.measured():
            return self.held_cpu, self.held_in_libraries
        return self.cpu, self.cpu_in_libraries


def _key(endpoint: str | None, frame: Frame) -> Group:
    return (endpoint, "" if endpoint else f"{frame.file}:{frame.function.split('.')[0]}")


def _group(a: Attributed, frame: Frame, handed: dict[int, str]) -> Group:
    return _key(endpoint_or_handed(a, handed), frame)


class CpuHotspotRule:
    kind = "cpu_hotspot"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        if not ctx.activity_known:
            return []  # a session whose CPU was not measured cannot tell a sleep from work
        total = total_cpu_seconds(ctx)
        wall = sampled_seconds(ctx)
        if total <= 0 or wall <= 0:
            return []
        # Lines are (file, line): a comprehension is its own frame in py-spy (`f.<locals>.
        # <listcomp>`) but the same line of code as its enclosing function's.
        lines: dict[Group, dict[Site, _Line]] = defaultdict(dict)
        # Lines the kernel found asleep at the agents' looks: CPU a window gave them before
        # the looks had found them was their thread's work elsewhere.
        asleep = set(ctx.data.meta.asleep_lines)
        handed = handed_routes(ctx)
        for a in active_samples(ctx):
            if a.cpu <= 0 or a.user is None or a.importing:  # start-up imports: not requests
                continue
            if (a.sample.frames[-1].file, a.sample.frames[-1].line) in asleep:
                continue
            line = lines[_group(a, a.user, handed)].setdefault((a.user.file, a.user.line), _Line())
            line.cpu += a.cpu
            line.samples += a.sample.count
            line.functions[a.user.function] += a.sample.count
            call = library_call(a.sample.frames, a.user)
            if call is not None:
                line.cpu_in_libraries += a.cpu
                line.calls[call] += a.sample.count
        self._add_holds(ctx, lines)
        flags = []
        for group in sorted(lines, key=lambda g: (g[0] or "", g[1])):
            ordered = sorted(lines[group].items(), key=lambda kv: (-kv[1].seconds()[0], kv[0]))
            for site, line in ordered:  # the hottest line that qualifies
                flag = self._flag(ctx, group[0], site, line, total, wall)
                if flag is not None:
                    flags.append(flag)
                    break
        return flags

    @staticmethod
    def _add_holds(ctx: AnalysisContext, lines: dict[Group, dict[Site, _Line]]) -> None:
        """The loop watchdog's passes held by one task, with their measured CPU, at their
        deepest application line."""
        roots = ctx.matcher.roots
        for stall in ctx.data.loop_stalls:
            if stall.held != "one" or not stall.cpu_ms or not stall.frames:
                continue
            frames = stall.frames
            if tool_work_or_import(frames):
                continue
            user = user_frame(frames, roots)
            if user is None:
                continue
            endpoint = stall.route or ctx.matcher.endpoint_of(frames)
            line = lines[_key(endpoint, user)].setdefault((user.file, user.line), _Line())
            line.held_cpu += stall.cpu_ms / 1000
            line.holds += 1
            line.functions[user.function] += 1
            call = library_call(frames, user)
            if call is not None:
                line.held_in_libraries += stall.cpu_ms / 1000
                line.calls[call] += 1

    def _flag(self, ctx: AnalysisContext, endpoint: str | None, site: Site, line: _Line,
              total: float, wall: float) -> Flag | None:
        th = ctx.thresholds
        if line.samples < th.cpu_hotspot_min_samples and not line.measured():
            return None
        cpu, in_libraries = line.seconds()
        share, core = cpu / total, cpu / wall
        severity = grade(share, th.cpu_hotspot_share)
        requests = len(ctx.by_endpoint.get(endpoint, [])) if endpoint else 0
        per_request = cpu * 1000 / requests if requests else None
        if severity is not None and (core < th.cpu_hotspot_min_core or (
                per_request is not None and per_request < th.cpu_hotspot_min_ms_per_request)):
            severity = None
        if severity is None and per_request is not None and requests >= th.min_requests \
                and per_request >= th.cpu_hotspot_heavy_ms_per_request:
            severity = "low"
        if severity is None:
            return None
        function = sorted(line.functions.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        loc = frame_location(Frame(function, *site))
        evidence = (f"{where(loc)} used {pct(share)} of the target's measured CPU time"
                    f" ({core:.2f} of a core)")
        metric: dict[str, MetricValue] = {"cpu_share": share, "core_fraction": core,
                                          "cpu_seconds": cpu, "cause": "cpu"}
        if per_request is not None:
            evidence += f", {per_request:.1f} ms of CPU per request"
            metric["cpu_ms_per_request"] = per_request
        suggestion = SUGGESTION
        if line.measured():
            evidence += f" (measured in the {line.holds} passes it held the event loop)"
        if in_libraries * 2 >= cpu:
            call = line.calls.most_common(1)[0][0]
            evidence += f"; {pct(in_libraries / cpu)} of it inside {call}(), a library call"
            metric["library_share"] = in_libraries / cpu
            suggestion = SUGGEST_LIBRARY.format(call=f"{call}()")
            severity = "low"
        return make_flag(self.kind, severity, endpoint, loc, evidence, metric, suggestion)
