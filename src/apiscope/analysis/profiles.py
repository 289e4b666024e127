"""Per-route aggregation of the sampled per-request async profiles.

A profile's tree (a `ProfileNode`, see `apiscope.agent.profiletree`) splits each request's wall
time into time *running* on the event loop thread (CPU, or blocking calls made from async code)
and time *awaiting* (the request's task suspended: a query, an outside call, a sleep). Await
time is charged to an await site: the innermost application frame on the path to the awaiting
frame (the user line that awaited), with the call it awaited there (the next frame down, e.g.
`AsyncSession.execute`) and that call's library, its *resource* (`sqlalchemy`, `asyncio`,
`httpx`). Await under no application frame (a sync handler waiting for the thread pool,
framework plumbing) is counted as await time but charged to no site.

An await lasts until the awaited thing is done *and* the loop gets back to the task, so a busy
process stretches every await. Two things are therefore kept out of a site's share of its
route's time (see docs/profiling.md):

- time outside the request's frames (the synthetic root's own time);
- awaits on a *contended* resource: one whose awaits are slow (median `slow_ms` or more) in at
  least `CONTENDED_ROUTES` routes and in at least half the routes that await it. A pool or a
  starved worker thread slowing every query is shared contention, not one line's slowness.

A site's cost is then its *floor*: the lower quartile over the route's profiled requests of its
await in each (0 where a request did not await there), and its share is floor / (floor + the
lower quartile of the rest of each request's own time). Lower quartiles, because contention
only ever adds time: the least contended requests say what a site costs by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from statistics import median
from typing import TYPE_CHECKING

from apiscope.analysis.attribution import RouteMatcher
from apiscope.analysis.flags import pct
from apiscope.frames import is_app_frame, package_of
from apiscope.model import Frame, ProfileNode, StoredProfile

if TYPE_CHECKING:
    from apiscope.analysis.context import AnalysisContext

SiteKey = tuple[str, int, str]  # (file, line, function) of the awaiting application frame
# What a coroutine awaits when it waits for another part of the same process to notify it
# (asyncio's and anyio's events, conditions, queues), by package and "Class.method".
RENDEZVOUS_PACKAGES = ("asyncio", "anyio")
RENDEZVOUS = ("Event.wait", "Condition.wait", "Queue.get", "Barrier.wait")
# What a coroutine awaits when it waits its turn at a lock or a semaphore other tasks hold (a
# database wrapper handing out one connection at a time; anyio's limiter of the thread pool):
# the requests queue on one another there.
TURNS = ("Lock.acquire", "Semaphore.acquire", "BoundedSemaphore.acquire",
         "CapacityLimiter.acquire", "CapacityLimiter.acquire_on_behalf_of")
SLOWEST_KEPT = 10
MIN_PROFILES = 3  # fewer profiled requests than this are an anecdote, not a route's pattern
CONTENDED_ROUTES = 3
DEFAULT_SLOW_MS = 50.0


@dataclass(frozen=True, slots=True)
class SiteAwait:
    """One request's await at one site."""

    ms: float
    awaited: str  # the call awaited at that line ("" when the frame awaited a future itself)
    # that call's top-level package ("" for application code, and for a turn at a lock: no
    # resource shared by the routes, the queue is at that line; see `contended_resources`)
    resource: str
    waits_for: str = ""  # the innermost await when it is a rendezvous or a turn (`rendezvous`)


@dataclass(frozen=True, slots=True)
class RequestBreakdown:
    """One profile's split of its time."""

    total_ms: float
    await_ms: float
    outside_ms: float  # time seen outside the request's frames
    sites: dict[SiteKey, SiteAwait]


@dataclass(frozen=True, slots=True)
class AwaitSite:
    """One awaiting application line of a route, over its profiled requests."""

    file: str
    line: int
    function: str
    awaited: str
    resource: str
    total_ms: float  # summed over the route's profiles
    requests: int  # profiles in which this site awaited
    typical_ms: float  # median await per request, over the requests where it awaited
    floor_ms: float = 0.0  # lower quartile of its await over all the route's profiles
    share: float = 0.0  # floor / (floor + lower quartile of the rest of the requests' time)
    contended: bool = False  # its resource is slow on many routes at once
    # "Event.wait" when the site waits to be notified, "Lock.acquire" its turn (`rendezvous`)
    waits_for: str = ""


