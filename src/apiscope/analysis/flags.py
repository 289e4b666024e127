"""Building and ordering flags exactly as the report's JSON has them.

The flag types themselves (`Flag`, `Location`) live in `apiscope.flag`, below the store; they
are re-exported here for the rules and the layers above the analysis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePath

from apiscope.analysis.context import AnalysisContext
from apiscope.flag import Flag as Flag
from apiscope.flag import Location as Location
from apiscope.flag import Metric as Metric
from apiscope.flag import MetricValue as MetricValue
from apiscope.model import Frame
from apiscope.source import def_line

SEVERITIES = ("low", "medium", "high")


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


def location(file: str | None, line: int | None, function: str | None) -> Location | None:
    if file is None:
        return None
    return Location(file, line, function)


def function_name(name: str) -> str:
    """The function a user would name: a comprehension, generator expression or lambda is
    part of its enclosing function (`f.<locals>.<listcomp>` -> `f`), a nested function is
    itself (`f.<locals>.inner` -> `inner`), a method keeps its class (`Items.get`)."""
    parts = name.split(".")
    while len(parts) > 2 and parts[-1].startswith("<") and parts[-2] == "<locals>":
        parts = parts[:-2]
    return parts[-1] if "<locals>" in parts else ".".join(parts)


def frame_location(frame: Frame | None) -> Location | None:
    return None if frame is None else location(frame.file, frame.line,
                                               function_name(frame.function))


def handler_location(ctx: AnalysisContext, endpoint: str | None) -> Location | None:
    """Where an endpoint's handler is: the application's class when the handler is a method
    it inherits from a library (`TicketViewSet.list`, not DRF's `ListModelMixin.list`)."""
    route = ctx.route_info(endpoint) if endpoint else None
    if route is None:
        return None
    if route.view_file:
        cls = route.view.rpartition(":")[2].rpartition(".")[2]
        return location(route.view_file, route.view_line or None, f"{cls}.{route.function}")
    # A decorated function's code begins at its first decorator: its `def` is the line to show.
    return location(route.file, def_line(route.file, route.line) if route.line else route.line,
                    route.function)


def where(loc: Location | None) -> str:
    """`summary() at main.py:87` for evidence sentences."""
    if loc is None:
        return "an unknown line"
    name = PurePath(loc.file).name
    func = f"{loc.function}() at " if loc.function else ""
    return f"{func}{name}:{loc.line}"


def pct(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


def make_flag(kind: str, severity: str, route: str | None, loc: Location | None,
              evidence: str, metric: Mapping[str, MetricValue], suggestion: str) -> Flag:
    """A flag, its fractional figures rounded to 4 decimals as the report gives them."""
    return Flag(kind, severity, route, loc, evidence,
                {k: round(v, 4) if isinstance(v, float) else v for k, v in metric.items()},
                suggestion)


def _location_order(loc: Location | None) -> str:
    """The location's part of the flags' order: its JSON object as text, so flags keep the
    order earlier reports gave them (no location first, lines compared as text)."""
    return "None" if loc is None else str(loc.to_json())


def sort_flags(flags: Iterable[Flag]) -> list[Flag]:
    """Most severe first, then by kind, then by route: the same input, the same order."""
    return sorted(flags, key=lambda f: (-severity_rank(f.severity), f.kind, f.route or "",
                                        _location_order(f.location)))


def at_or_above(flags: Iterable[Flag], severity: str) -> list[Flag]:
    return [f for f in flags if severity_rank(f.severity) >= severity_rank(severity)]
