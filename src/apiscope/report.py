"""The report of an analysed session, as typed data.

The analysis builds it; the CLI, the exporters and the diff read it. Each of them reads the same
figures by name, so the report is a tree of frozen dataclasses rather than a dict, and it sits at
the bottom of the layers (beside `apiscope.flag`, whose flags it holds) so that every layer may
hold one.

The report's JSON (`"apiscope_report": 1`) is a public format: it is written by
`Report.to_json` and read by `Report.from_json`, and nowhere else. Optional keys are left out
of it as the report has always left them out, so a figure that is None here is an absent key
there (except where the JSON says null, as for a process without the agent).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from apiscope.flag import Flag

REPORT_VERSION = 1


@dataclass(frozen=True, slots=True)
class DetachFailed:
    """An agent left in a process because its detach failed, and the command that retries."""

    pid: int
    reason: str | None
    retry: str | None

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "reason": self.reason, "retry": self.retry}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DetachFailed:
        return cls(data["pid"], data.get("reason"), data.get("retry"))


@dataclass(frozen=True, slots=True)
class ProcessFailures:
    """What went wrong in one process while collecting; only what happened is in the JSON (a
    count of 0 and an unknown text are left out)."""

    pid: int
    windows_dropped: int = 0  # py-spy ended without writing its window
    windows_failed: int = 0  # written but not readable
    window_failure: str | None = None  # the last unreadable window's error
    sampler_retries: int = 0  # py-spy starts that failed and were retried
    sampling_stopped: str | None = None  # why sampling ended before the run did
    agent_errors: int = 0  # pulls the agent answered with an error
    agent_error: str | None = None  # the last of them, in the agent's words
    agent_internal_errors: int = 0  # the agent's own caught errors
    watchdog_errors: int = 0  # the agent's loop/GIL watchdogs' caught errors
    detach_failed: str | None = None  # why the agent could not be taken out
    retry: str | None = None  # the command that retries the detach
    no_agent: str | None = None  # why no agent records the process's requests

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": self.pid}
        for field in fields(self)[1:]:
            value = getattr(self, field.name)
            if value is not None and (value != 0 or isinstance(value, str)):
                out[field.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessFailures:
        known = {f.name: data[f.name] for f in fields(cls) if data.get(f.name) is not None}
        return cls(**{**known, "pid": int(data["pid"])})


@dataclass(frozen=True, slots=True)
class Target:
    """The process(es) analysed and how collecting them went."""

    pids: tuple[int, ...]
    command: str | None
    server: str | None
    python: str | None
    detach_failed: tuple[DetachFailed, ...] = ()  # the key earlier reports had; left out if none
    failures: tuple[ProcessFailures, ...] = ()  # by pid; left out if none

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pids": list(self.pids), "command": self.command,
                               "server": self.server, "python": self.python}
        if self.detach_failed:
            out["detach_failed"] = [d.to_json() for d in self.detach_failed]
        if self.failures:
            out["failures"] = [f.to_json() for f in self.failures]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Target:
        return cls(tuple(data.get("pids") or ()), data.get("command"), data.get("server"),
                   data.get("python"),
                   tuple(DetachFailed.from_json(d) for d in data.get("detach_failed") or ()),
                   tuple(ProcessFailures.from_json(f) for f in data.get("failures") or ()))


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch without stack samples (a stopped target), kept apart, never smoothed over."""

    start: str  # ISO 8601, UTC
    end: str
    seconds: float
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "seconds": self.seconds,
                "reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Gap:
        return cls(data["start"], data["end"], data["seconds"], data.get("reason"))


