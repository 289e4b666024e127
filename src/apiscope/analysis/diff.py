"""Comparing two sessions' reports: per-endpoint changes and flags that appeared or went away.

Flags are matched by (kind, route): a fix that moves the hot line keeps the flag "kept", while a
flag of a new kind or on another route "appeared". Flags without a route (sessions without the
agent) are matched by the file and function of their location instead.

Reports are compared as JSON (two reports built now, or read back from files): their flags are
read as `Flag`s, and the diff lists them in the report's JSON shape again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from apiscope.analysis.flags import Flag, report_flags, sort_flags

FIGURES = ("count", "rps", "p50_ms", "p95_ms", "p99_ms", "cpu_share")
DIFF_VERSION = 1


def _key(flag: Flag) -> tuple[str, str]:
    if flag.route or not flag.location:
        return (flag.kind, flag.route or "")
    loc = flag.location  # no route (no agent): the function stands for it
    return (flag.kind, f"{loc.file}:{loc.function}")


def _listed(flags: Iterable[Flag]) -> list[dict[str, Any]]:
    return [flag.to_json() for flag in sort_flags(flags)]


def _change(base: Any, new: Any) -> dict[str, float | None]:
    if base is None or new is None:
        return {"delta": None, "ratio": None}
    return {"delta": round(new - base, 4), "ratio": round(new / base, 4) if base else None}


def _figures(e: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if e is None else {k: e.get(k) for k in FIGURES}


def _endpoint(route: str, base: dict[str, Any] | None,
              new: dict[str, Any] | None) -> dict[str, Any]:
    status = "added" if base is None else "removed" if new is None else "changed"
    changes = {} if base is None or new is None else {
        k: _change(base.get(k), new.get(k)) for k in FIGURES}
    return {"route": route, "status": status, "base": _figures(base), "new": _figures(new),
            "change": changes}


def _side(report: dict[str, Any]) -> dict[str, Any]:
    return {"command": report["target"].get("command"), "window": report["window"],
            "flags": len(report["flags"])}


def diff_reports(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The changes from `base` to `new` (two `"apiscope_report": 1` dicts)."""
    before = {e["route"]: e for e in base["endpoints"]}
    after = {e["route"]: e for e in new["endpoints"]}
    endpoints = [_endpoint(r, before.get(r), after.get(r)) for r in sorted(before | after)]
    old, now = report_flags(base), report_flags(new)
    old_keys, new_keys = {_key(f) for f in old}, {_key(f) for f in now}
    return {
        "apiscope_diff": DIFF_VERSION, "base": _side(base), "new": _side(new),
        "endpoints": endpoints,
        "flags": {
            "appeared": _listed(f for f in now if _key(f) not in old_keys),
            "resolved": _listed(f for f in old if _key(f) not in new_keys),
            "kept": _listed(f for f in now if _key(f) in old_keys),
        },
    }


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def _line(e: dict[str, Any]) -> str:
    if e["status"] != "changed":
        side = e["new"] if e["status"] == "added" else e["base"]
        return (f"  {e['route']}: {e['status']} ({side['count']} requests,"
                f" p95 {_ms(side['p95_ms'])} ms)")
    b, n, c = e["base"], e["new"], e["change"]
    ratio = c["p95_ms"]["ratio"]
    trend = "" if ratio is None else f" ({(ratio - 1) * 100:+.0f}%)"
    return (f"  {e['route']}: p50 {_ms(b['p50_ms'])} -> {_ms(n['p50_ms'])} ms,"
            f" p95 {_ms(b['p95_ms'])} -> {_ms(n['p95_ms'])} ms{trend},"
            f" p99 {_ms(b['p99_ms'])} -> {_ms(n['p99_ms'])} ms,"
            f" rps {b['rps']:.1f} -> {n['rps']:.1f},"
            f" cpu {b['cpu_share'] * 100:.1f}% -> {n['cpu_share'] * 100:.1f}%")


def render_diff_text(diff: dict[str, Any]) -> str:
    out = [f"apiscope diff: {diff['base']['window']['start']} ({diff['base']['flags']} flags)"
           f" -> {diff['new']['window']['start']} ({diff['new']['flags']} flags)", "",
           "Endpoints"]
    out += [_line(e) for e in diff["endpoints"]] or ["  none recorded"]
    for title, key in (("New flags", "appeared"), ("Resolved flags", "resolved"),
                       ("Still flagged", "kept")):
        flags = [Flag.from_json(f) for f in diff["flags"][key]]
        out += ["", f"{title} ({len(flags)})"]
        out += [f"  [{f.severity.upper()}] {f.kind} {f.route or ''}".rstrip()
                + f": {f.evidence}" for f in flags]
    return "\n".join(out) + "\n"
