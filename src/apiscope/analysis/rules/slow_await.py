"""slow_await: one await site dominating a route's latency, from per-request async profiles.

A profile is `{"pid", "start", "method", "route", "duration_ms", "tree"}` where `tree` is a
call tree of nodes `{"function", "file", "line", "time_ms", "await_ms", "children": [...]}`:
`time_ms` is the node's inclusive wall time and `await_ms` the time the request was suspended
while this frame was the innermost one awaiting (its own await, not its children's). The await
is charged to the awaiting *application* line above it (`apiscope.analysis.profiles`): the
user's `await session.execute(...)`, not SQLAlchemy's internals. Per route, the dominant site's
await time is compared with the route's summed profiled time, both without the stretches in
which the loop was held by other requests' blocking code (`loop_blocked_ms`: a query delayed
by a blocked loop is not blamed for it); it is flagged when that share reaches `await_share`
and the site costs at least `await_min_ms` per request on average (a fast route waiting on a
fast query is fine), over at least `MIN_PROFILES` profiled requests.
"""

from __future__ import annotations

from apiscope.analysis.context import AnalysisContext, Flag
from apiscope.analysis.flags import function_name, location, make_flag, pct
from apiscope.analysis.profiles import MIN_PROFILES, RouteProfiles, aggregate, describe_site
from apiscope.analysis.thresholds import grade

SUGGESTION = ("make this await cheaper or concurrent: add an index or cache for a query, set a"
              " timeout and reuse the client for an HTTP call, or run independent awaits together"
              " with asyncio.gather")


class SlowAwaitRule:
    kind = "slow_await"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        flags = []
        routes = aggregate(ctx.data.profiles, ctx.matcher.roots)
        for endpoint in sorted(routes):
            flag = self._flag(ctx, routes[endpoint])
            if flag is not None:
                flags.append(flag)
        return flags

    def _flag(self, ctx: AnalysisContext, route: RouteProfiles) -> Flag | None:
        site = route.dominant
        if site is None or route.count < MIN_PROFILES or route.total_ms <= 0:
            return None
        share = route.share(site)
        mean = site.waiting_ms / route.count
        severity = grade(share, ctx.thresholds.await_share)
        if severity is None or mean < ctx.thresholds.await_min_ms:
            return None
        function = function_name(site.function)
        blocked = site.blocked_ms / site.total_ms if site.total_ms > 0 else 0.0
        loc = location(site.file, site.line, function)
        evidence = (f"{pct(share)} of {route.endpoint}'s time in {route.count} profiled requests"
                    f" was spent awaiting {describe_site(site)} in {function}()"
                    f" (typically {site.typical_ms:.0f} ms per request; the route ran on the"
                    f" loop for {pct(route.cpu_ms / route.total_ms)} of its time)")
        if blocked >= 0.01:
            evidence += (f"; {pct(blocked)} of that await passed with the loop blocked by other"
                         " code, left out of the share")
        metric = {"await_share": share, "await_ms_per_request": mean,
                  "typical_await_ms": site.typical_ms, "profiles": route.count,
                  "cpu_share": route.cpu_ms / route.total_ms,
                  "loop_blocked_share": blocked, "awaited": site.awaited}
        return make_flag(self.kind, severity, route.endpoint, loc, evidence, metric, SUGGESTION)
