"""Small HTML building blocks: tables, flag cards, process cards, empty states."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from dash import dcc, html

from apiscope.dashboard.data import EndpointRow, ProcessCard, SlowRequest
from apiscope.dashboard.flame import FunctionRow
from apiscope.flag import Flag
from apiscope.report import GC_ADVICE

NO_REQUESTS = ("no requests recorded yet: the agent is not injected — run attach without"
               " --no-inject or call apiscope.instrument(app)")
NO_TRAFFIC = ("no requests recorded yet: the agent is in place (the route table arrived),"
              " send some traffic to the server")
NO_SAMPLES = ("no stack samples recorded yet: the sampler (py-spy) has not delivered a window;"
              " check that py-spy can trace the target (run as root or set"
              " kernel.yama.ptrace_scope=0)")

ENDPOINT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("endpoint", "Endpoint"), ("count", "Requests"), ("rps", "req/s"), ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"), ("max_ms", "max ms"),
    ("error_rate", "5xx %"), ("cpu_share", "CPU share"))

COLUMN_HELP = {"cpu_share": "share of the processes' CPU time, as the kernel measured it, spent"
                            " in the handler: a handler sleeping or waiting on I/O costs none"}


def endpoint_href(endpoint: str) -> str:
    return "/endpoint?route=" + quote(endpoint, safe="")


def empty_state(message: str) -> html.Div:
    return html.Div(message, className="empty-state")


def clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _ms(value: float) -> str:
    """Milliseconds to a tenth below 10, whole above."""
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def sort_value(row: EndpointRow, column: str) -> Any:
    if column == "endpoint":
        return row.stats.endpoint
    if column == "cpu_share":
        return row.cpu_share if row.cpu_share is not None else -1.0
    return getattr(row.stats, column)


def endpoints_table(rows: Sequence[EndpointRow], sort: Sequence[Any]) -> html.Table:
    column, descending = sort[0], bool(sort[1])
    ordered = sorted(rows, key=lambda r: sort_value(r, column), reverse=descending)
    head = html.Tr([html.Th(html.Button(
        label + (" ▼" if descending else " ▲") * (key == column),
        id={"type": "sort", "column": key}, className="sort-button", n_clicks=0),
        title=COLUMN_HELP.get(key)) for key, label in ENDPOINT_COLUMNS])
    body = [html.Tr([
        html.Td(dcc.Link(r.stats.endpoint, href=endpoint_href(r.stats.endpoint),
                         className="endpoint-link")),
        html.Td(f"{r.stats.count:,}"), html.Td(_num(r.stats.rps, 2)),
        html.Td(_num(r.stats.p50_ms)), html.Td(_num(r.stats.p95_ms)),
        html.Td(_num(r.stats.p99_ms)), html.Td(_num(r.stats.max_ms)),
        html.Td(_pct(r.stats.error_rate), className="bad" if r.stats.error_rate else ""),
        html.Td(_pct(r.cpu_share))], className="endpoint-row") for r in ordered]
    return html.Table([html.Thead(head), html.Tbody(body)], id="endpoints-table",
                      className="data-table")


def flag_cards(flags: Sequence[Flag]) -> list[html.Div]:
    cards = []
    for f in flags:
        loc = f.location
        where = (f"{loc.file}:{loc.line}" + (f" in {loc.function}()" if loc.function else "")
                 if loc else "location unknown")
        route = f.route
        cards.append(html.Div([
            html.Div([html.Span(f.severity, className=f"severity sev-{f.severity}"),
                      html.Span(f.kind, className="flag-kind"),
                      dcc.Link(route, href=endpoint_href(route), className="flag-route")
                      if route else html.Span("whole process", className="flag-route")],
                     className="flag-head"),
            html.Div(f.evidence, className="flag-evidence"),
            html.Div(["at ", html.Code(where)], className="flag-location"),
            html.Div(["fix: ", f.suggestion], className="flag-suggestion"),
        ], className="flag-card"))
    return cards


def process_cards(cards: Sequence[ProcessCard]) -> list[html.Div]:
    out = []
    for c in cards:
        status = (html.Span(f"exited at {clock(c.exited_at)}", className="exited")
                  if c.exited_at is not None else html.Span("running", className="alive"))
        out.append(html.Div([
            html.Div([html.B(f"pid {c.pid}"), html.Span(c.role, className="role"), status],
                     className="process-head"),
            html.Div(c.command, className="process-command"),
            html.Table([html.Tbody([
                html.Tr([html.Td("CPU"), html.Td(f"{_num(c.cpu_percent)}% now,"
                                                 f" {_num(c.cpu_percent_avg)}% avg")]),
                html.Tr([html.Td("memory"), html.Td(f"{_num(c.rss_mb)} MB now,"
                                                    f" {_num(c.rss_mb_max)} MB max")]),
                html.Tr([html.Td("threads"), html.Td("-" if c.threads is None
                                                     else str(c.threads))]),
                html.Tr([html.Td("open fds"), html.Td("-" if c.fds is None else str(c.fds))]),
                *_server_row(c),
                *_native_row(c),
                *_loop_rows(c),
            ])], className="kv"),
        ], className="process-card" + (" process-exited" if c.exited_at is not None else "")))
    return out


def _server_row(card: ProcessCard) -> list[html.Tr]:
    """The share of the process's CPU its server and framework took for themselves (HTTP
    parsing, routing, middleware, logging), when the CPU time was measured."""
    if card.server_cpu_share is None:
        return []
    return [html.Tr([html.Td("server's own work"),
                     html.Td(f"{_pct(card.server_cpu_share)} of its CPU",
                             title="HTTP parsing, routing, middleware, logging: CPU of the"
                                   " request threads with no application frame running")],
                    className="server-share")]


def _native_row(card: ProcessCard) -> list[html.Tr]:
    """The share of the process's CPU used by threads Python does not run, when any."""
    if not card.native_cpu_share:
        return []
    return [html.Tr([html.Td("native threads"),
                     html.Td(f"{_pct(card.native_cpu_share)} of its CPU",
                             title="threads of a C extension's own (argon2's lanes, a BLAS pool):"
                                   " each route's CPU share includes what its requests waited"
                                   " for in the call")],
                    className="native-share")]