@dataclass(frozen=True, slots=True)
class ReportWindow:
    """The session's time span (ISO 8601, UTC) and the gaps in its sampling."""

    start: str
    end: str
    seconds: float
    gaps: tuple[Gap, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "seconds": self.seconds,
                "gaps": [g.to_json() for g in self.gaps]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReportWindow:
        return cls(data["start"], data["end"], data["seconds"],
                   tuple(Gap.from_json(g) for g in data.get("gaps") or ()))


@dataclass(frozen=True, slots=True)
class SampleSummary:
    """The stack samples: how many, at what rate, what was lost, what sampling cost.

    The optional figures are None when the JSON leaves them out: windows lost only when some
    were, the effective rate only with sampling windows, the overhead only under a budget.
    """

    total: int
    rate_hz: float | None
    errors: int
    cpu_measured: bool  # the kernel's per-thread CPU time was read
    windows_dropped: int | None = None
    windows_failed: int | None = None
    # Reads that failed while apiscope's debugger held a target (to inject or remove the
    # agent): expected, and not in `errors`.
    errors_while_injecting: int | None = None
    effective_rate_hz: float | None = None
    max_overhead_percent: float | None = None
    overhead_percent: float | None = None  # with max_overhead_percent, possibly null
    # Where the agents kept one request in n (a busy server), the largest n: the request
    # figures are then estimates from the kept ones. None: every request was kept.
    requests_kept_one_in: int | None = None
    # Of a session whose CPU was measured, the (window, process) pairs sampled without a
    # reading of the kernel's (a process it could not read): their CPU is the stacks' estimate.
    # None: every one was measured.
    windows_unmeasured: int | None = None
    # overhead_percent by part: "pyspy_startup" (starting each window's py-spy),
    # "pyspy_samples", "agent" (the agents' own threads), "collector" (apiscope's process).
    # None: not measured (no budget, or a session saved before it was stored).
    overhead_parts: Mapping[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"total": self.total, "rate_hz": self.rate_hz,
                               "errors": self.errors, "cpu_measured": self.cpu_measured}
        if self.windows_dropped is not None:
            out["windows_dropped"] = self.windows_dropped
        if self.windows_failed is not None:
            out["windows_failed"] = self.windows_failed
        if self.errors_while_injecting is not None:
            out["errors_while_injecting"] = self.errors_while_injecting
        if self.effective_rate_hz is not None:
            out["effective_rate_hz"] = self.effective_rate_hz
        if self.max_overhead_percent is not None:
            out["max_overhead_percent"] = self.max_overhead_percent
            out["overhead_percent"] = self.overhead_percent
        if self.requests_kept_one_in is not None:
            out["requests_kept_one_in"] = self.requests_kept_one_in
        if self.windows_unmeasured is not None:
            out["windows_unmeasured"] = self.windows_unmeasured
        if self.overhead_parts is not None:
            out["overhead_parts"] = dict(self.overhead_parts)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SampleSummary:
        return cls(data["total"], data.get("rate_hz"), data.get("errors", 0),
                   bool(data.get("cpu_measured")), data.get("windows_dropped"),
                   data.get("windows_failed"), data.get("errors_while_injecting"),
                   data.get("effective_rate_hz"),
                   data.get("max_overhead_percent"), data.get("overhead_percent"),
                   data.get("requests_kept_one_in"), data.get("windows_unmeasured"),
                   data.get("overhead_parts"))


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """One endpoint's figures: requests, latency (ms; None without requests), errors, CPU."""

    route: str  # "METHOD /template"
    handler: str | None  # "module:qualname"
    count: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    error_rate: float  # the share of 5xx answers
    cpu_share: float  # of the target's measured CPU time
    # Streamed responses' p95 time to their head (the p50/p95 above run to each stream's end);
    # None when no response of the endpoint was streamed.
    first_byte_p95_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"route": self.route, "handler": self.handler, "count": self.count,
               "rps": self.rps, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms,
               "p99_ms": self.p99_ms, "max_ms": self.max_ms, "error_rate": self.error_rate,
               "cpu_share": self.cpu_share}
        if self.first_byte_p95_ms is not None:
            out["first_byte_p95_ms"] = self.first_byte_p95_ms
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EndpointStats:
        return cls(data["route"], data.get("handler"), data["count"], data["rps"],
                   data.get("p50_ms"), data.get("p95_ms"), data.get("p99_ms"),
                   data.get("max_ms"), data.get("error_rate", 0.0), data.get("cpu_share", 0.0),
                   data.get("first_byte_p95_ms"))


@dataclass(frozen=True, slots=True)
class LoopLag:
    """How late a process's event loop ran the agent's probe callbacks (ms)."""

    p50: float
    p99: float

    def to_json(self) -> dict[str, Any]:
        return {"p50": self.p50, "p99": self.p99}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoopLag:
        return cls(data["p50"], data["p99"])


