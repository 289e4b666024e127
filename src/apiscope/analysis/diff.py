"""Comparing two sessions' reports: per-endpoint changes and flags that appeared or went away.

Flags are matched by (kind, route): a fix that moves the hot line keeps the flag "kept", while a
flag of a new kind or on another route "appeared". Flags without a route (sessions without the
agent) are matched by the file and function of their location instead.

Reports are compared typed (two reports built now, or read back from their JSON with
`Report.from_json`); the diff is typed too, and its JSON (`"apiscope_diff": 1`) is written by
`ReportDiff.to_json`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from apiscope.analysis.flags import Flag, sort_flags
from apiscope.report import EndpointStats, Report, ReportWindow

FIGURES = ("count", "rps", "p50_ms", "p95_ms", "p99_ms", "cpu_share")
DIFF_VERSION = 1


@dataclass(frozen=True, slots=True)
class Change:
    """How one figure moved: new - base, and new / base (None when either is unknown, and the
    ratio when base is 0)."""

    delta: float | None
    ratio: float | None

    def to_json(self) -> dict[str, Any]:
        return {"delta": self.delta, "ratio": self.ratio}


@dataclass(frozen=True, slots=True)
class EndpointChange:
    """One endpoint in either session: "added", "removed" or "changed" (with its `FIGURES`'
    changes)."""

    route: str
    status: str
    base: EndpointStats | None
    new: EndpointStats | None
    change: Mapping[str, Change]  # by figure; empty unless changed

    def to_json(self) -> dict[str, Any]:
        return {"route": self.route, "status": self.status, "base": _figures(self.base),
                "new": _figures(self.new),
                "change": {k: c.to_json() for k, c in self.change.items()}}


@dataclass(frozen=True, slots=True)
class DiffSide:
    """What the diff says of each session: its command, its window and how many flags."""

    command: str | None
    window: ReportWindow
    flags: int

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "window": self.window.to_json(), "flags": self.flags}


@dataclass(frozen=True, slots=True)
class ReportDiff:
    """The changes from one report to another; its JSON is `"apiscope_diff": 1`."""

    base: DiffSide
    new: DiffSide
    endpoints: tuple[EndpointChange, ...]  # by route
    appeared: tuple[Flag, ...]
    resolved: tuple[Flag, ...]
    kept: tuple[Flag, ...]  # as the new report has them

    def to_json(self) -> dict[str, Any]:
        return {"apiscope_diff": DIFF_VERSION, "base": self.base.to_json(),
                "new": self.new.to_json(), "endpoints": [e.to_json() for e in self.endpoints],
                "flags": {"appeared": [f.to_json() for f in self.appeared],
                          "resolved": [f.to_json() for f in self.resolved],
                          "kept": [f.to_json() for f in self.kept]}}


def _key(flag: Flag) -> tuple[str, str]:
    if flag.route or not flag.location:
        return (flag.kind, flag.route or "")
    loc = flag.location  # no route (no agent): the function stands for it
    return (flag.kind, f"{loc.file}:{loc.function}")


def _change(base: float | None, new: float | None) -> Change:
    if base is None or new is None:
        return Change(None, None)
    return Change(round(new - base, 4), round(new / base, 4) if base else None)


def _figures(e: EndpointStats | None) -> dict[str, Any] | None:
    return None if e is None else {k: getattr(e, k) for k in FIGURES}


def _endpoint(route: str, base: EndpointStats | None,
              new: EndpointStats | None) -> EndpointChange:
    status = "added" if base is None else "removed" if new is None else "changed"
    changes = {} if base is None or new is None else {
        k: _change(getattr(base, k), getattr(new, k)) for k in FIGURES}
    return EndpointChange(route, status, base, new, changes)


def _side(report: Report) -> DiffSide:
    return DiffSide(report.target.command, report.window, len(report.flags))


def diff_reports(base: Report, new: Report) -> ReportDiff:
    """The changes from `base` to `new`."""
    before = {e.route: e for e in base.endpoints}
    after = {e.route: e for e in new.endpoints}
    endpoints = tuple(_endpoint(r, before.get(r), after.get(r))
                      for r in sorted(before | after))
    old, now = base.flags, new.flags
    old_keys, new_keys = {_key(f) for f in old}, {_key(f) for f in now}
    return ReportDiff(
        _side(base), _side(new), endpoints,
        appeared=_listed(f for f in now if _key(f) not in old_keys),
        resolved=_listed(f for f in old if _key(f) not in new_keys),
        kept=_listed(f for f in now if _key(f) in old_keys))


def _listed(flags: Iterable[Flag]) -> tuple[Flag, ...]:
    return tuple(sort_flags(flags))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _line(e: EndpointChange) -> str:
    if e.base is None or e.new is None:
        side = e.new if e.base is None else e.base
        assert side is not None
        return (f"  {e.route}: {e.status} ({side.count} requests,"
                f" p95 {_ms(side.p95_ms)} ms)")
    b, n = e.base, e.new
    ratio = e.change["p95_ms"].ratio
    trend = "" if ratio is None else f" ({(ratio - 1) * 100:+.0f}%)"
    return (f"  {e.route}: p50 {_ms(b.p50_ms)} -> {_ms(n.p50_ms)} ms,"
            f" p95 {_ms(b.p95_ms)} -> {_ms(n.p95_ms)} ms{trend},"
            f" p99 {_ms(b.p99_ms)} -> {_ms(n.p99_ms)} ms,"
            f" rps {b.rps:.1f} -> {n.rps:.1f},"
            f" cpu {b.cpu_share * 100:.1f}% -> {n.cpu_share * 100:.1f}%")


def render_diff_text(diff: ReportDiff) -> str:
    out = [f"apiscope diff: {diff.base.window.start} ({diff.base.flags} flags)"
           f" -> {diff.new.window.start} ({diff.new.flags} flags)", "",
           "Endpoints"]
    out += [_line(e) for e in diff.endpoints] or ["  none recorded"]
    for title, flags in (("New flags", diff.appeared), ("Resolved flags", diff.resolved),
                         ("Still flagged", diff.kept)):
        out += ["", f"{title} ({len(flags)})"]
        out += [f"  [{f.severity.upper()}] {f.kind} {f.route or ''}".rstrip()
                + f": {f.evidence}" for f in flags]
    return "\n".join(out) + "\n"
