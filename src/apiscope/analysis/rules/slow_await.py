"""slow_await: one await site dominating a route's latency, from per-request async profiles.

A profile is `{"pid", "start", "method", "route", "duration_ms", "tree"}` where `tree` is a
call tree of nodes `{"function", "file", "line", "time_ms", "await_ms", "children": [...]}`:
`time_ms` is the node's inclusive wall time and `await_ms` the time the request was suspended
while this frame was the innermost one awaiting (its own await, not its children's). Per route,
each site's await time is summed over the profiles and compared with the routes' summed
duration; the dominant site is flagged when its share reaches `await_share` and it costs at
least `await_min_ms` per request on average (a fast route waiting on a fast query is fine).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from apiscope.analysis.context import AnalysisContext, Flag
from apiscope.analysis.flags import location, make_flag, pct, where
from apiscope.analysis.thresholds import grade

SUGGESTION = ("make this await cheaper or concurrent: add an index or cache for a query, set a"
              " timeout and reuse the client for an HTTP call, or run independent awaits together"
              " with asyncio.gather")

Site = tuple[str, int, str]


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for child in node.get("children") or ():
            yield from _nodes(child)


class SlowAwaitRule:
    kind = "slow_await"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        awaits: dict[str, dict[Site, float]] = defaultdict(lambda: defaultdict(float))
        durations: dict[str, float] = defaultdict(float)
        counts: Counter[str] = Counter()
        for profile in ctx.data.profiles:
            endpoint = f"{profile['method']} {profile['route']}"
            durations[endpoint] += float(profile["duration_ms"])
            counts[endpoint] += 1
            for node in _nodes(profile.get("tree")):
                ms = float(node.get("await_ms") or 0.0)
                if ms > 0 and node.get("file"):
                    site = (str(node["file"]), int(node.get("line") or 0),
                            str(node.get("function") or ""))
                    awaits[endpoint][site] += ms
        flags = []
        for endpoint in sorted(awaits):
            site, ms = sorted(awaits[endpoint].items(), key=lambda kv: (-kv[1], kv[0]))[0]
            flag = self._flag(ctx, endpoint, site, ms, durations[endpoint], counts[endpoint])
            if flag is not None:
                flags.append(flag)
        return flags

    def _flag(self, ctx: AnalysisContext, endpoint: str, site: Site, await_ms: float,
              duration_ms: float, n: int) -> Flag | None:
        share = await_ms / duration_ms if duration_ms > 0 else 0.0
        mean = await_ms / n
        severity = grade(share, ctx.thresholds.await_share)
        if severity is None or mean < ctx.thresholds.await_min_ms:
            return None
        loc = location(site[0], site[1], site[2] or None)
        evidence = (f"{pct(share)} of {endpoint}'s time in {n} profiled requests was spent"
                    f" awaiting at {where(loc)} ({mean:.0f} ms per request)")
        metric = {"await_share": share, "await_ms_per_request": mean, "profiles": n}
        return make_flag(self.kind, severity, endpoint, loc, evidence, metric, SUGGESTION)