@dataclass(slots=True)
class RouteProfiles:
    """A route's profiles: counts, the running/awaiting split, await sites, merged tree."""

    endpoint: str
    count: int = 0
    total_ms: float = 0.0
    await_ms: float = 0.0
    outside_ms: float = 0.0
    sites: list[AwaitSite] = field(default_factory=list)  # costliest (by floor) first
    tree: ProfileNode | None = None  # all profiles merged (times summed)
    slowest: list[StoredProfile] = field(default_factory=list)  # slowest profiles first
    requests: list[RequestBreakdown] = field(default_factory=list)

    @property
    def cpu_ms(self) -> float:
        """Time running on the loop thread (not awaiting), summed over the profiles."""
        return max(0.0, self.total_ms - self.await_ms - self.outside_ms)

    @property
    def dominant(self) -> AwaitSite | None:
        """The costliest site not awaiting a contended resource."""
        return next((s for s in self.sites if not s.contended and s.floor_ms > 0), None)


def nodes(tree: ProfileNode) -> Iterator[ProfileNode]:
    """Every node of a profile tree, parents first."""
    return tree.walk()


def is_app_node(node: ProfileNode, roots: Sequence[str]) -> bool:
    """True when a tree node is the application's code (`apiscope.frames`, as every rule and
    view judges frames)."""
    if not node.file:
        return False
    return is_app_frame(Frame(node.function, node.file, node.line), roots)


def resource_of(file: str) -> str:
    """The top-level package a library file belongs to ("" for application code)."""
    return package_of(file)


def breakdown(profile: StoredProfile, roots: Sequence[str],
              is_handler: Callable[[ProfileNode], bool] | None = None) -> RequestBreakdown:
    """Split one profile's time (see the module docstring).

    With `is_handler` (whether a node is the route's handler), a profile in which the handler
    never ran charges its awaits to no site: the request's own code ran in another task (a
    Starlette `BaseHTTPMiddleware` runs the rest of the app in a task of its own), and the
    profile saw only a middleware awaiting all of it (`await call_next(request)`). Where the
    handler did run, an application line above it is a middleware passing the request on:
    the framework's awaits below that line and outside the handler (FastAPI's dependencies
    run in the thread pool, their teardown, the loop's turns) are no await of that line's."""
    tree = profile.tree
    if tree is None:
        return RequestBreakdown(profile.duration_ms, 0.0, 0.0, {})
    handlers = [] if is_handler is None else [n for n in tree.walk() if is_handler(n)]
    blind = is_handler is not None and not handlers
    passing = _passing_on(tree, handlers, roots) if handlers else set()
    total = tree.time_ms or profile.duration_ms
    outside = 0.0
    if not tree.file:  # the agent's synthetic root: its own time is not the request's
        outside = max(0.0, tree.time_ms - tree.await_ms
                      - sum(c.time_ms for c in tree.children))
    sites: dict[SiteKey, SiteAwait] = {}
    awaited_total = 0.0
    # (node, innermost app node above or at it, the node that app node called on this path)
    stack: list[tuple[ProfileNode, ProfileNode | None, ProfileNode | None]] = [
        (tree, None, None)]
    while stack:
        node, app, call = stack.pop()
        if id(node) in passing:
            app, call = None, None
        elif is_app_node(node, roots):
            app, call = node, None
        elif app is not None and call is None:
            call = node
        ms = node.await_ms
        if ms > 0:
            awaited_total += ms
            if app is not None and not blind:
                _add_site(sites, app, call, ms, rendezvous(node))
        stack.extend((child, app, call) for child in node.children)
    return RequestBreakdown(total, awaited_total, outside, sites)


def _passing_on(tree: ProfileNode, handlers: Sequence[ProfileNode],
                roots: Sequence[str]) -> set[int]:
    """ids of the application nodes with a handler node below them that are not handler
    nodes themselves: the lines where middleware passes the request on."""
    inside = {id(h) for h in handlers}
    out: set[int] = set()

    def visit(node: ProfileNode) -> bool:  # whether a handler node is at or below `node`
        below = False
        for child in node.children:
            below = visit(child) or below
        if below and id(node) not in inside and is_app_node(node, roots):
            out.add(id(node))
        return below or id(node) in inside

    visit(tree)
    return out


def rendezvous(node: ProfileNode) -> str:
    """"Event.wait" when an awaiting node waits to be notified by another part of the same
    process (`RENDEZVOUS`), "Lock.acquire" when it waits its turn at a lock or a semaphore
    (`TURNS`); "" otherwise (a socket, a timer, a future)."""
    if resource_of(node.file) not in RENDEZVOUS_PACKAGES:
        return ""
    name = ".".join(node.function.rsplit(".", 2)[-2:])
    return name if name in RENDEZVOUS or name in TURNS else ""


def waits_its_turn(site: AwaitSite) -> bool:
    """A site whose requests queue at a lock or a semaphore (`TURNS`): contention among the
    requests, not news they wait for by design."""
    return site.waits_for in TURNS


