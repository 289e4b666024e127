"""The rules' thresholds: defaults in one dataclass, overridable from a TOML file.

A `(low, medium, high)` triple grades a figure into a severity: below `low` there is no flag.
The defaults are chosen so that a busy but healthy app raises nothing (see docs/analysis.md).

`resolve_thresholds` is the one place every command (report, diff, the collecting commands,
the dashboard) gets its thresholds from: an explicit `--config` file's `[thresholds]` table,
else the project's `pyproject.toml` (`[tool.apiscope.thresholds]`, or `[tool.apiscope]`
itself), found as ruff and pytest find theirs, else the defaults.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from apiscope.errors import UsageError

Grades = tuple[float, float, float]
DEFAULT_SLO_MS = 200.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    slo_ms: float | None = None  # None: the session's objective (--slo-ms when collected)
    min_requests: int = 10  # an endpoint needs this many requests for latency/error flags
    # event_loop_blocked: share of the loop thread's samples inside one handler's code
    loop_blocked_fraction: Grades = (0.05, 0.10, 0.25)
    loop_stall_ms_per_request: float = 10.0  # off-CPU loop time per request below this: healthy
    loop_cpu_ms_per_request: float = 25.0  # loop time per request, CPU work counted: healthy below
    # a handler blocking the loop off-CPU (sync sleep/I/O) this long per request is flagged low
    # down to this share of the window
    loop_blocking_min_fraction: float = 0.01
    # cpu_hotspot: share of active samples at one application line
    cpu_hotspot_share: Grades = (0.25, 0.40, 0.60)
    cpu_hotspot_min_core: float = 0.10  # the line must also keep a core this busy
    cpu_hotspot_min_ms_per_request: float = 1.0
    # a line this costly per request of its endpoint is a (low) hotspot at any share
    cpu_hotspot_heavy_ms_per_request: float = 50.0
    # samples that ran at the line: fewer are too few to tell its CPU from the sampling's noise
    cpu_hotspot_min_samples: int = 10
    # slow_endpoint: p95 / slo_ms
    slow_p95_ratio: Grades = (1.0, 2.0, 4.0)
    # n_plus_one: repetitions of one statement in one request
    n_plus_one_min_queries: int = 5
    n_plus_one_request_share: float = 0.2  # of the route's requests showing the repetition
    n_plus_one_count: Grades = (5.0, 20.0, 50.0)
    # memory_growth: fitted RSS slope in MB per minute, after a warm-up
    memory_slope_mb_per_min: Grades = (1.0, 5.0, 20.0)
    memory_warmup_min_seconds: float = 3.0
    memory_warmup_share: float = 0.2  # of the process's sampled span
    memory_min_r2: float = 0.7
    memory_min_t: float = 4.0
    memory_min_growth_mb: float = 2.0
    memory_min_span_seconds: float = 12.0
    memory_min_points: int = 10
    memory_late_slope_ratio: float = 0.55  # later half's slope / the whole span's
    # a fitted span shorter than this, with no route tracking the growth, is graded low at most
    memory_confident_span_seconds: float = 120.0
    # threadpool_saturation: share of pool observations with every token taken / tasks waiting
    pool_saturated_share: Grades = (0.2, 0.3, 0.5)
    pool_worker_busy: float = 0.1  # busy worker threads at once / total tokens, in the stacks
    # gil_contention: share of an endpoint's thread samples that waited for the GIL
    gil_wait_share: Grades = (0.20, 0.40, 0.60)
    gil_min_wait_samples: int = 30
    # error_rate: 5xx share of one route
    error_share: Grades = (0.05, 0.20, 0.50)
    error_min_count: int = 5
    # slow_await: share of a route's latency spent at one await site
    await_share: Grades = (0.5, 0.7, 0.9)
    await_min_ms: float = 50.0


def grade(value: float, grades: Grades) -> str | None:
    """The severity of `value` against `(low, medium, high)`, or None below `low`."""
    low, medium, high = grades
    if value >= high:
        return "high"
    if value >= medium:
        return "medium"
    if value >= low:
        return "low"
    return None


def _coerce(name: str, current: Any, value: Any) -> Any:
    if isinstance(current, tuple):
        ok = (isinstance(value, list) and len(value) == 3
              and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
              and list(value) == sorted(value))
        if not ok:
            raise UsageError(f"threshold {name!r} must be a list of three increasing numbers"
                             " [low, medium, high]")
        return tuple(float(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (
            name == "slo_ms" and value == 0):
        raise UsageError(f"threshold {name!r} must be a number >= 0, not {value!r}")
    return int(value) if isinstance(current, int) else float(value)


def from_mapping(table: dict[str, Any], base: Thresholds | None = None,
                 source: str = "the config file") -> Thresholds:
    """Thresholds with the entries of a `[thresholds]` table applied over `base`."""
    base = base or Thresholds()
    known = {f.name for f in fields(Thresholds)}
    changes = {}
    for name, value in table.items():
        if name not in known:
            raise UsageError(f"unknown threshold {name!r} in {source}: known ones are"
                             f" {', '.join(sorted(known))}")
        changes[name] = _coerce(name, getattr(base, name), value)
    return replace(base, **changes)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}: check the path"
                         ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid TOML ({exc}): fix its syntax"
                         ) from None


def load_config(path: str | Path) -> Thresholds:
    """Read the `[thresholds]` table of a TOML config file."""
    table = _read_toml(Path(path)).get("thresholds", {})
    if not isinstance(table, dict):
        raise UsageError(f"config file {path}: [thresholds] must be a table")
    return from_mapping(table, source=f"config file {path}")


def find_pyproject(start: Path) -> Path | None:
    """The nearest `pyproject.toml` at or above `start` that has a `[tool.apiscope]` table.

    Like ruff and pytest, a pyproject.toml without our table does not stop the search: a
    monorepo's root file can hold it for every package below."""
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file() and "apiscope" in _read_toml(candidate).get("tool", {}):
            return candidate
    return None


def load_pyproject(path: Path) -> Thresholds:
    """`[tool.apiscope.thresholds]` if present, else the entries of `[tool.apiscope]`."""
    table = _read_toml(path)["tool"]["apiscope"]
    source = f"[tool.apiscope] of {path}"
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.apiscope] must be a table")
    if "thresholds" in table:
        table, source = table["thresholds"], f"[tool.apiscope.thresholds] of {path}"
        if not isinstance(table, dict):
            raise UsageError(f"{path}: tool.apiscope.thresholds must be a table")
    return from_mapping(table, source=source)


def resolve_thresholds(config: str | Path | None = None,
                       start: Path | None = None) -> Thresholds:
    """The effective thresholds: `config`'s, else the project's pyproject.toml's (looked up
    from `start`, by default the current directory), else the defaults."""
    if config is not None:
        return load_config(config)
    pyproject = find_pyproject((start or Path.cwd()).resolve())
    return load_pyproject(pyproject) if pyproject is not None else Thresholds()
