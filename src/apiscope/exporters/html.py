"""One standalone HTML page: the report (endpoints, flags) and the interactive flamegraph.

Everything is inline (styles, the SVG and its script): the page opens from a file, offline,
and can be attached to a ticket. `render_page` is also what `apiscope report --format html`
calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from apiscope.exporters.base import Profile
from apiscope.exporters.svg import escape, render_svg
from apiscope.exporters.tree import FlameNode
from apiscope.flag import Flag, Location
from apiscope.report import EndpointStats, Report

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.4em 0 .5em}
.summary{color:#555}
table{border-collapse:collapse;font-size:.9em}
th,td{border-bottom:1px solid #ddd;padding:.25em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}
.flag{border-left:4px solid #999;padding:.3em .8em;margin:.6em 0;background:#fafafa}
.flag.high{border-color:#c0392b}.flag.medium{border-color:#e67e22}.flag.low{border-color:#2980b9}
.flag .sev{font-weight:bold;text-transform:uppercase;font-size:.8em}
.flag .where{font-family:monospace;color:#555}
.none{color:#555;font-style:italic}
.graph svg{width:100%;height:auto}
.tools{margin:.4em 0}
"""

# The page's search box drives the graph's own search (see templates/flamegraph.js).
_PAGE_SCRIPT = """
(function () {
  var svg = document.querySelector(".graph svg");
  var box = document.getElementById("flame-search");
  document.getElementById("flame-search-form").addEventListener("submit", function (e) {
    e.preventDefault();
    if (box.value) { svg.flamegraph.search(box.value); } else { svg.flamegraph.clearSearch(); }
  });
  document.getElementById("flame-reset").addEventListener("click", function () {
    svg.flamegraph.reset();
    svg.flamegraph.clearSearch();
    box.value = "";
  });
})();
"""

ENDPOINT_COLUMNS: Sequence[tuple[str, str, Callable[[Any], str]]] = (
    ("route", "endpoint", str),
    ("count", "requests", lambda v: f"{int(v):,}"),
    ("rps", "req/s", lambda v: f"{float(v):.1f}"),
    ("p50_ms", "p50 ms", lambda v: f"{float(v):.1f}"),
    ("p95_ms", "p95 ms", lambda v: f"{float(v):.1f}"),
    ("p99_ms", "p99 ms", lambda v: f"{float(v):.1f}"),
    ("max_ms", "max ms", lambda v: f"{float(v):.1f}"),
    ("error_rate", "errors", lambda v: f"{100 * float(v):.1f}%"),
    ("cpu_share", "CPU share", lambda v: f"{100 * float(v):.1f}%"),
)


def _cell(value: Any, fmt: Callable[[Any], str]) -> str:
    if value is None:
        return "<td>-</td>"
    try:
        return f"<td>{escape(fmt(value))}</td>"
    except (TypeError, ValueError):
        return f"<td>{escape(str(value))}</td>"


def endpoints_table(endpoints: Sequence[EndpointStats]) -> str:
    if not endpoints:
        return '<p class="none">No endpoints were recorded.</p>'
    head = "".join(f"<th>{escape(title)}</th>" for _, title, _ in ENDPOINT_COLUMNS)
    rows = ["<tr>" + "".join(_cell(getattr(e, key), fmt) for key, _, fmt in ENDPOINT_COLUMNS)
            + "</tr>" for e in endpoints]
    return f'<table class="endpoints"><tr>{head}</tr>{"".join(rows)}</table>'


def _location(location: Location | None) -> str:
    if location is None:
        return ""
    where = f"{location.function or '?'} at {location.file}:{location.line}"
    return f'<div class="where">{escape(where)}</div>'


def flags_section(flags: Sequence[Flag]) -> str:
    if not flags:
        return '<p class="none">No bottleneck was flagged.</p>'
    out = []
    for flag in flags:
        severity = flag.severity
        route = f" on {flag.route}" if flag.route else ""
        out.append(
            f'<div class="flag {escape(severity)}"><span class="sev">{escape(severity)}</span>'
            f" <b>{escape(flag.kind)}</b>{escape(route)}"
            f"{_location(flag.location)}"
            f"<p>{escape(flag.evidence)}</p>"
            f"<p><b>Suggestion:</b> {escape(flag.suggestion)}</p></div>")
    return "".join(out)


def summary_line(report: Report) -> str:
    target, window, samples = report.target, report.window, report.samples
    parts = []
    if target.command:
        parts.append(f"{target.command} (pids {', '.join(map(str, target.pids))})")
    if window.start:
        parts.append(f"{window.start} to {window.end} ({window.seconds:.1f} s)")
    parts.append(f"{samples.total:,} stack samples at {samples.rate_hz} Hz")
    return escape("; ".join(parts))


def render_page(tree: FlameNode, report: Report | None, title: str,
                app_roots: Sequence[str] = ()) -> str:
    """The standalone page: report sections when a report is given, then the flamegraph (its
    frames coloured by kind with the session's `app_roots`)."""
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if report is not None:
        parts += [f'<p class="summary">{summary_line(report)}</p>',
                  "<h2>Findings</h2>", flags_section(report.flags),
                  "<h2>Endpoints</h2>", endpoints_table(report.endpoints)]
    parts += [
        "<h2>Flamegraph</h2>",
        '<form class="tools" id="flame-search-form">',
        '<input id="flame-search" type="search" size="40"',
        ' placeholder="search frames (regular expression or text)">',
        ' <button type="submit">Search</button>',
        ' <button type="button" id="flame-reset">Reset</button></form>',
        '<div class="graph">', render_svg(tree, title, standalone=False, app_roots=app_roots),
        "</div>",
        f"<script>{_PAGE_SCRIPT}</script></body></html>\n",
    ]
    return "\n".join(parts)


class HtmlRenderer:
    name = "html"
    suffix = ".html"

    def render(self, profile: Profile) -> str:
        return render_page(profile.tree(), profile.report, profile.title, profile.app_roots)