def _add_site(sites: dict[SiteKey, SiteAwait], app: ProfileNode,
              call: ProfileNode | None, ms: float, waits_for: str) -> None:
    key = (app.file, app.line, app.function)
    before = sites.get(key)
    if before is not None:
        ms, awaited, resource = before.ms + ms, before.awaited, before.resource
        waits_for = before.waits_for or waits_for
    else:
        awaited = call.function if call is not None else ""
        resource = resource_of(call.file) if call is not None else ""
    sites[key] = SiteAwait(ms, awaited, "" if waits_for in TURNS else resource, waits_for)


def _waits_for(seen: Sequence[SiteAwait]) -> str:
    """The rendezvous a site waits on, when most of its await time is spent on one."""
    on: dict[str, float] = {}
    for site in seen:
        on[site.waits_for] = on.get(site.waits_for, 0.0) + site.ms
    best = max(on.items(), key=lambda kv: kv[1])[0] if on else ""
    return best if best and 2 * on[best] >= sum(on.values()) else ""


SUGGEST_RENDEZVOUS = ("if the route waits for news on purpose (a long poll, a subscription), this"
                      " latency is by design; else find what is slow to notify it (a background"
                      " task, a queue's consumer, another request)")


SUGGEST_TURN = ("the requests take turns here: hold the lock (or the semaphore's slot) for less"
                " time, with no slow await inside it; or, if what it guards serves several at"
                " once (a database, a connection pool), let as many in as it serves")


def graded_wait(site: AwaitSite, severity: str) -> tuple[str, str]:
    """(severity, suggestion) of a flag on a site that waits to be notified or its turn
    (`waits_for`): a rendezvous is low (a long poll waits there by design), a turn at a lock
    keeps its grade."""
    if waits_its_turn(site):
        return severity, SUGGEST_TURN
    return "low", SUGGEST_RENDEZVOUS


def describe_rendezvous(site: AwaitSite) -> str:
    """The clause evidence adds for a site that waits to be notified, or its turn."""
    if waits_its_turn(site):
        return (f"; there it waits in {site.waits_for}() for its turn: other requests of this"
                " process hold it meanwhile")
    return (f"; there it waits in {site.waits_for}() for something else in this process to"
            " notify it")


def lower_quartile(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.25 * (len(ordered) - 1))] if ordered else 0.0


def aggregate(profiles: Iterable[StoredProfile], roots: Sequence[str] = (),
              slow_ms: float = DEFAULT_SLOW_MS,
              matcher: RouteMatcher | None = None) -> dict[str, RouteProfiles]:
    """Each route's `RouteProfiles`, keyed by endpoint ("METHOD /template"); `slow_ms` is the
    median await from which a resource counts as slow on a route (for contention). With
    `matcher`, a profile in which the route's handler never ran has no await sites (see
    `breakdown`)."""
    routes: dict[str, RouteProfiles] = {}
    trees: dict[str, list[ProfileNode]] = {}
    for profile in profiles:
        route = routes.setdefault(profile.endpoint, RouteProfiles(profile.endpoint))
        split = breakdown(profile, roots, _handler_test(matcher, profile.endpoint))
        route.count += 1
        route.total_ms += split.total_ms
        route.await_ms += split.await_ms
        route.outside_ms += split.outside_ms
        route.requests.append(split)
        if profile.tree is not None:
            trees.setdefault(route.endpoint, []).append(profile.tree)
        route.slowest.append(profile)
    contended = contended_resources(routes.values(), slow_ms)
    for route in routes.values():
        route.tree = merge_trees(trees.get(route.endpoint, ()))
        route.slowest.sort(key=lambda p: -p.duration_ms)
        del route.slowest[SLOWEST_KEPT:]
        route.sites = _sites(route.requests, contended)
    return routes


def route_profiles(ctx: AnalysisContext) -> dict[str, RouteProfiles]:
    """`aggregate` of the session's profiles, judged as the rules judge them; computed once
    per analysis (`slow_endpoint` and `slow_await` both read it)."""
    found: dict[str, RouteProfiles] | None = ctx.memo.get("route_profiles")
    if found is None:
        found = ctx.memo["route_profiles"] = aggregate(
            ctx.data.profiles, ctx.matcher.roots, ctx.thresholds.await_min_ms, ctx.matcher)
    return found


def _handler_test(matcher: RouteMatcher | None,
                  endpoint: str) -> Callable[[ProfileNode], bool] | None:
    """Whether a node runs `endpoint`'s handler; None when the route table does not say."""
    handler = matcher.handler_of(endpoint) if matcher is not None else None
    if matcher is None or handler is None:
        return None

    def test(node: ProfileNode) -> bool:
        if not node.file:
            return False
        served = matcher.endpoint_of((Frame(node.function, node.file, node.line),))
        return served is not None and matcher.handler_of(served) == handler

    return test


