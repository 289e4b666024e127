"""slow_await: one await site dominating a route's latency, from per-request async profiles.

A profile (`apiscope.model.StoredProfile`) holds a call tree of `ProfileNode`s: a node's
`time_ms` is its inclusive wall time and `await_ms` the time the request was suspended while
this frame was the innermost one awaiting (its own await, not its children's). The await
is charged to the awaiting *application* line above it: the user's `await
session.execute(...)`, not SQLAlchemy's internals (`apiscope.analysis.profiles`, which also
explains what is left out of a site's share: time outside the request, contended resources).

Flagged: the route's costliest site, over at least `MIN_PROFILES` profiled requests, when
- its share of the route's own time reaches `await_share` (it dominates the route), and
- in 3 profiled requests of 4 it awaited at least the latency objective (`--slo-ms`), and at
  least `await_min_ms`, by itself: an outside call of 150 ms in a route with a 200 ms
  objective is the price of that call, not a bottleneck; one of 250 ms is why the route
  misses its objective.

A site that waits to be notified by something else in the same process (an asyncio
`Event.wait()`, `Condition.wait()`, `Queue.get()`: see `analysis.profiles.rendezvous`) is
flagged low and described so: a long poll or a subscription waits there by design, and what
is slow otherwise is whatever notifies it, which the profile does not show. A site that waits
its turn at a lock or a semaphore (`TURNS`) is graded as any other and described so: the
requests queue on one another there.
"""

from __future__ import annotations

from apiscope.analysis.context import AnalysisContext, Flag
from apiscope.analysis.flags import MetricValue, function_name, location, make_flag, pct
from apiscope.analysis.profiles import (
    MIN_PROFILES,
    RouteProfiles,
    describe_rendezvous,
    describe_site,
    graded_wait,
    route_profiles,
)
from apiscope.analysis.thresholds import grade

SUGGESTION = ("make this await cheaper or concurrent: add an index or cache for a query, set a"
              " timeout and reuse the client for an HTTP call, or run independent awaits together"
              " with asyncio.gather")


class SlowAwaitRule:
    kind = "slow_await"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        flags = []
        routes = route_profiles(ctx)
        contended = sorted({s.resource for r in routes.values() for s in r.sites if s.contended})
        for endpoint in sorted(routes):
            flag = self._flag(ctx, routes[endpoint], contended)
            if flag is not None:
                flags.append(flag)
        return flags

    def _flag(self, ctx: AnalysisContext, route: RouteProfiles,
              contended: list[str]) -> Flag | None:
        site = route.dominant
        if site is None or route.count < MIN_PROFILES:
            return None
        severity = grade(site.share, ctx.thresholds.await_share)
        if severity is None or site.floor_ms < max(ctx.slo_ms, ctx.thresholds.await_min_ms):
            return None
        function = function_name(site.function)
        loc = location(site.file, site.line, function)
        evidence = (f"{pct(site.share)} of {route.endpoint}'s own time in {route.count} profiled"
                    f" requests was spent awaiting {describe_site(site)} in {function}():"
                    f" at least {site.floor_ms:.0f} ms in 3 requests of 4 (typically"
                    f" {site.typical_ms:.0f} ms), over the {ctx.slo_ms:.0f} ms objective by"
                    " itself")
        suggestion = SUGGESTION
        if site.waits_for:
            evidence += describe_rendezvous(site)
            severity, suggestion = graded_wait(site, severity)
        if contended:
            evidence += (f"; own time leaves out waits on {', '.join(contended)}, slow on many"
                         " routes at once (shared contention)")
        metric: dict[str, MetricValue] = {
            "await_share": site.share, "await_floor_ms": site.floor_ms, "slo_ms": ctx.slo_ms,
            "await_ms_per_request": site.total_ms / route.count,
            "typical_await_ms": site.typical_ms, "profiles": route.count,
            "awaited": site.awaited}
        if site.waits_for:
            metric["waits_for"] = site.waits_for
        return make_flag(self.kind, severity, route.endpoint, loc, evidence, metric, suggestion)
