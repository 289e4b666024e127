"""Judging one report against what the app plants: pure functions over the report's JSON.

- planted run: a marker is found when a flag of its kind points at its file and line. For
  `event_loop_blocked` and `cpu_hotspot`, a flag whose `metric.cause` names the other cause
  does not count; one without `metric.cause` counts as found but wrongly described, and so
  does CPU work in Python said to be C code without the GIL (`metric.gil_free_share` of a
  half or more), or the other way round.
- healthy run: a medium or high flag is a false alarm; low flags are listed apart.
- both: a flag located outside the app's own files (site-packages, the standard library, a
  server's entry script) is a defect; sampling must not have stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.corpus.markers import Marker

CAUSED_KINDS = frozenset({"event_loop_blocked", "cpu_hotspot"})
ALARMING = frozenset({"medium", "high"})
SAMPLING_STOPPED = "stack sampling stopped"
Flag = dict[str, Any]


@dataclass
class CaseResult:
    app: str
    mode: str  # "healthy" or "planted"
    server: str  # "uvicorn" or "gunicorn"
    expected: list[Marker] = field(default_factory=list)
    found: list[Marker] = field(default_factory=list)
    described: list[Marker] = field(default_factory=list)  # found with the right cause
    missed: list[Marker] = field(default_factory=list)
    false_alarms: list[Flag] = field(default_factory=list)  # healthy: medium or high
    low_flags: list[Flag] = field(default_factory=list)  # healthy: low
    outside: list[Flag] = field(default_factory=list)  # located outside the app
    flags: list[Flag] = field(default_factory=list)  # every flag of the report
    endpoints: int = 0
    cpu_shares: dict[str, float] = field(default_factory=dict)
    # CPU figures that cannot be: shares of the target's CPU time adding up to more than it
    # (a thread's time counted twice, a share guessed from stacks where none was measured).
    impossible_cpu: list[str] = field(default_factory=list)
    samples_total: int = 0
    samples_errors: int = 0
    sampling_stopped: bool = False
    failure: str | None = None  # the run itself failed (no report): why

    @property
    def case_id(self) -> str:
        return f"{self.app}-{self.mode}-{self.server}"


def flag_path(flag: Flag, root: Path) -> Path | None:
    location = flag.get("location")
    if not location or not location.get("file"):
        return None
    path = Path(location["file"])
    return (path if path.is_absolute() else root / path).resolve()


def is_outside(flag: Flag, app_dir: Path, root: Path) -> bool:
    path = flag_path(flag, root)
    return path is not None and not path.is_relative_to(app_dir.resolve())


def _at(flag: Flag, marker: Marker, root: Path) -> bool:
    line = (flag.get("location") or {}).get("line")
    return (flag.get("kind") == marker.kind and line in marker.lines
            and flag_path(flag, root) == marker.file)


def match_marker(marker: Marker, flags: list[Flag], root: Path) -> tuple[bool, bool]:
    """(found, described right) for one marker."""
    candidates = [f for f in flags if _at(f, marker, root)]
    if marker.kind not in CAUSED_KINDS:
        return bool(candidates), bool(candidates)
    causes = [_cause(f) for f in candidates]
    if marker.cause in causes:
        return True, True
    on_cpu = {"cpu", "native"}
    return None in causes or (marker.cause in on_cpu and bool(on_cpu & set(causes))), False


def _cause(flag: Flag) -> str | None:
    """The flag's cause, `native` for CPU it says ran in C code that released the GIL."""
    metric = flag.get("metric") or {}
    cause = metric.get("cause")
    if cause == "cpu" and (metric.get("gil_free_share") or 0.0) >= 0.5:
        return "native"
    return cause if isinstance(cause, str) else None


def judge(result: CaseResult, report: dict[str, Any], stderr: str, app_dir: Path,
          root: Path) -> CaseResult:
    flags: list[Flag] = list(report.get("flags", []))
    result.flags = flags
    result.outside = [f for f in flags if is_outside(f, app_dir, root)]
    endpoints = report.get("endpoints", [])
    result.endpoints = len(endpoints)
    result.cpu_shares = {e["route"]: float(e.get("cpu_share") or 0.0) for e in endpoints}
    result.impossible_cpu = impossible_cpu(report)
    samples = report.get("samples", {})
    result.samples_total = int(samples.get("total") or 0)
    result.samples_errors = int(samples.get("errors") or 0)
    result.sampling_stopped = SAMPLING_STOPPED in stderr.lower()
    if result.mode == "healthy":
        result.false_alarms = [f for f in flags if f.get("severity") in ALARMING]
        result.low_flags = [f for f in flags if f.get("severity") not in ALARMING]
        return result
    for marker in result.expected:
        found, described = match_marker(marker, flags, root)
        (result.found if found else result.missed).append(marker)
        if described:
            result.described.append(marker)
    return result


# Shares are of CPU time measured per window, rounded to 4 places: their sum may pass 1 by that.
_SHARE_SLACK = 0.01


def impossible_cpu(report: dict[str, Any]) -> list[str]:
    """The report's CPU shares that exceed the whole: the endpoints' together, each process's
    server share, each flag's `cpu_share`."""
    problems = []
    endpoint_total = sum(float(e.get("cpu_share") or 0.0) for e in report.get("endpoints", []))
    if endpoint_total > 1 + _SHARE_SLACK:
        problems.append(f"the endpoints' CPU shares add up to {endpoint_total:.2f}")
    for process in report.get("processes", []):
        share = process.get("server_cpu_share")
        if share is not None and share > 1 + _SHARE_SLACK:
            problems.append(f"process {process.get('pid')}'s server share is {share:.2f}")
    for flag in report.get("flags", []):
        share = (flag.get("metric") or {}).get("cpu_share")
        if isinstance(share, (int, float)) and share > 1 + _SHARE_SLACK:
            problems.append(f"{flag.get('kind')} on {flag.get('route') or 'no route'} claims"
                            f" {share:.2f} of the target's CPU time")
    return problems


def describe_flag(flag: Flag, root: Path) -> str:
    """One line: severity, kind, route, location and the evidence."""
    location = flag.get("location") or {}
    path = flag_path(flag, root)
    where = "no location"
    if path is not None:
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        where = f"{shown}:{location.get('line')} ({location.get('function')})"
    cause = (flag.get("metric") or {}).get("cause")
    kind = f"{flag.get('kind')}[{cause}]" if cause else str(flag.get("kind"))
    return (f"{flag.get('severity')} {kind} on {flag.get('route') or 'no route'} at {where}:"
            f" {flag.get('evidence')}")
