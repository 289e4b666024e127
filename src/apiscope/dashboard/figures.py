"""Plotly figures as plain dicts: pure functions of already computed data.

Plain dicts instead of `plotly.graph_objects` keep each callback cheap (no validation pass over
thousands of flamegraph boxes) and make the figures easy to assert on in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from apiscope.dashboard.data import Range, ResourceSeries
from apiscope.dashboard.flame import FRAMEWORK
from apiscope.dashboard.requests import LatencySeries
from apiscope.exporters.tree import OTHER_NAME, FlameNode
from apiscope.model import Frame

Figure = dict[str, Any]
COLORS: dict[str, str] = {"app": "#e4572e", "library": "#4c78a8", "stdlib": "#72b7b2",
                          "other": "#c9c3bd", "root": "#6c757d"}
MATCH_COLOR = "#f2c14e"
DIM_COLOR = "#ececec"
PID_COLORS = ("#4c78a8", "#e4572e", "#54a24b", "#b279a2", "#f58518", "#72b7b2", "#9d755d")


def iso(ts: float) -> str:
    """Epoch seconds as the UTC time string plotly reads on a date axis."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def parse_iso(text: str) -> float:
    """Epoch seconds of a date-axis value plotly sends back ("2026-11-26 03:00:05.5")."""
    text = str(text).strip().replace("T", " ")
    date, _, frac = text.partition(".")
    moment = datetime.fromisoformat(date).replace(tzinfo=UTC)
    return moment.timestamp() + (float("0." + frac) if frac.isdigit() else 0.0)


def ms(points: Sequence[float]) -> list[float]:
    """Epoch seconds as epoch milliseconds: a date axis reads numbers as those, and numbers
    serialize far faster than date strings."""
    return [t * 1000 for t in points]


def empty_figure(message: str, height: int = 260) -> Figure:
    return {"data": [], "layout": {
        "height": height, "xaxis": {"visible": False}, "yaxis": {"visible": False},
        "annotations": [{"text": message, "showarrow": False, "font": {"size": 14}}],
        "margin": {"l": 10, "r": 10, "t": 10, "b": 10}}}


def _time_layout(title: str, rng: Range, ytitle: str, height: int = 260) -> dict[str, Any]:
    xaxis: dict[str, Any] = {"type": "date", "title": {"text": "time (UTC)"}}
    if rng is not None:
        xaxis["range"] = [iso(rng[0]), iso(rng[1])]
    return {"title": {"text": title, "font": {"size": 14}}, "height": height,
            "margin": {"l": 60, "r": 20, "t": 40, "b": 40}, "xaxis": xaxis,
            "yaxis": {"title": {"text": ytitle}, "rangemode": "tozero"},
            "dragmode": "zoom", "legend": {"orientation": "h", "y": -0.25},
            # keep the user's zoom across live refreshes until the shared range changes
            "uirevision": repr(rng)}


def latency_figure(series: LatencySeries, rng: Range) -> Figure:
    x = ms(series.starts)
    data = [{"type": "scatter", "mode": "lines", "name": name, "x": x, "y": values,
             "connectgaps": False, "line": {"width": 1.6}}
            for name, values in (("p50", series.p50), ("p95", series.p95), ("p99", series.p99))]
    return {"data": data, "layout": _time_layout("Latency percentiles", rng, "ms")}


def rate_figure(series: LatencySeries, rng: Range) -> Figure:
    x = ms(series.starts)
    data = [{"type": "bar", "name": "requests/s", "x": x, "y": series.rps,
             "marker": {"color": "#4c78a8"}}]
    return {"data": data, "layout": _time_layout("Request rate", rng, "requests/s")}