# What to do about the collector's passes of a loop, which are no line's fault (said by the
# text report and the dashboard alike).
GC_ADVICE = ("no line's fault: fewer long-lived objects made per request, or gc.freeze() after"
             " start-up, make its passes shorter")


@dataclass(frozen=True, slots=True)
class GcPauses:
    """The passes of a process's event loop that its garbage collector held (the agent's loop
    watchdog): how many, their seconds in all and the longest (ms)."""

    count: int
    seconds: float
    longest_ms: float

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "seconds": self.seconds, "longest_ms": self.longest_ms}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GcPauses:
        return cls(data["count"], data["seconds"], data["longest_ms"])


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """One process's resource figures; the shares and the loop lag are None when unknown."""

    pid: int
    cpu_percent_avg: float
    rss_mb_max: float
    rss_mb_slope_per_min: float
    threads_max: int
    fds_max: int
    server_cpu_share: float | None
    runqueue_share: float | None
    loop_lag_ms: LoopLag | None
    native_cpu_share: float | None = None  # threads Python does not run (a C extension's)
    loop_gc_pauses: GcPauses | None = None  # None: the loop not watched, or no pause held
    # Seconds into the session at which the process exited (a worker recycled, killed or
    # crashed); None when it served to the end.
    exited_after_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "cpu_percent_avg": self.cpu_percent_avg,
                "rss_mb_max": self.rss_mb_max, "rss_mb_slope_per_min": self.rss_mb_slope_per_min,
                "threads_max": self.threads_max, "fds_max": self.fds_max,
                "server_cpu_share": self.server_cpu_share, "runqueue_share": self.runqueue_share,
                "native_cpu_share": self.native_cpu_share,
                "loop_lag_ms": None if self.loop_lag_ms is None else self.loop_lag_ms.to_json(),
                "loop_gc_pauses": None if self.loop_gc_pauses is None
                else self.loop_gc_pauses.to_json(),
                "exited_after_seconds": self.exited_after_seconds}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessStats:
        lag, gc = data.get("loop_lag_ms"), data.get("loop_gc_pauses")
        return cls(data["pid"], data["cpu_percent_avg"], data["rss_mb_max"],
                   data["rss_mb_slope_per_min"], data["threads_max"], data["fds_max"],
                   data.get("server_cpu_share"), data.get("runqueue_share"),
                   LoopLag.from_json(lag) if lag else None, data.get("native_cpu_share"),
                   GcPauses.from_json(gc) if gc else None, data.get("exited_after_seconds"))


@dataclass(frozen=True, slots=True)
class Report:
    """One session's analysis: what was analysed, the figures, and the flags, most severe
    first."""

    target: Target
    window: ReportWindow
    samples: SampleSummary
    endpoints: tuple[EndpointStats, ...]  # busiest first
    processes: tuple[ProcessStats, ...]  # by pid
    flags: tuple[Flag, ...]

    def to_json(self) -> dict[str, Any]:
        """The report's JSON object, keys in the report's order."""
        return {"apiscope_report": REPORT_VERSION, "target": self.target.to_json(),
                "window": self.window.to_json(), "samples": self.samples.to_json(),
                "endpoints": [e.to_json() for e in self.endpoints],
                "processes": [p.to_json() for p in self.processes],
                "flags": [f.to_json() for f in self.flags]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        """A report from its JSON (`to_json`'s inverse); raises `ValueError` for JSON that is
        not a report of this version."""
        version = data.get("apiscope_report")
        if version != REPORT_VERSION:
            raise ValueError(f"not an apiscope report of version {REPORT_VERSION}"
                             f" (apiscope_report: {version!r})")
        return cls(Target.from_json(data["target"]), ReportWindow.from_json(data["window"]),
                   SampleSummary.from_json(data["samples"]),
                   tuple(EndpointStats.from_json(e) for e in data.get("endpoints") or ()),
                   tuple(ProcessStats.from_json(p) for p in data.get("processes") or ()),
                   tuple(Flag.from_json(f) for f in data.get("flags") or ()))
