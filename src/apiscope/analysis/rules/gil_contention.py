"""gil_contention: request threads measurably waiting for the GIL.

Raised only on measurement, never inferred from threads being off-CPU: a thread waiting on a
socket inside psycopg, sleeping, or hashing in C code that releases the GIL is not contending.
Two measurements must agree, in the same sampling window of one process (after the session's
warm-up, `stats.warmup_end`, when caches fill once):

- the agent's GIL watchdog (a thread that wakes every few milliseconds and times how late it
  gets the GIL back, the time it waited for a CPU in the OS run queue taken out) waited for
  the GIL at least the lowest `gil_wait_share` of the time;
- at least two request-handling threads (event loop, pool workers) each used
  `BUSY_THREAD_CORES` of a core in that window (the kernel's per-thread CPU time): someone
  other than the watchdog wanted the GIL. One busy event loop alone also makes the watchdog
  wait, but contends with no one.

The share graded is the watchdog's mean wait share over the contended windows; at least
`GIL_MIN_WINDOWS` of them are needed. The location is the hottest application line running
(on-CPU, so holding the GIL or in C code) in those windows; without an application line the
contention is the framework's or a library's and belongs to the server figures, not to a flag.
Sessions without the agent's watchdog get no gil_contention flag: it cannot be measured there.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from apiscope.analysis.context import HANDLER_ROLES, AnalysisContext, Flag
from apiscope.analysis.flags import frame_location, make_flag, pct, where
from apiscope.analysis.stats import warmup_end
from apiscope.analysis.thresholds import grade
from apiscope.model import Frame, GilSample

BUSY_THREAD_CORES = 0.15
GIL_MIN_WINDOWS = 2

SUGGESTION = ("CPU-bound Python in several threads runs one thread at a time: move it into"
              " processes (a ProcessPoolExecutor, more workers with fewer threads) or into code"
              " that releases the GIL")

Window = tuple[float, float]


def wait_share(gil: Sequence[GilSample], start: float, end: float) -> float | None:
    """The watchdog's GIL wait share over [start, end), weighted by overlap."""
    observed = waited = 0.0
    for g in gil:
        lo, hi = max(start, g.ts - g.seconds), min(end, g.ts)
        if hi > lo and g.seconds > 0:
            part = (hi - lo) / g.seconds
            observed += g.seconds * part
            waited += g.wait_seconds * part
    return waited / observed if observed > 0 else None


class GilContentionRule:
    kind = "gil_contention"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        if not ctx.data.gil:
            return []
        contended = self._contended(ctx)
        flags = []
        for pid in sorted({pid for pid, _ in contended}):
            windows = {w: share for (p, w), share in contended.items() if p == pid}
            if len(windows) >= GIL_MIN_WINDOWS:
                flag = self._flag(ctx, pid, windows)
                if flag is not None:
                    flags.append(flag)
        return flags

    def _contended(self, ctx: AnalysisContext) -> dict[tuple[int, Window], float]:
        """(pid, window) -> the watchdog's wait share, for the windows that contended."""
        ends = {w.start: w.end for w in ctx.data.windows}
        warm = warmup_end(ctx)
        roles = ctx.data.roles
        busy: Counter[tuple[int, float]] = Counter()
        for c in ctx.data.thread_cpu:
            seconds = ends.get(c.window, c.window) - c.window
            if (seconds > 0 and c.window >= warm and roles.get((c.pid, c.tid)) in HANDLER_ROLES
                    and c.seconds >= BUSY_THREAD_CORES * seconds):
                busy[(c.pid, c.window)] += 1
        by_pid: dict[int, list[GilSample]] = defaultdict(list)
        for g in ctx.data.gil:
            by_pid[g.pid].append(g)
        low = ctx.thresholds.gil_wait_share[0]
        out: dict[tuple[int, Window], float] = {}
        for (pid, start), threads in busy.items():
            share = wait_share(by_pid.get(pid, []), start, ends[start])
            if threads >= 2 and share is not None and share >= low:
                out[(pid, (start, ends[start]))] = share
        return out

    def _flag(self, ctx: AnalysisContext, pid: int, windows: dict[Window, float]) -> Flag | None:
        starts = {w[0] for w in windows}
        lines: Counter[Frame] = Counter()
        routes: Counter[str | None] = Counter()
        for a in ctx.samples:
            if (a.sample.pid == pid and a.window in starts and a.cpu > 0 and a.user is not None
                    and not a.tool and a.role in HANDLER_ROLES):
                lines[a.user] += a.sample.count
                routes[a.endpoint] += a.sample.count
        if not lines:
            return None
        share = sum(windows.values()) / len(windows)
        severity = grade(share, ctx.thresholds.gil_wait_share)
        if severity is None:
            return None
        hot = max(lines.items(), key=lambda kv: (kv[1], kv[0].file, kv[0].line))[0]
        route = routes.most_common(1)[0][0]
        gil = [g for g in ctx.data.gil if g.pid == pid]
        waits = sum(g.acquisitions for g in gil)
        mean_ms = sum(g.wait_seconds for g in gil) * 1000 / waits if waits else 0.0
        seconds = sum(end - start for start, end in windows)
        loc = frame_location(hot)
        evidence = (f"threads of process {pid} waited for the GIL {pct(share)} of the time over"
                    f" {seconds:.0f} s while two or more request threads ran at once (measured"
                    f" by the agent's GIL watchdog, {mean_ms:.1f} ms per wait on average);"
                    f" the hottest line holding it: {where(loc)}")
        metric = {"gil_wait_share": share, "contended_seconds": seconds,
                  "mean_wait_ms": mean_ms, "max_wait_ms": max(g.max_wait_ms for g in gil),
                  "cause": "gil"}
        return make_flag(self.kind, severity, route, loc, evidence, metric, SUGGESTION)