def timeline_figure(points: Sequence[tuple[float, float]], rng: Range,
                    gaps: Sequence[tuple[float, float, str | None]] = ()) -> Figure:
    """The active samples per second of each window; each gap in the sampling (a target
    stopped, `(start, end, reason)`) is a shaded span named by its reason, never smoothed over
    by the line."""
    data = [{"type": "scatter", "mode": "lines", "fill": "tozeroy", "name": "active samples/s",
             "x": ms([t for t, _ in points]), "y": [v for _, v in points],
             "line": {"color": "#4c78a8", "width": 1}}]
    title = "Active samples per second (drag to select a time range)"
    if gaps:
        title += "; shaded: no samples"
    layout = _time_layout(title, rng, "samples/s", height=180)
    layout["shapes"] = [
        {"type": "rect", "xref": "x", "yref": "paper", "x0": iso(start), "x1": iso(end),
         "y0": 0, "y1": 1, "fillcolor": COLORS["root"], "opacity": 0.2, "layer": "below",
         "line": {"width": 0},
         "label": {"text": f"{reason or 'no samples'} ({end - start:.1f} s)",
                   "textposition": "top center", "font": {"size": 10}}}
        for start, end, reason in gaps]
    return {"data": data, "layout": layout}


RESOURCE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("cpu_percent", "CPU", "% of one core"), ("rss_mb", "Resident memory", "MB"),
    ("threads", "Threads", "threads"), ("fds", "Open file descriptors", "fds"))


def resource_figure(metric: str, title: str, unit: str, series: dict[int, ResourceSeries],
                    rng: Range) -> Figure:
    data = []
    for n, (pid, s) in enumerate(sorted(series.items())):
        data.append({"type": "scatter", "mode": "lines", "name": f"pid {pid}",
                     "x": ms(s.ts), "y": getattr(s, metric),
                     "line": {"color": PID_COLORS[n % len(PID_COLORS)], "width": 1.5}})
    return {"data": data, "layout": _time_layout(title, rng, unit)}


def flame_height(tree: FlameNode, row_px: int = 20, low: int = 360, high: int = 1600) -> int:
    """Tall enough for a readable row per stack level (server stacks run 40 frames deep)."""
    depth, pending = 0, [(1, tree)]
    while pending:
        level, node = pending.pop()
        depth = max(depth, level)
        pending.extend((level + 1, c) for c in node.children.values())
    return max(low, min(high, depth * row_px + 20))


def flame_figure(tree: FlameNode, kind_of: Callable[[Frame], str], search: str = "",
                 height: int | None = None, revision: str = "flame") -> tuple[Figure, int, int]:
    """An icicle (root on top) of the tree, clicking a box zooms into it; returns the figure,
    the number of boxes matching `search` and the samples under them."""
    ids: list[str] = []
    labels: list[str] = []
    parents: list[str] = []
    values: list[int] = []
    colors: list[str] = []
    custom: list[list[Any]] = []
    needle = search.strip().lower()
    matches = matched_samples = 0
    total = max(tree.value, 1)
    pending: list[tuple[FlameNode, str, str, bool]] = [(tree, "0", "", False)]
    while pending:
        node, node_id, parent, inside_match = pending.pop()
        is_root = parent == ""
        hit = bool(needle) and not is_root and needle in node.name.lower()
        if hit:
            matches += 1
            if not inside_match:
                matched_samples += node.value
        kind = ("root" if is_root else "other" if node.name in (OTHER_NAME, FRAMEWORK.function)
                else kind_of(node.frame))
        color = COLORS[kind]
        if needle and not is_root:
            color = MATCH_COLOR if hit else DIM_COLOR
        ids.append(node_id)
        labels.append(node.function)
        parents.append(parent)
        values.append(node.value)
        colors.append(color)
        custom.append([node.name, kind, node.self_value, node.value / total])
        for index, child in enumerate(node.sorted_children()):
            pending.append((child, f"{node_id}.{index}", node_id, inside_match or hit))
    trace = {"type": "icicle", "ids": ids, "labels": labels, "parents": parents,
             "values": values, "branchvalues": "total", "sort": False,
             "marker": {"colors": colors, "line": {"width": 0.5, "color": "#ffffff"}},
             "tiling": {"orientation": "v"}, "textinfo": "label", "customdata": custom,
             "leaf": {"opacity": 1.0},  # leaves keep their kind's colour
             "hovertemplate": "<b>%{customdata[0]}</b><br>%{value} samples"
                              " (%{customdata[3]:.1%} of all), %{customdata[2]} self"
                              "<br>%{customdata[1]} code<extra></extra>"}
    layout = {"height": height or flame_height(tree), "margin": {"l": 4, "r": 4, "t": 4, "b": 4},
              "uirevision": revision}  # a new slice starts unzoomed; a search keeps the zoom
    return {"data": [trace], "layout": layout}, matches, matched_samples
