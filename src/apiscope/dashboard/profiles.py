"""The endpoint page's async-profile section: where the route's requests wait, and downloads.

The sampled per-request profiles of one route, aggregated (`apiscope.analysis.profiles`): the
split between running on the loop and awaiting, the await sites, the merged call tree (library
frames folded away except the call an application line made), and the slowest profiled
requests, each downloadable as pyinstrument's HTML page or a speedscope file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from apiscope.analysis.attribution import RouteMatcher
from apiscope.analysis.profiles import (
    RouteProfiles,
    aggregate,
    breakdown,
    describe_site,
    is_app_node,
)
from apiscope.dashboard.components import clock, empty_state
from apiscope.dashboard.data import DashboardSession
from apiscope.exporters.profile import (
    profile_filename,
    render_profile_html,
    render_profile_speedscope,
)
from apiscope.model import ProfileNode, StoredProfile
from apiscope.store import SessionReader

NO_PROFILES = ("no async profiles of this endpoint yet: the agent profiles 1 request in 20 per"
               " route (APISCOPE_PROFILE_EVERY) and the next one after a slow request")
DOWNLOADS = (("html", "pyinstrument HTML", ".html"),
             ("speedscope", "speedscope", ".speedscope.json"))
TREE_ROWS = 40


@dataclass(frozen=True, slots=True)
class TreeRow:
    depth: int
    function: str
    where: str
    app: bool
    ms: float  # per profiled request
    await_ms: float  # per profiled request, in this subtree


def profiles_section() -> html.Section:
    return html.Section([html.H2("Where it waits (sampled async profiles)"),
                         html.Div(id="endpoint-profiles"),
                         dcc.Download(id="profile-download")])


def load_profiles(path: Any, endpoint: str) -> list[StoredProfile]:
    """The stored profiles of one endpoint ("METHOD /template"), through a connection of its
    own (callbacks run in threads; the dashboard's reader is not this module's to lock)."""
    method, _, template = endpoint.partition(" ")
    if not template:
        return []
    with SessionReader(path) as reader:
        return [p for p in reader.profiles(template) if p.method == method]


def profile_key(profile: StoredProfile) -> str:
    return f"{profile.pid}:{float(profile.start)!r}"


def tree_rows(tree: ProfileNode, count: int, roots: Sequence[str],
              min_share: float = 0.01, limit: int = TREE_ROWS) -> list[TreeRow]:
    """The merged tree as indented rows: application frames, the call each one made into a
    library, and the root; other library frames are folded, nodes under `min_share` dropped."""
    total = tree.time_ms
    rows: list[TreeRow] = []
    per = max(1, count)

    def visit(node: ProfileNode, depth: int, under_app: bool) -> None:
        if len(rows) >= limit or node.time_ms < min_share * total:
            return
        app = is_app_node(node, roots)
        shown = node is tree or app or under_app
        if shown:
            where = f"{PurePath(node.file).name}:{node.line}" if node.file else ""
            rows.append(TreeRow(depth, node.function, where, app, node.time_ms / per,
                                subtree_await(node) / per))
        for child in node.children:
            visit(child, depth + 1 if shown else depth, app)

    visit(tree, 0, False)
    return rows


def subtree_await(node: ProfileNode) -> float:
    return node.await_ms + sum(subtree_await(c) for c in node.children)


def profiles_view(route: RouteProfiles | None, roots: Sequence[str]) -> list[Any]:
    if route is None or not route.count:
        return [empty_state(NO_PROFILES)]
    total = route.total_ms or 1.0
    summary = (f"{route.count} profiled requests: {100 * route.cpu_ms / total:.0f}% of their"
               f" time running on the event loop, {100 * route.await_ms / total:.0f}% awaiting")
    return [html.Div(summary, className="summary", id="profiles-summary"),
            _sites_table(route), _tree_table(route, roots), html.H3("Slowest profiled requests"),
            _slowest_table(route, roots)]


def _sites_table(route: RouteProfiles) -> Any:
    if not route.sites:
        return empty_state("no await in application code: the time went elsewhere")
    head = html.Tr([html.Th(t) for t in ("awaiting", "in", "share of own time", "floor ms",
                                         "typical ms", "requests", "note")])
    body = [html.Tr([
        html.Td(html.Code(describe_site(s))), html.Td(html.Code(f"{s.function}()")),
        html.Td("-" if s.contended else f"{100 * s.share:.0f}%"),
        html.Td(f"{s.floor_ms:,.1f}"), html.Td(f"{s.typical_ms:,.1f}"), html.Td(str(s.requests)),
        html.Td(f"{s.resource} is slow on many routes at once (contention)" if s.contended
                else "")])
        for s in route.sites[:10]]
    return html.Table([html.Thead(head), html.Tbody(body)], id="await-sites-table",
                      className="data-table")


def _tree_table(route: RouteProfiles, roots: Sequence[str]) -> Any:
    if route.tree is None:
        return empty_state("no call tree in these profiles")
    rows = tree_rows(route.tree, route.count, roots)
    head = html.Tr([html.Th(t) for t in ("call tree (per request)", "where", "ms", "awaiting ms")])
    body = [html.Tr([
        html.Td(html.Code(r.function), style={"paddingLeft": f"{0.3 + 1.2 * r.depth}em"},
                className="kind-app" if r.app else None),
        html.Td(r.where), html.Td(f"{r.ms:,.1f}"), html.Td(f"{r.await_ms:,.1f}")])
        for r in rows]
    return html.Table([html.Thead(head), html.Tbody(body)], id="profile-tree-table",
                      className="data-table")


def _slowest_table(route: RouteProfiles, roots: Sequence[str]) -> Any:
    head = html.Tr([html.Th(t) for t in ("time", "pid", "ms", "awaiting", "main await",
                                         "download")])
    body = []
    for profile in route.slowest:
        split = breakdown(profile, roots)
        top = max(split.sites.items(), key=lambda kv: kv[1].ms, default=None)
        main = f"{PurePath(top[0][0]).name}:{top[0][1]} ({top[1].ms:,.0f} ms)" if top else "-"
        buttons = [html.Button(label, n_clicks=0, className="small-button",
                               id={"type": "profile-export", "fmt": fmt,
                                   "key": profile_key(profile)})
                   for fmt, label, _ in DOWNLOADS]
        body.append(html.Tr([
            html.Td(clock(profile.start)), html.Td(str(profile.pid)),
            html.Td(f"{profile.duration_ms:,.1f}"),
            html.Td(f"{100 * split.await_ms / split.total_ms:.0f}%" if split.total_ms else "-"),
            html.Td(html.Code(main)), html.Td(buttons)]))
    return html.Table([html.Thead(head), html.Tbody(body)], id="profiles-table",
                      className="data-table")


def export_profile(profile: StoredProfile, fmt: str) -> dict[str, str]:
    """What dcc.Download sends for one profile in `fmt` ("html" or "speedscope")."""
    suffix = next(s for f, _, s in DOWNLOADS if f == fmt)
    content = (render_profile_html(profile) if fmt == "html"
               else render_profile_speedscope(profile))
    return {"content": content, "filename": profile_filename(profile, suffix)}


def register(app: Dash, data: DashboardSession) -> None:
    @app.callback(Output("endpoint-profiles", "children"), Input("endpoint-route", "data"),
                  Input("version", "data"))
    def profiles(route: str, _version: Any) -> Any:
        if not route:
            return empty_state("choose an endpoint on the overview")
        roots = data.app_roots()
        found = aggregate(load_profiles(data.reader.path, route), roots,
                          matcher=RouteMatcher(data.routes(), data.requests.columns))
        return profiles_view(found.get(route), roots)

    @app.callback(Output("profile-download", "data"),
                  Input({"type": "profile-export", "fmt": ALL, "key": ALL}, "n_clicks"),
                  State("endpoint-route", "data"), prevent_initial_call=True)
    def download(_clicks: Any, route: str) -> Any:
        if not ctx.triggered or not ctx.triggered[0]["value"]:
            return no_update  # the buttons were just rendered, not clicked
        chosen = ctx.triggered_id
        for profile in load_profiles(data.reader.path, route):
            if profile_key(profile) == chosen["key"]:
                return export_profile(profile, chosen["fmt"])
        return no_update
