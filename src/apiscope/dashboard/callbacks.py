"""The dashboard's callbacks: each turns the session data and the controls into one view.

Every view listens to `version` (changes when a live refresh read new rows) and `range` (the
time range shared by all views), so a new request or a selection anywhere updates everything.
"""

from __future__ import annotations

from typing import Any

from dash import ALL, Dash, Input, Output, State, ctx, no_update

from apiscope.dashboard import components as ui
from apiscope.dashboard import profiles
from apiscope.dashboard.data import DashboardSession, Range
from apiscope.dashboard.exports import FORMATS, describe, export_slice
from apiscope.dashboard.figures import (
    RESOURCE_METRICS,
    empty_figure,
    flame_figure,
    latency_figure,
    parse_iso,
    rate_figure,
    resource_figure,
    timeline_figure,
)
from apiscope.dashboard.flame import kind_of
from apiscope.dashboard.pages import page_for
from apiscope.dashboard.samples import HANDLER_ROLES, SampleSlice
from apiscope.model import Frame


def as_range(value: Any) -> Range:
    if not value or len(value) != 2:
        return None
    return float(value[0]), float(value[1])


def range_from_relayout(event: dict[str, Any] | None) -> Range | bool:
    """The x range a zoom selected; False when the event resets it; None when it says
    nothing about the x axis (autosize, a y zoom)."""
    if not event:
        return None
    if event.get("xaxis.autorange"):
        return False
    if "xaxis.range[0]" in event and "xaxis.range[1]" in event:
        low, high = event["xaxis.range[0]"], event["xaxis.range[1]"]
    elif isinstance(event.get("xaxis.range"), list):
        low, high = event["xaxis.range"]
    else:
        return None
    return parse_iso(low), parse_iso(high)


ROLE_CHOICES = {"handler": HANDLER_ROLES, "loop": frozenset({"loop"}),
                "worker": frozenset({"worker"}), "other": frozenset({"other"})}


def slice_of(rng: Range, pid: Any = None, thread: Any = None, endpoint: Any = None,
             toggles: Any = None, role: Any = None) -> SampleSlice:
    tid = None
    roles = ROLE_CHOICES.get(str(role)) if role else None
    if thread:
        pid_text, tid_text = str(thread).split(":")
        pid, tid = int(pid_text), int(tid_text)
        roles = None  # a thread the user picked is shown whatever its role
    flags = set(toggles or ())
    return SampleSlice(rng[0] if rng else None, rng[1] if rng else None,
                       int(pid) if pid not in (None, "") else None, tid, endpoint or None,
                       include_blocked="blocked" in flags, include_idle="idle" in flags,
                       gil_only="gil" in flags, roles=roles)


def slice_label(flt: SampleSlice) -> str:
    """What a slice's samples are: on-CPU time, plus the off-CPU time the user added."""
    added = [name for name, on in (("waiting", flt.include_blocked), ("idle", flt.include_idle))
             if on]
    return "on CPU" + (" + " + " + ".join(added) if added else " only")


def register(app: Dash, data: DashboardSession) -> None:
    _register_shell(app, data)
    _register_overview(app, data)
    _register_endpoint(app, data)
    profiles.register(app, data)
    _register_flamegraph(app, data)
    _register_resources(app, data)


def _register_shell(app: Dash, data: DashboardSession) -> None:
    @app.callback(Output("page", "children"), Input("url", "pathname"), Input("url", "search"))
    def route(pathname: str | None, search: str | None) -> Any:
        return page_for(pathname, search)

    @app.callback(Output("version", "data"), Input("tick", "n_intervals"),
                  State("version", "data"), prevent_initial_call=True)
    def tick(_n: int, seen: Any) -> Any:
        version = data.refresh()
        return no_update if version == seen else version

    @app.callback(Output("range", "data"),
                  Input({"type": "timechart", "name": ALL}, "relayoutData"),
                  Input("range-reset", "n_clicks"), prevent_initial_call=True)
    def select_range(_events: Any, _reset: Any) -> Any:
        if ctx.triggered_id == "range-reset":
            return None
        chosen = range_from_relayout(ctx.triggered[0]["value"] if ctx.triggered else None)
        if chosen is None:
            return no_update
        return None if chosen is False else list(chosen)  # type: ignore[arg-type]

    @app.callback(Output("range-label", "children"), Input("range", "data"))
    def range_label(value: Any) -> str:
        rng = as_range(value)
        if rng is None:
            return "whole session"
        return f"{ui.clock(rng[0])} – {ui.clock(rng[1])} UTC ({rng[1] - rng[0]:.1f} s)"


