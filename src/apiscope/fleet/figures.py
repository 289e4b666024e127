"""Charts and tables of a fleet snapshot: pure functions from `FleetSnapshot` to components."""

from __future__ import annotations

import plotly.graph_objects as go
from dash import html

from apiscope.fleet.data import FleetSnapshot, RouteStat


def _endpoints(snapshot: FleetSnapshot) -> list[str]:
    return sorted({r.endpoint for r in snapshot.routes})


def _bars(snapshot: FleetSnapshot, title: str, unit: str, *, p95: bool) -> go.Figure:
    endpoints = _endpoints(snapshot)
    fig = go.Figure()
    for instance in snapshot.instances:
        by_endpoint = {r.endpoint: r for r in snapshot.routes if r.instance == instance}
        ys = [_metric(by_endpoint.get(e), p95=p95) for e in endpoints]
        fig.add_trace(go.Bar(name=instance, x=endpoints, y=ys))
    fig.update_layout(title=title, barmode="group", yaxis_title=unit, legend_title="instance",
                      margin={"l": 60, "r": 20, "t": 50, "b": 80}, height=360)
    return fig


def _metric(row: RouteStat | None, *, p95: bool) -> float | None:
    if row is None:
        return None
    return row.p95_ms if p95 else row.rps


def p95_figure(snapshot: FleetSnapshot) -> go.Figure:
    """p95 latency per route, one bar per instance side by side."""
    return _bars(snapshot, f"p95 latency per route (rate over {snapshot.window})", "ms",
                 p95=True)


def rps_figure(snapshot: FleetSnapshot) -> go.Figure:
    """Requests per second per route, one bar per instance side by side."""
    return _bars(snapshot, f"requests per second per route (over {snapshot.window})", "req/s",
                 p95=False)


def route_rows(snapshot: FleetSnapshot) -> list[dict[str, str]]:
    """The route table's rows as display strings (route, then instance)."""
    return [{"endpoint": r.endpoint, "instance": r.instance,
             "p95_ms": "-" if r.p95_ms is None else f"{r.p95_ms:.1f}",
             "rps": f"{r.rps:.2f}", "error_rate": f"{100.0 * r.error_rate:.1f}%"}
            for r in snapshot.routes]


CELL = {"padding": "2px 14px 2px 0", "textAlign": "left"}
NUMBER = {**CELL, "textAlign": "right"}
ROUTE_COLUMNS = (("endpoint", "route"), ("instance", "instance"), ("p95_ms", "p95 ms"),
                 ("rps", "req/s"), ("error_rate", "5xx"))


def routes_table(snapshot: FleetSnapshot) -> html.Table:
    numeric = ("p95_ms", "rps", "error_rate")
    head = html.Tr([html.Th(label, style=NUMBER if key in numeric else CELL)
                    for key, label in ROUTE_COLUMNS])
    body = [html.Tr([html.Td(row[key], className=key, style=NUMBER if key in numeric else CELL)
                     for key, _ in ROUTE_COLUMNS])
            for row in route_rows(snapshot)]
    if not body:
        body = [html.Tr(html.Td(f"no requests in the last {snapshot.window}",
                                colSpan=len(ROUTE_COLUMNS)))]
    return html.Table([html.Thead(head), html.Tbody(body)], id="fleet-routes-table",
                      className="fleet-table")


def flag_rows(snapshot: FleetSnapshot) -> list[dict[str, str]]:
    """One row per instance: its flags as `kind (severity) xN`, or `none`."""
    rows = []
    for instance in snapshot.instances:
        flags = snapshot.flags_of(instance)
        text = ", ".join(f"{f.kind} ({f.severity})" + (f" x{f.count}" if f.count > 1 else "")
                         for f in flags)
        rows.append({"instance": instance, "flags": text or "none"})
    return rows


def flags_table(snapshot: FleetSnapshot) -> html.Table:
    head = html.Tr([html.Th("instance", style=CELL), html.Th("active flags", style=CELL)])
    body = [html.Tr([html.Td(r["instance"], className="instance", style=CELL),
                     html.Td(r["flags"], className="flags", style=CELL)])
            for r in flag_rows(snapshot)]
    if not body:
        body = [html.Tr(html.Td("no apiscope instance found in Prometheus", colSpan=2))]
    return html.Table([html.Thead(head), html.Tbody(body)], id="fleet-flags-table",
                      className="fleet-table")
