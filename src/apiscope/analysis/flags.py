"""Building and ordering flags exactly as the report's JSON has them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath
from typing import Any

from apiscope.analysis.context import AnalysisContext, Flag
from apiscope.model import Frame

SEVERITIES = ("low", "medium", "high")


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


def location(file: str | None, line: int | None, function: str | None) -> dict[str, Any] | None:
    if file is None:
        return None
    return {"file": file, "line": line, "function": function}


def function_name(name: str) -> str:
    """The function a user would name: a comprehension, generator expression or lambda is
    part of its enclosing function (`f.<locals>.<listcomp>` -> `f`), a nested function is
    itself (`f.<locals>.inner` -> `inner`), a method keeps its class (`Items.get`)."""
    parts = name.split(".")
    while len(parts) > 2 and parts[-1].startswith("<") and parts[-2] == "<locals>":
        parts = parts[:-2]
    return parts[-1] if "<locals>" in parts else ".".join(parts)


def frame_location(frame: Frame | None) -> dict[str, Any] | None:
    return None if frame is None else location(frame.file, frame.line,
                                               function_name(frame.function))


def handler_location(ctx: AnalysisContext, endpoint: str | None) -> dict[str, Any] | None:
    route = ctx.route_info(endpoint) if endpoint else None
    if route is None:
        return None
    return location(route.file, route.line, route.handler.split(":", 1)[-1].rsplit(".", 1)[-1])


def where(loc: dict[str, Any] | None) -> str:
    """`summary() at main.py:87` for evidence sentences."""
    if loc is None:
        return "an unknown line"
    name = PurePath(str(loc["file"])).name
    func = f"{loc['function']}() at " if loc.get("function") else ""
    return f"{func}{name}:{loc['line']}"


def pct(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


def make_flag(kind: str, severity: str, route: str | None, loc: dict[str, Any] | None,
              evidence: str, metric: dict[str, Any], suggestion: str) -> Flag:
    return {"kind": kind, "severity": severity, "route": route, "location": loc,
            "evidence": evidence,
            "metric": {k: round(v, 4) if isinstance(v, float) else v for k, v in metric.items()},
            "suggestion": suggestion}


def sort_flags(flags: Iterable[Flag]) -> list[Flag]:
    """Most severe first, then by kind, then by route: the same input, the same order."""
    return sorted(flags, key=lambda f: (-severity_rank(f["severity"]), f["kind"],
                                        f["route"] or "", str(f["location"])))


def at_or_above(flags: Iterable[Flag], severity: str) -> list[Flag]:
    return [f for f in flags if severity_rank(f["severity"]) >= severity_rank(severity)]
