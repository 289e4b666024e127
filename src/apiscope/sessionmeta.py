"""What the collector noted about a session, read back typed: the target, the options it was
collected with, and how the collection went (`SessionWriter.set_meta` writes it as key/value
pairs; `SessionReader.meta` reads it as a `SessionMeta`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class StoredGap:
    """A stretch without stack samples (a stopped target), as the collector stores it: epoch
    seconds, and why when known. The report shows it in its own shape (`apiscope.report.Gap`)."""

    start: float
    end: float
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SessionMeta:
    """What the collector noted about its session (`SessionWriter.set_meta`), read back typed.

    Any of it may be missing: a session cut short, or written by an older version, lacks some
    keys, and they read as None or empty. `from_stored` is the one place that knows the stored
    shape. Numbers stay as they were written (an int is not turned into a float), so the report
    shows them as it always has. The failures per process and the agents left behind are kept
    as stored: the report types them (`apiscope.report`, which the model does not import)."""

    # Noted at the start: the target and the options it was collected with.
    command: str | None = None
    pids: tuple[int, ...] = ()  # the processes serving requests
    server: str | None = None
    python: str | None = None  # the target's version, e.g. "3.11.7"
    target_pid: int | None = None
    master_pid: int | None = None
    rate_hz: int | None = None
    slo_ms: float | None = None
    nonblocking: bool | None = None
    inject: bool | None = None
    start: float | None = None  # epoch seconds
    # Kept current while collecting, final once it ends.
    end: float | None = None
    samples_total: int | None = None
    samples_errors: int | None = None  # failed reads, less those while a target was paused
    samples_paused: int | None = None  # reads failed while apiscope's debugger held a target
    samples_expected: int | None = None
    sample_loss: float | None = None
    windows_dropped: int | None = None
    windows_failed: int | None = None
    max_overhead: float | None = None  # percent; None without an overhead budget
    overhead: float | None = None  # percent measured, None before the budget's first window
    # `overhead` by part ({"pyspy_startup": percent, ...}, see `budget.COST_PARTS`); empty in
    # sessions saved before it was stored
    overhead_parts: Mapping[str, float] = field(default_factory=dict)
    agent_dropped: int | None = None
    gaps: tuple[StoredGap, ...] = ()
    pauses: tuple[StoredGap, ...] = ()  # apiscope's debugger runs in a target (no reason)
    detach_failed: tuple[Mapping[str, object], ...] = ()  # {"pid", "reason", "retry"} each
    target_failures: tuple[Mapping[str, object], ...] = ()  # one entry per process
    routing: Mapping[str, object] | None = None  # where the agent's route names came from
    watchdog_cpu_seconds: Mapping[int, float] = field(default_factory=dict)  # by pid
    # Seconds the agents' per-request profiles took on the request threads, by pid (their
    # sampled slices whole, paid from the budget as the agent's).
    profile_seconds: Mapping[int, float] = field(default_factory=dict)
    # One request in n kept by the agents, now and at most (None: every request was kept).
    requests_kept_every: int | None = None
    requests_kept_every_max: int | None = None
    # The share of a core the agents' loop watchdogs were last given for following long
    # passes (None: never changed from the agents' own default; see collectors/budget.py).
    watch_share: float | None = None
    # (file, line) of the lines the agents' looks found asleep by the kernel's word (written
    # as the collection ends; see `StackSampler.asleep_lines`).
    asleep_lines: tuple[tuple[str, int], ...] = ()
    # (file, function, route, tasks): how many tasks running each function the requests of
    # each route started, as the agents counted them (see `analysis.cpu.task_cpu`).
    task_routes: tuple[tuple[str, str, str, int], ...] = ()

    @classmethod
    def from_stored(cls, values: Mapping[str, Any]) -> SessionMeta:
        """The stored key/value pairs (JSON decoded); a value of the wrong type reads as
        missing, unknown keys are ignored."""
        get = values.get
        return cls(
            command=_text(get("command")), pids=_ints(get("pids")), server=_text(get("server")),
            python=_text(get("python")), target_pid=_int(get("target_pid")),
            master_pid=_int(get("master_pid")), rate_hz=_int(get("rate_hz")),
            slo_ms=_number(get("slo_ms")), nonblocking=_flag(get("nonblocking")),
            inject=_flag(get("inject")), start=_number(get("start")), end=_number(get("end")),
            samples_total=_int(get("samples_total")), samples_errors=_int(get("samples_errors")),
            samples_paused=_int(get("samples_paused")),
            samples_expected=_int(get("samples_expected")),
            sample_loss=_number(get("sample_loss")),
            windows_dropped=_int(get("windows_dropped")),
            windows_failed=_int(get("windows_failed")),
            max_overhead=_number(get("max_overhead")), overhead=_number(get("overhead")),
            overhead_parts=_numbers(get("overhead_parts")),
            agent_dropped=_int(get("agent_dropped")), gaps=_gaps(get("gaps")),
            pauses=_gaps(get("pauses")),
            detach_failed=_objects(get("detach_failed")),
            target_failures=_objects(get("target_failures")),
            routing=dict(routing) if isinstance(routing := get("routing"), Mapping) else None,
            watchdog_cpu_seconds=_per_pid(get("watchdog_cpu_seconds")),
            profile_seconds=_per_pid(get("profile_seconds")),
            requests_kept_every=_int(get("requests_kept_every")),
            requests_kept_every_max=_int(get("requests_kept_every_max")),
            watch_share=_number(get("watch_share")),
            asleep_lines=_sites(get("asleep_lines")),
            task_routes=_task_routes(get("task_routes")))


def _number(value: object) -> float | None:
    """A stored number as written (an int stays an int), a number in a string read as one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _int(value: object) -> int | None:
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _flag(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _ints(value: object) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(n for n in map(_int, value) if n is not None)


def _sites(value: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple((entry[0], int(entry[1])) for entry in value
                 if isinstance(entry, list | tuple) and len(entry) == 2
                 and isinstance(entry[0], str) and _int(entry[1]) is not None)


def _task_routes(value: object) -> tuple[tuple[str, str, str, int], ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple((entry[0], entry[1], entry[2], int(entry[3])) for entry in value
                 if isinstance(entry, list | tuple) and len(entry) == 4
                 and all(isinstance(x, str) for x in entry[:3])
                 and _int(entry[3]) is not None)


def _objects(value: object) -> tuple[Mapping[str, object], ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(dict(entry) for entry in value if isinstance(entry, Mapping))


def _gaps(value: object) -> tuple[StoredGap, ...]:
    gaps = []
    for entry in _objects(value):
        start, end = _number(entry.get("start")), _number(entry.get("end"))
        if start is not None and end is not None:
            gaps.append(StoredGap(start, end, _text(entry.get("reason"))))
    return tuple(gaps)


def _numbers(value: object) -> dict[str, float]:
    """{name: number} from a JSON object; entries of another type are left out."""
    if not isinstance(value, Mapping):
        return {}
    return {key: number for key, item in value.items()
            if isinstance(key, str) and (number := _number(item)) is not None}


def _per_pid(value: object) -> dict[int, float]:
    """{pid: seconds} from JSON's {"pid": seconds} (object keys are text)."""
    if not isinstance(value, Mapping):
        return {}
    out = {}
    for key, seconds in value.items():
        pid, number = _int(key), _number(seconds)
        if pid is not None and number is not None:
            out[pid] = number
    return out