def contended_resources(routes: Iterable[RouteProfiles], slow_ms: float) -> set[str]:
    """Resources slow (median await `slow_ms` or more at some site) on at least
    `CONTENDED_ROUTES` routes and on at least half the routes that await them. A site waiting
    its turn at a lock (`TURNS`) names no resource (`_add_site`): the queue is at that line,
    whichever routes it holds up."""
    using: dict[str, int] = {}
    slow: dict[str, int] = {}
    for route in routes:
        waits: dict[tuple[str, SiteKey], list[float]] = {}
        for split in route.requests:
            for key, site in split.sites.items():
                if site.resource:
                    waits.setdefault((site.resource, key), []).append(site.ms)
        resources = {resource for resource, _ in waits}
        slow_here = {resource for (resource, _), values in waits.items()
                     if median(values) >= slow_ms}
        for resource in resources:
            using[resource] = using.get(resource, 0) + 1
            slow[resource] = slow.get(resource, 0) + (resource in slow_here)
    return {r for r, n in slow.items() if n >= CONTENDED_ROUTES and 2 * n >= using[r]}


def _sites(requests: list[RequestBreakdown], contended: set[str]) -> list[AwaitSite]:
    contended_ms = [sum(s.ms for s in split.sites.values() if s.resource in contended)
                    for split in requests]
    keys = sorted({key for split in requests for key in split.sites})
    out = []
    for key in keys:
        seen = [split.sites[key] for split in requests if key in split.sites]
        mine = [split.sites[key].ms if key in split.sites else 0.0 for split in requests]
        is_contended = seen[0].resource in contended
        # the rest of each request's own time (a contended site's await is already out of it)
        rest = [max(0.0, split.total_ms - split.outside_ms - other - (0.0 if is_contended
                                                                       else ms))
                for split, other, ms in zip(requests, contended_ms, mine, strict=True)]
        floor, floor_rest = lower_quartile(mine), lower_quartile(rest)
        out.append(AwaitSite(
            key[0], key[1], key[2], seen[0].awaited, seen[0].resource,
            sum(s.ms for s in seen), len(seen), median(s.ms for s in seen), floor,
            floor / (floor + floor_rest) if floor + floor_rest > 0 else 0.0, is_contended,
            _waits_for(seen)))
    return sorted(out, key=lambda s: (-s.floor_ms, -s.total_ms, s.file, s.line))


def describe_site(site: AwaitSite) -> str:
    """"`sleep` at slow_await.py:24" for evidence sentences."""
    call = f"`{site.awaited}` at " if site.awaited else ""
    return f"{call}{PurePath(site.file).name}:{site.line}"


def dominant_site(route: RouteProfiles | None, min_share: float) -> AwaitSite | None:
    """The route's dominant await site when it holds at least `min_share` of its profiled
    requests' own time; None for a route slow on CPU, so that it is never blamed on an
    await."""
    if route is None or route.count < MIN_PROFILES:
        return None
    site = route.dominant
    return site if site is not None and site.share >= min_share else None


def describe_dominant(site: AwaitSite) -> str:
    """"78% of its profiled requests' own time spent awaiting `AsyncSession.execute` at
    orders.py:41" for a route's `dominant_site`."""
    return (f"{pct(site.share)} of its profiled requests' own time spent awaiting"
            f" {describe_site(site)}{describe_rendezvous(site) if site.waits_for else ''}")


def merge_trees(trees: Iterable[ProfileNode]) -> ProfileNode | None:
    """The trees merged into one (None for none): nodes matched by (function, file, line) under
    matched parents, times summed; a merged node's children are ordered heaviest first."""
    merged: _Merged | None = None
    for tree in trees:
        if merged is None:
            merged = _Merged(tree)
        else:
            merged.add(tree)
    return merged.freeze() if merged is not None else None


class _Merged:
    """A node of a merge in progress (`ProfileNode`s are frozen)."""

    __slots__ = ("await_ms", "children", "index", "merged", "node", "time_ms")

    def __init__(self, node: ProfileNode) -> None:
        self.node = node
        self.time_ms, self.await_ms = node.time_ms, node.await_ms
        self.children = [_Merged(child) for child in node.children]
        self.index = {child.node.key: child for child in self.children}
        self.merged = False  # a node only copied keeps its children's order

    def add(self, tree: ProfileNode) -> None:
        self.merged = True
        self.time_ms += tree.time_ms
        self.await_ms += tree.await_ms
        for child in tree.children:
            match = self.index.get(child.key)
            if match is None:
                self.children.append(_Merged(child))
                self.index[child.key] = self.children[-1]
            else:
                match.add(child)

    def freeze(self) -> ProfileNode:
        children = self.children
        if self.merged:
            children = sorted(children, key=lambda c: -c.time_ms)
        node = self.node
        return ProfileNode(node.function, node.file, node.line, self.time_ms, self.await_ms,
                           tuple(child.freeze() for child in children))