def _register_overview(app: Dash, data: DashboardSession) -> None:
    @app.callback(Output("sort", "data"),
                  Input({"type": "sort", "column": ALL}, "n_clicks"),
                  State("sort", "data"), prevent_initial_call=True)
    def sort(_clicks: Any, current: Any) -> Any:
        if not ctx.triggered or not ctx.triggered[0]["value"]:
            return no_update  # the buttons were just re-rendered, not clicked
        column = ctx.triggered_id["column"]
        # first click sorts names ascending and figures descending; a second click flips it
        return [column, not current[1] if current[0] == column else column != "endpoint"]

    @app.callback(Output("overview-summary", "children"), Output("endpoints", "children"),
                  Output("flags", "children"), Output("processes", "children"),
                  Input("version", "data"), Input("range", "data"), Input("sort", "data"))
    def overview(_version: Any, range_value: Any, sort_value: Any) -> Any:
        rng = as_range(range_value)
        rows = data.endpoint_rows(rng)
        if rows:
            table: Any = ui.endpoints_table(rows, sort_value)
        else:
            table = ui.empty_state(ui.NO_TRAFFIC if data.routes() else ui.NO_REQUESTS)
        flags: Any = ui.flag_cards(data.flags()) or ui.empty_state(
            data.flags_pending()
            or "no bottlenecks flagged: every rule found the endpoints healthy so far")
        cards: Any = ui.process_cards(data.process_cards()) or ui.empty_state(
            "no processes recorded yet: the collector has not reported the target")
        summary = (f"{sum(r.stats.count for r in rows):,} requests on {len(rows)} endpoints"
                   f" over {data.seconds(rng):.0f} s, {len(data.flags())} flags")
        note = data.collection_note()
        if note:
            summary += f" ({note})"
        return summary, table, flags, cards


def _register_endpoint(app: Dash, data: DashboardSession) -> None:
    @app.callback(Output("endpoint-summary", "children"), Output("endpoint-flags", "children"),
                  Output({"type": "timechart", "name": "latency"}, "figure"),
                  Output({"type": "timechart", "name": "rate"}, "figure"),
                  Output("slow-requests", "children"),
                  Input("endpoint-route", "data"), Input("version", "data"),
                  Input("range", "data"))
    def endpoint(route: str, _version: Any, range_value: Any) -> Any:
        rng = as_range(range_value)
        stats = next(iter(data.endpoint_rows(rng, only=route)), None)
        if stats is None:
            message = f"no requests to {route} in this range" if data.requests.rows else (
                ui.NO_TRAFFIC if data.routes() else ui.NO_REQUESTS)
            empty = empty_figure(message)
            summary: Any = ui.empty_state(message)
            slow: Any = ui.empty_state(message)
            latency, rate = empty, empty
        else:
            s = stats.stats
            summary = (f"{s.count:,} requests, {s.rps:.2f}/s, p50 {s.p50_ms:.1f} ms,"
                       f" p95 {s.p95_ms:.1f} ms, p99 {s.p99_ms:.1f} ms,"
                       f" 5xx {100 * s.error_rate:.1f}%")
            series = data.latency_series(route, rng)
            latency = latency_figure(series, rng) if series else empty_figure("no data")
            rate = rate_figure(series, rng) if series else empty_figure("no data")
            slow = ui.slow_requests_table(data.slowest_requests(route, rng))
        flags = ui.flag_cards(data.flags(route))
        return summary, flags, latency, rate, slow

    @app.callback(Output("endpoint-flame", "figure"), Input("endpoint-route", "data"),
                  Input("version", "data"), Input("range", "data"),
                  Input("endpoint-flame-toggles", "value"),
                  Input("endpoint-flame-frames", "value"))
    def endpoint_flame(route: str, _version: Any, range_value: Any, toggles: Any,
                       frames: Any) -> Any:
        if not route:
            return empty_figure("choose an endpoint on the overview")
        flt = slice_of(as_range(range_value), endpoint=route, toggles=toggles, role="handler")
        from_handler = "framework" not in (frames or ())
        return _flame(data, flt, "", None, handler=route if from_handler else None)[0]


