"""`create_fleet_app(prometheus_url)`: the fleet view, a Dash app over Prometheus' HTTP API.

Where the session dashboard shows one server in depth, the fleet view shows every instance
Prometheus scrapes side by side: per route p95, request rate and error rate (a table and two
charts), and which instances carry which flags. It refreshes itself every `refresh_ms`.
"""

from __future__ import annotations

import time

from dash import Dash, Input, Output, dcc, html

from apiscope.fleet.data import FleetSnapshot, fetch_snapshot
from apiscope.fleet.figures import flags_table, p95_figure, routes_table, rps_figure
from apiscope.fleet.prometheus import PrometheusClient, PrometheusError

STYLE = {"fontFamily": "system-ui, sans-serif", "margin": "0 2em"}


def create_fleet_app(prometheus_url: str, *, window: str = "5m", refresh_ms: int = 10_000,
                     client: PrometheusClient | None = None, check: bool = True) -> Dash:
    """The fleet view of the apiscope instances `prometheus_url` scrapes.

    `check=True` queries Prometheus once first, so that a wrong URL is a usage error (exit 2)
    at start-up rather than an empty page. Serve it with `apiscope.dashboard.serve(app, ...)`.
    """
    client = client or PrometheusClient(prometheus_url)
    if check:
        client.check()
    app = Dash("apiscope.fleet", title="apiscope fleet", serve_locally=True, update_title="")
    app.layout = layout(client.base_url, window, refresh_ms)
    register(app, client, window)
    return app


def layout(url: str, window: str, refresh_ms: int) -> html.Div:
    return html.Div([
        html.H1("apiscope fleet"),
        html.P([f"Every apiscope instance scraped by {url}; rates over the last {window}."],
               className="subtitle"),
        html.P(id="fleet-status", className="status"),
        dcc.Interval(id="fleet-refresh", interval=refresh_ms, n_intervals=0),
        html.H2("Routes by instance"),
        html.Div(id="fleet-routes"),
        html.Div([dcc.Graph(id="fleet-p95"), dcc.Graph(id="fleet-rps")],
                 style={"display": "grid", "gridTemplateColumns": "1fr 1fr", "gap": "1em"}),
        html.H2("Active flags"),
        html.Div(id="fleet-flags"),
    ], style=STYLE)


def register(app: Dash, client: PrometheusClient, window: str) -> None:
    last: dict[str, FleetSnapshot] = {}  # shown again, marked stale, when a refresh fails

    @app.callback(
        Output("fleet-routes", "children"), Output("fleet-p95", "figure"),
        Output("fleet-rps", "figure"), Output("fleet-flags", "children"),
        Output("fleet-status", "children"), Input("fleet-refresh", "n_intervals"))
    def refresh(_n: int) -> tuple[object, ...]:
        try:
            snapshot = fetch_snapshot(client, window)
            last["snapshot"] = snapshot
            status = (f"{len(snapshot.instances)} instances, {len(snapshot.routes)} routes;"
                      f" updated {time.strftime('%H:%M:%S', time.localtime(snapshot.at))}")
        except PrometheusError as exc:
            snapshot = last.get("snapshot") or FleetSnapshot((), (), (), window, time.time())
            status = f"cannot refresh: {exc.message}"
        return (routes_table(snapshot), p95_figure(snapshot), rps_figure(snapshot),
                flags_table(snapshot), status)
