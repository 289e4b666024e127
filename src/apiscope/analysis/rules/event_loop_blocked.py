"""event_loop_blocked: handler code holding the event loop thread.

The loop thread's samples are either WAITING (idle in its selector, ready for events) or inside
code. Samples inside one endpoint's handler, RUNNING (CPU work) or BLOCKED (a sync sleep or sync
I/O, which py-spy reports as idle but with the handler's line as the leaf), are time every other
request on that loop waited. A handler that is merely called often is not a problem: its time
on the loop per request must also be long (`loop_stall_ms_per_request`) to be flagged; without
request counts (no agent), only the medium grade and above is flagged. The per-request floor
is `loop_stall_ms_per_request` of off-CPU waits (a sync sleep or sync I/O has no business on
the loop at all), or `loop_cpu_ms_per_request` of loop time counting CPU work: running code is
what async handlers do on the loop, and only long runs stall the others. CPU work (RUNNING
samples) is scaled by the CPU the process really used over the CPU its samples claim
(`stats.cpu_time_scale`): on a machine short of cores, a cheap handler's loop time stretches
while it waits for a core, and must not pass for a long stall.

A handler that blocks the loop *off-CPU* (BLOCKED samples, known only with the activity probe:
a sync sleep, sync I/O) is flagged low even under the `loop_blocked_fraction` floor, when it
blocks `loop_stall_ms_per_request` or more per request and at least
`loop_blocking_min_fraction` of the window: an async handler has no reason ever to wait off-CPU
on the loop thread, and the time it blocks per request does not depend on how much traffic the
route got in the session (its share of the window does). CPU work gets no such exception: on a
machine short of cores every line's CPU time stretches, waits do not.

Samples are stored as counts per window, not in order, so the longest stall is estimated from
below: the longer of the mean stall per request and the longest run of consecutive windows in
which the loop never waited.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from apiscope.analysis.context import AnalysisContext, Attributed, Flag
from apiscope.analysis.flags import frame_location, make_flag, pct, where
from apiscope.analysis.stats import cpu_time_scale
from apiscope.analysis.thresholds import grade
from apiscope.model import Frame, SampleState, ThreadRole

SUGGEST_BLOCKING = ("replace the blocking call with its async form (await asyncio.sleep, an async"
                    " client or driver) or run it in a thread: await run_in_threadpool(...)")
SUGGEST_CPU = ("move the CPU-bound work off the event loop: await run_in_threadpool(...) for short"
               " work, a ProcessPoolExecutor for heavy work, or make the handler a plain `def`")

SUGGEST_EITHER = ("if the call waits (a sync sleep, sync I/O), use its async form or await"
                  " run_in_threadpool(...); if it computes, move it off the loop the same way or"
                  " to a ProcessPoolExecutor")


def _longest_saturated_run(loop: list[Attributed], window_ends: dict[float, float]) -> float:
    """Seconds of the longest run of consecutive windows where the loop never waited."""
    busy: dict[float, bool] = {}
    for a in loop:
        waiting = a.sample.state is SampleState.WAITING
        busy[a.window] = busy.get(a.window, True) and not waiting
    best = run = 0.0
    for start in sorted(busy):
        run = run + (window_ends.get(start, start) - start) if busy[start] else 0.0
        best = max(best, run)
    return best


class EventLoopBlockedRule:
    kind = "event_loop_blocked"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        loop = [a for a in ctx.samples if a.role is ThreadRole.LOOP]
        total = sum(a.sample.count for a in loop)
        if not total:
            return []
        # Without a route table (no agent), samples are grouped by the app function instead.
        inside: dict[tuple[str | None, str], list[Attributed]] = defaultdict(list)
        for a in loop:
            # Importing the app at start-up runs on the loop thread too, but before serving;
            # a profiler's sampler inside a handler is the measurement's time, not the app's.
            if a.active and a.user is not None and not a.importing and not a.tool:
                key = "" if a.endpoint else f"{a.user.file}:{a.user.function.split('.')[0]}"
                inside[(a.endpoint, key)].append(a)
        ends = {w.start: w.end for w in ctx.data.windows}
        longest_run = _longest_saturated_run(loop, ends)
        scale = cpu_time_scale(ctx)
        flags = []
        for (endpoint, _), samples in sorted(inside.items(), key=lambda kv: (
                kv[0][0] or "", kv[0][1])):
            flag = self._flag(ctx, endpoint, samples, total, longest_run, scale)
            if flag is not None:
                flags.append(flag)
        return flags

    def _flag(self, ctx: AnalysisContext, endpoint: str | None, samples: list[Attributed],
              total: int, longest_run: float, scale: float) -> Flag | None:
        count = sum(a.sample.count for a in samples)
        fraction = count / total
        severity = grade(fraction, ctx.thresholds.loop_blocked_fraction)
        seconds = sum(a.seconds for a in samples)
        requests = len(ctx.by_endpoint.get(endpoint, [])) if endpoint else 0
        per_request_ms = seconds * 1000 / requests if requests else None
        if severity is None and requests:
            severity = self._blocking_alone(ctx, samples, count / total, requests)
        if severity is None or (requests and not self._long_enough(ctx, samples, requests,
                                                                   scale)):
            return None
        # Without request counts (no agent) a long stall cannot be told from many short ones:
        # only a loop clearly dominated by one function is flagged.
        if per_request_ms is None and severity == "low":
            return None
        lines: Counter[Frame] = Counter()
        blocked = 0
        for a in samples:
            lines[a.user] += a.sample.count  # type: ignore[index]  # user is set (see check)
            blocked += a.sample.count if a.sample.state is SampleState.BLOCKED else 0
        hot, _ = max(lines.items(), key=lambda kv: (kv[1], kv[0].file, kv[0].line))
        leaf = next((a.sample.frames[-1] for a in samples if a.user == hot), hot)
        call = "" if leaf == hot else f" (in {leaf.function})"
        loc = frame_location(hot)
        longest_ms = max(longest_run * 1000, per_request_ms or 0.0)
        is_blocking = blocked * 2 >= count
        if not ctx.activity_known:  # the sampler could not tell a sleep from computing
            what, suggestion = "blocking it (sync sleep, sync I/O or CPU work)", SUGGEST_EITHER
        elif is_blocking:
            what, suggestion = "blocked (sync sleep or I/O)", SUGGEST_BLOCKING
        else:
            what, suggestion = "running CPU work", SUGGEST_CPU
        evidence = (f"the event loop spent {pct(fraction)} of the window inside {where(loc)}"
                    f"{call}, {what}; every other request on that loop waited")
        if per_request_ms is not None:
            evidence += f"; {per_request_ms:.0f} ms of loop time per request"
        metric = {"blocked_fraction": fraction, "blocked_seconds": seconds,
                  "longest_stall_ms": longest_ms, "blocking_share": blocked / count}
        if per_request_ms is not None:
            metric["stall_ms_per_request"] = per_request_ms
        return make_flag(self.kind, severity, endpoint, loc, evidence, metric, suggestion)

    @staticmethod
    def _blocking_alone(ctx: AnalysisContext, samples: list[Attributed], fraction: float,
                        requests: int) -> str | None:
        """"low" for a handler blocking the loop off-CPU long enough per request (see the
        module docstring), else None."""
        th = ctx.thresholds
        blocked = [a for a in samples if a.sample.state is SampleState.BLOCKED]
        blocked_ms = sum(a.seconds for a in blocked) * 1000 / requests
        if fraction >= th.loop_blocking_min_fraction and blocked_ms >= th.loop_stall_ms_per_request:
            return "low"
        return None

    @staticmethod
    def _long_enough(ctx: AnalysisContext, samples: list[Attributed], requests: int,
                     scale: float) -> bool:
        """Whether the handler holds the loop long enough per request to stall the others:
        `loop_stall_ms_per_request` of waits, or `loop_cpu_ms_per_request` of loop time with
        CPU work scaled to the CPU really used (see stats.cpu_time_scale: on a starved machine
        cheap handlers' loop time stretches too).

        Waits are BLOCKED samples, and RUNNING ones the probe never saw whose leaf is the
        application's line itself: that line was inside a C call (a sleep, a blocking read or
        C compute), which only the probe can tell apart. A leaf in a library's Python code is
        Python running: CPU work."""
        th = ctx.thresholds
        waits = cpu = 0.0
        for a in samples:
            leaf = a.sample.frames[-1] if a.sample.frames else None
            unknown_c_call = a.sample.gil is None and leaf == a.user
            if a.sample.state is SampleState.BLOCKED or unknown_c_call:
                waits += a.seconds
            else:
                cpu += a.seconds * scale
        waits_ms, total_ms = waits * 1000 / requests, (waits + cpu) * 1000 / requests
        return waits_ms >= th.loop_stall_ms_per_request or total_ms >= th.loop_cpu_ms_per_request
