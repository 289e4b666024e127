"""The page skeletons: a shell (navigation, shared time range, live ticker) and four pages.

Skeletons are static; callbacks (`callbacks.py`) fill them from the session, so a live refresh
updates the parts that changed and never rebuilds a page the user is working in.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from dash import dcc, html

from apiscope.dashboard.exports import FORMATS
from apiscope.dashboard.figures import RESOURCE_METRICS
from apiscope.dashboard.profiles import profiles_section

NAV = (("/", "Overview"), ("/flamegraph", "Flamegraph"), ("/resources", "Resources"))
DEFAULT_SORT = ["count", True]
# Off-CPU time at a working stack: the thread was inside a request but not on a CPU.
OFF_CPU_TOGGLES: list[dict[str, Any]] = [
    {"label": " waiting: sleep, I/O, locks, GIL, a free CPU", "value": "blocked"}]


def shell(*, live: bool, refresh_ms: int, title: str, version: list[Any]) -> html.Div:
    return html.Div([
        dcc.Location(id="url"),
        dcc.Store(id="range", data=None),
        dcc.Store(id="version", data=version),
        dcc.Store(id="sort", data=DEFAULT_SORT),
        # Replay ticks too: the background analysis delivers its flags after the first page.
        dcc.Interval(id="tick", interval=refresh_ms if live else max(refresh_ms, 3000)),
        html.Header([
            html.Span("apiscope", className="brand"),
            html.Nav([dcc.Link(label, href=href, className="nav-link") for href, label in NAV]),
            html.Span("live" if live else "replay", className="mode mode-live" if live
                      else "mode mode-replay"),
            html.Span(title, className="session-name"),
            html.Span([html.Span("whole session", id="range-label"),
                       html.Button("reset range", id="range-reset", n_clicks=0,
                                   className="small-button")], className="range-box"),
        ], className="top"),
        html.Main(id="page"),
    ])


def page_for(pathname: str | None, search: str | None) -> html.Div:
    path = (pathname or "/").rstrip("/") or "/"
    if path == "/endpoint":
        route = parse_qs((search or "").lstrip("?")).get("route", [""])[0]
        return endpoint_page(route)
    if path == "/flamegraph":
        return flamegraph_page()
    if path == "/resources":
        return resources_page()
    if path == "/":
        return overview_page()
    return html.Div([html.H2("Not found"),
                     html.P(["No page at ", html.Code(path), ": ",
                             dcc.Link("go to the overview", href="/")])], id="not-found")


def _section(title: str, *children: Any) -> html.Section:
    return html.Section([html.H2(title), *children])


def overview_page() -> html.Div:
    return html.Div([
        html.Div(id="overview-summary", className="summary"),
        _section("Endpoints", html.Div(id="endpoints")),
        _section("Flags", html.Div(id="flags")),
        _section("Processes", html.Div(id="processes", className="cards")),
    ], id="overview-page")


def endpoint_page(route: str) -> html.Div:
    return html.Div([
        html.H1(route or "no endpoint chosen", id="endpoint-title"),
        dcc.Store(id="endpoint-route", data=route),
        html.Div(id="endpoint-summary", className="summary"),
        html.Div(id="endpoint-flags"),
        html.Div([
            dcc.Graph(id={"type": "timechart", "name": "latency"}, className="half",
                      config={"displaylogo": False}),
            dcc.Graph(id={"type": "timechart", "name": "rate"}, className="half",
                      config={"displaylogo": False}),
        ], className="row"),
        _section("Where its time goes", html.Div([
            html.Span("on CPU, add:", className="control-label"),
            dcc.Checklist(id="endpoint-flame-toggles", value=[], inline=True,
                          className="control", options=OFF_CPU_TOGGLES),
            # From the handler down by default (`flame.from_handler`); one click shows the
            # server, event loop and framework frames above it.
            dcc.Checklist(id="endpoint-flame-frames", value=[], inline=True,
                          className="control", options=[
                              {"label": " show server and framework frames",
                               "value": "framework"}])], className="controls"),
            dcc.Graph(id="endpoint-flame", config={"displaylogo": False})),
        profiles_section(),
        _section("Slowest requests", html.Div(id="slow-requests")),
    ], id="endpoint-page")


def flamegraph_page() -> html.Div:
    controls = html.Div([
        dcc.Dropdown(id="flame-pid", placeholder="all processes", className="control"),
        # By default the threads that run handlers, as the report counts CPU shares; idle
        # helper threads (one per aiosqlite connection) would otherwise fill the picture.
        dcc.Dropdown(id="flame-role", value="handler", placeholder="all thread roles",
                     className="control wide", options=[
                         {"label": "request threads (event loop + pool)", "value": "handler"},
                         {"label": "event loop threads", "value": "loop"},
                         {"label": "thread-pool workers", "value": "worker"},
                         {"label": "other threads", "value": "other"}]),
        dcc.Dropdown(id="flame-thread", placeholder="all threads", className="control wide"),
        dcc.Dropdown(id="flame-endpoint", placeholder="all endpoints", className="control wide"),
        # On-CPU time by default: a handler sleeping in time.sleep is not CPU work.
        html.Span("on CPU, add:", className="control-label"),
        dcc.Checklist(id="flame-toggles", value=[], className="control", inline=True,
                      options=OFF_CPU_TOGGLES + [
                          {"label": " idle (threads waiting for work)", "value": "idle"},
                          {"label": " GIL holders only", "value": "gil"}]),
        dcc.Input(id="flame-search", type="search", placeholder="search frames",
                  debounce=True, className="control"),
    ], className="controls")
    exports = html.Div([html.Span("download: ")] + [
        html.Button(fmt, id=f"export-{fmt}", n_clicks=0, className="small-button")
        for fmt in FORMATS] + [dcc.Download(id="export-download")], className="exports")
    return html.Div([
        controls,
        dcc.Graph(id={"type": "timechart", "name": "timeline"}, className="timeline-chart",
                  config={"displaylogo": False}),
        html.Div([html.Div(id="flame-info", className="summary"), exports], className="row"),
        html.Div([html.Span(kind, className=f"kind kind-{kind}") for kind in
                  ("app", "library", "stdlib", "other")], className="legend"),
        dcc.Graph(id="flame", config={"displaylogo": False}),
        _section("Top functions", html.Div(id="functions")),
    ], id="flamegraph-page")


def resources_page() -> html.Div:
    return html.Div([
        html.Div(id="resources-empty"),
        html.Div([dcc.Graph(id={"type": "timechart", "name": metric}, className="half",
                            config={"displaylogo": False})
                  for metric, _, _ in RESOURCE_METRICS], className="row wrap"),
    ], id="resources-page")
