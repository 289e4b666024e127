"""Per-route aggregation of the sampled per-request async profiles.

A profile's tree (see `apiscope.agent.profiling`) splits each request's wall time into time
*running* on the event loop thread (CPU, or blocking calls made from async code) and time
*awaiting* (the request's task suspended: a query, an outside call, a sleep). Await time is
charged to an await site: the innermost application frame on the path to the awaiting frame
(the user line that awaited), with the call it awaited there (the next frame down, e.g.
`AsyncSession.execute`). Await under no application frame (a sync handler waiting for the
thread pool, framework plumbing) is counted as await time but charged to no site.

An await lasts until the awaited thing is done *and* the loop gets back to the task. Behind a
loop blocked by other requests, a 2 ms query can await for seconds. Each node's
`loop_blocked_ms` (the part of its await during which the loop was held by blocking stretches
of other code: a sync sleep, a long computation) is therefore kept apart: shares of a route's
time use its await outside those stretches, over its time minus them, so that a slow await is
the outside world's slowness, not a blocked loop's. (Other requests' ordinary work overlapping
an await is concurrency, the point of awaiting, and is not discounted.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from statistics import median
from typing import Any

from apiscope.analysis.attribution import is_app_frame
from apiscope.analysis.flags import pct
from apiscope.model import Frame

SiteKey = tuple[str, int, str]  # (file, line, function) of the awaiting application frame
SLOWEST_KEPT = 10
MIN_PROFILES = 3  # fewer profiled requests than this are an anecdote, not a route's pattern


@dataclass(frozen=True, slots=True)
class AwaitSite:
    """One awaiting application line of a route, over its profiled requests."""

    file: str
    line: int
    function: str
    awaited: str  # the call awaited at that line ("" when the frame awaited a future itself)
    total_ms: float  # summed over the route's profiles
    requests: int  # profiles in which this site awaited
    typical_ms: float  # median await per request, over the requests where it awaited
    blocked_ms: float = 0.0  # the part of total_ms with the loop held by other blocking code

    @property
    def waiting_ms(self) -> float:
        """Await time outside blocked-loop stretches: the awaited thing itself was slow."""
        return max(0.0, self.total_ms - self.blocked_ms)


@dataclass(slots=True)
class RouteProfiles:
    """A route's profiles: counts, the running/awaiting split, await sites, merged tree."""

    endpoint: str
    count: int = 0
    total_ms: float = 0.0
    await_ms: float = 0.0
    blocked_ms: float = 0.0  # await time with the loop held by other blocking code
    sites: list[AwaitSite] = field(default_factory=list)  # most await first
    tree: dict[str, Any] | None = None  # all profiles merged (times summed)
    slowest: list[dict[str, Any]] = field(default_factory=list)  # slowest profiles first

    @property
    def cpu_ms(self) -> float:
        """Time running on the loop thread (not awaiting), summed over the profiles."""
        return max(0.0, self.total_ms - self.await_ms)

    @property
    def unattributed_await_ms(self) -> float:
        return max(0.0, self.await_ms - sum(s.total_ms for s in self.sites))

    @property
    def dominant(self) -> AwaitSite | None:
        return self.sites[0] if self.sites else None

    def share(self, site: AwaitSite) -> float:
        """The site's await outside blocked-loop stretches, over the route's time outside
        them."""
        own = self.total_ms - self.blocked_ms
        return site.waiting_ms / own if own > 0 else 0.0


@dataclass(frozen=True, slots=True)
class RequestBreakdown:
    """One profile's split: total, await, blocked-loop await, and per site (await, blocked-loop
    await, the awaited call)."""

    total_ms: float
    await_ms: float
    blocked_ms: float
    sites: dict[SiteKey, tuple[float, float, str]]


def endpoint_of(profile: dict[str, Any]) -> str:
    return f"{profile['method']} {profile['route']}"


def nodes(tree: Any) -> Iterator[dict[str, Any]]:
    """Every node of a profile tree, parents first."""
    if isinstance(tree, dict):
        yield tree
        for child in tree.get("children") or ():
            yield from nodes(child)


def is_app_node(node: dict[str, Any], roots: Sequence[str]) -> bool:
    """True when a tree node is the application's code (as the other rules judge frames)."""
    file = str(node.get("file") or "")
    if not file:
        return False
    frame = Frame(str(node.get("function") or ""), file, int(node.get("line") or 0))
    return is_app_frame(frame, roots)


def breakdown(profile: dict[str, Any], roots: Sequence[str]) -> RequestBreakdown:
    """Split one profile's time into await per application site (see the module docstring)."""
    tree = profile.get("tree")
    total = float(tree.get("time_ms") or 0.0) if isinstance(tree, dict) else 0.0
    total = total or float(profile.get("duration_ms") or 0.0)
    sites: dict[SiteKey, tuple[float, float, str]] = {}
    awaited_total = blocked_total = 0.0
    # (node, innermost app node above or at it, the child of that app node on this path)
    stack: list[tuple[Any, dict[str, Any] | None, str]] = [(tree, None, "")]
    while stack:
        node, app, call = stack.pop()
        if not isinstance(node, dict):
            continue
        if is_app_node(node, roots):
            app, call = node, ""
        elif app is not None and not call:
            call = str(node.get("function") or "")
        ms = float(node.get("await_ms") or 0.0)
        if ms > 0:
            blocked = min(ms, float(node.get("loop_blocked_ms") or 0.0))
            awaited_total += ms
            blocked_total += blocked
            if app is not None:
                key = (str(app["file"]), int(app.get("line") or 0), str(app.get("function")))
                before, before_blocked, awaited = sites.get(key, (0.0, 0.0, call))
                sites[key] = (before + ms, before_blocked + blocked, awaited or call)
        stack.extend((child, app, call) for child in node.get("children") or ())
    if total and awaited_total > total:  # rounding in the agent: never more await than time
        blocked_total *= total / awaited_total
        awaited_total = total
    return RequestBreakdown(total, awaited_total, blocked_total, sites)