def _loop_rows(card: ProcessCard) -> list[html.Tr]:
    """How late its event loop ran callbacks, and the passes its garbage collector held it
    for, when the agent measured them."""
    rows = []
    if card.loop_lag is not None:
        rows.append(html.Tr([html.Td("event loop lag"),
                             html.Td(f"p50 {_ms(card.loop_lag.p50)} ms,"
                                     f" p99 {_ms(card.loop_lag.p99)} ms",
                                     title="how late the loop ran the agent's probe callbacks:"
                                           " every request on the loop waits as long")],
                            className="loop-lag"))
    gc = card.gc_pauses
    if gc is not None:
        rows.append(html.Tr([html.Td("garbage collector"),
                             html.Td(f"held the loop {gc.count} times, {gc.seconds:.2f} s"
                                     f" (longest {gc.longest_ms:.0f} ms)",
                                     title=GC_ADVICE)],
                            className="gc-pauses"))
    return rows


def slow_requests_table(rows: Sequence[SlowRequest]) -> html.Table:
    head = html.Tr([html.Th(t) for t in ("time", "pid", "ms", "status", "queries",
                                         "query ms", "most repeated statement", "exception")])
    body = [html.Tr([
        html.Td(clock(s.request.start)), html.Td(str(s.request.pid)),
        html.Td(_num(s.request.duration_ms)), html.Td(str(s.request.status)),
        html.Td(str(s.request.query_count)), html.Td(_num(s.request.query_ms)),
        html.Td(html.Code(f"{s.top_statement} ×{s.top_statement_count}")
                if s.top_statement else "-"),
        html.Td(s.request.exc_type or "-")]) for s in rows]
    return html.Table([html.Thead(head), html.Tbody(body)], id="slow-table",
                      className="data-table")


def functions_table(rows: Sequence[FunctionRow], total: int) -> html.Table:
    head = html.Tr([html.Th(t, className="file" if t == "file" else None)
                    for t in ("function", "file", "kind", "self", "self %", "total", "total %")])
    whole = max(total, 1)
    body = [html.Tr([
        html.Td(html.Code(r.function)), html.Td(r.file, className="file"),
        html.Td(html.Span(r.kind, className=f"kind kind-{r.kind}")),
        html.Td(f"{r.self_count:,}"), html.Td(_pct(r.self_count / whole)),
        html.Td(f"{r.total_count:,}"), html.Td(_pct(r.total_count / whole))]) for r in rows]
    return html.Table([html.Thead(head), html.Tbody(body)], id="functions-table",
                      className="data-table")