def _flame(data: DashboardSession, flt: SampleSlice, search: str, height: int | None,
           handler: str | None = None) -> tuple[Any, int, int, int]:
    """The flamegraph figure, matches, matched samples and all samples of a slice; with
    `handler` (an endpoint), rooted at its handler."""
    if not data.has_samples():
        return empty_figure(ui.NO_SAMPLES, height or 300), 0, 0, 0
    tree = data.flame(flt) if handler is None else data.endpoint_flame(flt, handler)
    if not tree.value:
        hidden = "" if flt.include_blocked else " (tick “waiting” to add sleep, I/O and locks)"
        return empty_figure(f"no {slice_label(flt)} samples match these filters: widen them"
                            + hidden, height or 300), 0, 0, 0
    roots = data.app_roots()

    def kind(frame: Frame) -> Any:
        return kind_of(frame, roots)

    revision = repr(flt) + ("" if handler is None else " from the handler")
    figure, matches, matched = flame_figure(tree, kind, search, height, revision=revision)
    return figure, matches, matched, tree.value


def _register_flamegraph(app: Dash, data: DashboardSession) -> None:
    @app.callback(Output("flame-pid", "options"), Output("flame-endpoint", "options"),
                  Input("version", "data"))
    def options(_version: Any) -> Any:
        pids = [{"label": f"pid {pid}", "value": pid} for pid in data.pids()]
        endpoints = sorted(set(data.requests.columns)
                           | {f"{r.method} {r.template}" for r in data.routes()})
        return pids, [{"label": e, "value": e} for e in endpoints]

    @app.callback(Output("flame-thread", "options"), Input("version", "data"),
                  Input("flame-pid", "value"))
    def threads(_version: Any, pid: Any) -> Any:
        return [{"label": f"{name} ({role}) pid {p} tid {tid}", "value": f"{p}:{tid}"}
                for p, tid, name, role in data.threads() if pid in (None, "") or p == pid]

    @app.callback(Output("flame", "figure"), Output("flame-info", "children"),
                  Output("functions", "children"),
                  Input("version", "data"), Input("range", "data"), Input("flame-pid", "value"),
                  Input("flame-thread", "value"), Input("flame-endpoint", "value"),
                  Input("flame-toggles", "value"), Input("flame-search", "value"),
                  Input("flame-role", "value"))
    def flamegraph(_version: Any, range_value: Any, pid: Any, thread: Any, endpoint: Any,
                   toggles: Any, search: Any, role: Any) -> Any:
        flt = slice_of(as_range(range_value), pid, thread, endpoint, toggles, role)
        figure, matches, matched, total = _flame(data, flt, search or "", None)
        info = f"{total:,} samples in view ({slice_label(flt)})"
        if search:
            share = matched / total if total else 0.0
            info += f"; “{search}” matches {matches} frames, {100 * share:.1f}% of samples"
        rows, counted = data.functions(flt)
        table: Any = ui.functions_table(rows, counted) if rows else ui.empty_state(
            "no functions to rank in this slice")
        return figure, info, table

    @app.callback(Output({"type": "timechart", "name": "timeline"}, "figure"),
                  Input("version", "data"), Input("range", "data"))
    def timeline(_version: Any, range_value: Any) -> Any:
        points = data.samples.active_rate()
        if not points:
            return empty_figure(ui.NO_SAMPLES, 180)
        return timeline_figure(points, as_range(range_value), data.gaps())

    @app.callback(Output("export-download", "data"),
                  [Input(f"export-{fmt}", "n_clicks") for fmt in FORMATS],
                  State("range", "data"), State("flame-pid", "value"),
                  State("flame-thread", "value"), State("flame-endpoint", "value"),
                  State("flame-toggles", "value"), State("flame-role", "value"),
                  prevent_initial_call=True)
    def export(*args: Any) -> Any:
        if not ctx.triggered or not ctx.triggered[0]["value"]:
            return no_update
        range_value, pid, thread, endpoint, toggles, role = args[len(FORMATS):]
        flt = slice_of(as_range(range_value), pid, thread, endpoint, toggles, role)
        fmt = str(ctx.triggered_id).removeprefix("export-")
        out = export_slice(data, flt, fmt, describe(flt))
        return {"content": out.content, "filename": out.filename}


def _register_resources(app: Dash, data: DashboardSession) -> None:
    @app.callback([Output({"type": "timechart", "name": m}, "figure")
                   for m, _, _ in RESOURCE_METRICS] + [Output("resources-empty", "children")],
                  Input("version", "data"), Input("range", "data"))
    def resources(_version: Any, range_value: Any) -> Any:
        series = data.resource_series()
        rng = as_range(range_value)
        if not series:
            message = "no resource samples recorded yet: the collector samples psutil once a second"
            return [empty_figure(message) for _ in RESOURCE_METRICS] + [ui.empty_state(message)]
        return [resource_figure(m, title, unit, series, rng)
                for m, title, unit in RESOURCE_METRICS] + [None]