def aggregate(profiles: Iterable[dict[str, Any]],
              roots: Sequence[str] = ()) -> dict[str, RouteProfiles]:
    """Each route's `RouteProfiles`, keyed by endpoint ("METHOD /template")."""
    routes: dict[str, RouteProfiles] = {}
    # endpoint -> site -> ([await per request], blocked total, awaited call)
    per_site: dict[str, dict[SiteKey, tuple[list[float], list[float], str]]] = {}
    for profile in profiles:
        endpoint = endpoint_of(profile)
        route = routes.setdefault(endpoint, RouteProfiles(endpoint))
        split = breakdown(profile, roots)
        route.count += 1
        route.total_ms += split.total_ms
        route.await_ms += split.await_ms
        route.blocked_ms += split.blocked_ms
        sites = per_site.setdefault(endpoint, {})
        for key, (ms, blocked, call) in split.sites.items():
            values, blockeds, _ = sites.setdefault(key, ([], [], call))
            values.append(ms)
            blockeds.append(blocked)
        if isinstance(profile.get("tree"), dict):
            route.tree = merge_trees(route.tree, profile["tree"])
        route.slowest.append(profile)
    for endpoint, route in routes.items():
        route.slowest.sort(key=lambda p: -float(p.get("duration_ms") or 0.0))
        del route.slowest[SLOWEST_KEPT:]
        route.sites = sorted(
            (AwaitSite(key[0], key[1], key[2], call, sum(values), len(values), median(values),
                       sum(blockeds))
             for key, (values, blockeds, call) in per_site.get(endpoint, {}).items()),
            key=lambda s: (-s.waiting_ms, -s.total_ms, s.file, s.line))
    return routes


def describe_site(site: AwaitSite) -> str:
    """"`sleep` at slow_await.py:24" for evidence sentences."""
    call = f"`{site.awaited}` at " if site.awaited else ""
    return f"{call}{PurePath(site.file).name}:{site.line}"


def dominant_await(route: RouteProfiles | None, roots: Sequence[str],
                   min_share: float) -> str | None:
    """"78% of the slowest profiled requests' time spent awaiting `AsyncSession.execute` at
    orders.py:41": when the route's dominant await site holds at least `min_share` of the time
    of its slowest profiled requests (the half that makes its p95). None for a route slow on
    CPU, so that it is never blamed on an await."""
    if route is None or route.count < MIN_PROFILES or route.dominant is None:
        return None
    site = route.dominant
    key = (site.file, site.line, site.function)
    own = waiting = 0.0
    for profile in route.slowest[:max(1, (len(route.slowest) + 1) // 2)]:
        split = breakdown(profile, roots)
        own += split.total_ms - split.blocked_ms
        at_site, blocked, _ = split.sites.get(key, (0.0, 0.0, ""))
        waiting += at_site - blocked
    share = waiting / own if own > 0 else 0.0
    if share < min_share:
        return None
    return (f"{pct(share)} of the slowest profiled requests' time spent awaiting"
            f" {describe_site(site)}")


def merge_trees(into: dict[str, Any] | None, tree: dict[str, Any]) -> dict[str, Any]:
    """`into` plus `tree`, nodes matched by (function, file, line), times summed; `into` is
    changed in place (a fresh copy when None)."""
    if into is None:
        return _copy(tree)
    into["time_ms"] = float(into.get("time_ms") or 0.0) + float(tree.get("time_ms") or 0.0)
    for field_name in ("await_ms", "loop_busy_ms", "loop_blocked_ms"):
        into[field_name] = (float(into.get(field_name) or 0.0)
                            + float(tree.get(field_name) or 0.0))
    index = {_key(c): c for c in into["children"]}
    for child in tree.get("children") or ():
        match = index.get(_key(child))
        if match is None:
            into["children"].append(_copy(child))
            index[_key(child)] = into["children"][-1]
        else:
            merge_trees(match, child)
    into["children"].sort(key=lambda c: -float(c.get("time_ms") or 0.0))
    return into


def _key(node: dict[str, Any]) -> tuple[str, str, int]:
    return (str(node.get("function")), str(node.get("file")), int(node.get("line") or 0))


def _copy(node: dict[str, Any]) -> dict[str, Any]:
    return {"function": node.get("function"), "file": node.get("file"),
            "line": node.get("line"), "time_ms": float(node.get("time_ms") or 0.0),
            "await_ms": float(node.get("await_ms") or 0.0),
            "loop_busy_ms": float(node.get("loop_busy_ms") or 0.0),
            "loop_blocked_ms": float(node.get("loop_blocked_ms") or 0.0),
            "children": [_copy(c) for c in node.get("children") or ()]}
