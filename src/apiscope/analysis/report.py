"""The report: a session's analysis and its terminal rendering (files: `exporters.report`).

`build_report(reader)` reads a session once and returns its `Report` (`apiscope.report`, which
also writes and reads the contract's JSON); `analyse(data)` does the same from already loaded
`SessionData` (the diff and tests use it). `find_flags(reader)` gives the same flags without
the rest of the report (what `/metrics` and the dashboard keep current).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from apiscope.analysis.context import AnalysisContext, Flag, SessionData, build_context
from apiscope.analysis.context import load_session as load_session
from apiscope.analysis.flags import sort_flags
from apiscope.analysis.rules import RULES, Rule
from apiscope.analysis.stats import endpoint_stats, exit_notes, process_stats
from apiscope.analysis.thresholds import DEFAULT_SLO_MS, Thresholds
from apiscope.report import (
    GC_ADVICE,
    DetachFailed,
    Gap,
    ProcessFailures,
    Report,
    ReportWindow,
    SampleSummary,
    Target,
)
from apiscope.store.reader import SessionReader


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def effective_thresholds(data: SessionData, slo_ms: float | None,
                         thresholds: Thresholds | None) -> Thresholds:
    """The objective is `slo_ms` if given, else the thresholds', else the session's
    (`--slo-ms` at collection), else 200 ms."""
    base = thresholds or Thresholds()
    chosen = slo_ms or base.slo_ms or data.meta.slo_ms or DEFAULT_SLO_MS
    return replace(base, slo_ms=float(chosen))


def run_rules(ctx: AnalysisContext, rules: list[Rule] | None = None) -> list[Flag]:
    flags: list[Flag] = []
    for rule in RULES if rules is None else rules:
        flags += rule.check(replace(ctx, earlier=tuple(flags)))
    return sort_flags(flags)


def find_flags(reader: SessionReader, *, slo_ms: float | None = None,
               thresholds: Thresholds | None = None) -> list[Flag]:
    """The flags `build_report` would give, typed: the rules alone, no endpoint or process
    figures (which the flags do not depend on)."""
    data = load_session(reader)
    return run_rules(build_context(data, effective_thresholds(data, slo_ms, thresholds)))


def _target(data: SessionData) -> Target:
    meta = data.meta
    pids = meta.pids or sorted({r.pid for r in data.resources}
                               | {s.pid for _, s in data.samples})
    # Agents left in the target, with the command that retries (the key earlier reports had).
    left = tuple(DetachFailed.from_json(d) for d in meta.detach_failed)
    # What went wrong per process while collecting (windows lost, agent errors, failed
    # detaches): present when something did, one entry per process with something to say.
    failures = {f.pid: f for f in map(ProcessFailures.from_json, meta.target_failures)}
    for gone in left:  # stored alone by earlier versions
        pid = int(gone.pid)
        entry = failures.get(pid) or ProcessFailures(pid)
        failures[pid] = replace(
            entry,
            detach_failed=gone.reason if entry.detach_failed is None else entry.detach_failed,
            retry=gone.retry if entry.retry is None else entry.retry)
    return Target(tuple(pids), meta.command, meta.server, meta.python,
                  left, tuple(failures[pid] for pid in sorted(failures)))


def _failure_text(entry: ProcessFailures) -> list[str]:
    """The text report's lines for one process's failures."""
    pid = entry.pid
    out = []
    if entry.windows_dropped or entry.windows_failed:
        why = f": {entry.window_failure}" if entry.window_failure else ""
        out.append(f"  PID {pid}: sampling windows lost: {entry.windows_dropped} not"
                   f" written by py-spy, {entry.windows_failed} not readable{why}")
    if entry.sampler_retries:
        out.append(f"  PID {pid}: py-spy start retried {entry.sampler_retries} time(s)")
    if entry.sampling_stopped:
        out.append(f"  PID {pid}: stack sampling stopped early: {entry.sampling_stopped}")
    if entry.agent_errors:
        out.append(f"  PID {pid}: the agent answered {entry.agent_errors} pull(s) with an"
                   f" error: {entry.agent_error}")
    if entry.agent_internal_errors or entry.watchdog_errors:
        out.append(f"  PID {pid}: the agent caught {entry.agent_internal_errors}"
                   f" error(s) of its own, its watchdogs {entry.watchdog_errors}")
    if entry.no_agent:
        out.append(f"  PID {pid}: no requests recorded, no agent runs in it: {entry.no_agent}")
    if entry.detach_failed:
        out.append(f"  PID {pid}: the agent could not be detached ({entry.detach_failed});"
                   f" retry with: {entry.retry or f'apiscope detach {pid}'}")
    return out


def _gaps(data: SessionData) -> tuple[Gap, ...]:
    """Stretches without stack samples (a stopped target), kept apart, never smoothed over."""
    return tuple(Gap(iso(g.start), iso(g.end), round(g.end - g.start, 3), g.reason)
                 for g in data.meta.gaps)


def _samples(data: SessionData) -> SampleSummary:
    meta = data.meta
    rate = meta.rate_hz or (data.windows[0].rate_hz if data.windows else None)
    errors = meta.samples_errors
    if errors is None:
        errors = sum(w.errors for w in data.windows)
    effective = None
    if data.windows:  # the rate the budget let each window have, over the session
        seconds = sum(w.end - w.start for w in data.windows)
        effective = round(sum(w.rate_hz * (w.end - w.start) for w in data.windows) / seconds,
                          1) if seconds > 0 else rate
    budgeted = meta.max_overhead is not None
    # A process sampled in a window without the kernel's reading for it there: a reading lost
    # (gunicorn's recycled workers lost theirs until the sampler read each window's workers
    # as it launched), or a process that could not be read. Counted, never silent.
    unmeasured = 0
    if data.process_cpu:
        measured = {(c.window, c.pid) for c in data.process_cpu}
        unmeasured = len({(w, s.pid) for w, s in data.samples} - measured)
    return SampleSummary(
        total=sum(s.count for _, s in data.samples), rate_hz=rate, errors=errors,
        cpu_measured=bool(data.thread_cpu),
        windows_dropped=meta.windows_dropped or None,
        windows_failed=meta.windows_failed or None,
        errors_while_injecting=meta.samples_paused or None,
        effective_rate_hz=effective,
        max_overhead_percent=meta.max_overhead,
        overhead_percent=meta.overhead if budgeted else None,
        requests_kept_one_in=meta.requests_kept_every_max
        if (meta.requests_kept_every_max or 1) > 1 else None,
        windows_unmeasured=unmeasured or None,
        overhead_parts=dict(meta.overhead_parts) if budgeted and meta.overhead_parts else None)


def analyse(data: SessionData, *, slo_ms: float | None = None,
            thresholds: Thresholds | None = None) -> Report:
    ctx = build_context(data, effective_thresholds(data, slo_ms, thresholds))
    return Report(
        target=_target(data),
        window=ReportWindow(iso(data.start), iso(data.end), round(data.seconds, 3),
                            _gaps(data)),
        samples=_samples(data),
        endpoints=tuple(endpoint_stats(ctx)),
        processes=tuple(process_stats(ctx)),
        flags=tuple(run_rules(ctx)),
    )


def build_report(reader: SessionReader, *, slo_ms: float | None = None,
                 thresholds: Thresholds | None = None) -> Report:
    return analyse(load_session(reader), slo_ms=slo_ms, thresholds=thresholds)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}{unit}" if abs(value) < 1000 else f"{value:.0f}{unit}"
    return f"{value}{unit}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def _rate(samples: SampleSummary) -> str:
    """The rate the samples were taken at: what the budget allowed of the rate asked for."""
    asked = f"{samples.rate_hz} Hz" if samples.rate_hz else "- Hz"
    if samples.effective_rate_hz is None or samples.effective_rate_hz == samples.rate_hz:
        return asked
    within = ""
    if samples.max_overhead_percent is not None and samples.overhead_percent is not None:
        within = (f", cost {samples.overhead_percent:.1f}% against a"
                  f" {samples.max_overhead_percent:g}% budget{_cost_parts(samples)}")
    return f"{samples.effective_rate_hz:g} Hz on average ({asked} asked{within})"


COST_PART_NAMES = {"pyspy_startup": "py-spy start-ups", "pyspy_samples": "py-spy samples",
                   "agent": "agent", "collector": "collector"}


def _cost_parts(samples: SampleSummary) -> str:
    """": py-spy start-ups 0.4%, py-spy samples 0.9%, agent 0.3%, collector 0.5%"."""
    if not samples.overhead_parts:
        return ""
    return ": " + ", ".join(f"{COST_PART_NAMES.get(name, name)} {share:.1f}%"
                            for name, share in samples.overhead_parts.items())


def render_text(report: Report) -> str:
    """A readable terminal report: target, endpoints, processes, then the flags."""
    target, window, samples = report.target, report.window, report.samples
    out = [f"apiscope report: {target.command or 'unknown command'}",
           f"  pids {', '.join(map(str, target.pids)) or '-'}; server"
           f" {target.server or '-'}; python {target.python or '-'}",
           f"  window {window.start} .. {window.end} ({window.seconds:.0f} s);"
           f" {samples.total} stack samples at {_rate(samples)},"
           f" {samples.errors} errors", ""]
    if samples.windows_unmeasured is not None:
        out[-1:-1] = [f"  CPU not measured for {samples.windows_unmeasured} process window(s)"
                      " (the kernel could not be read for the process there): their CPU"
                      " figures are estimated from the stacks"]
    if samples.requests_kept_one_in is not None:
        out[-1:-1] = [f"  a busy server: the agents kept 1 request in up to"
                      f" {samples.requests_kept_one_in} at random (every error and every request"
                      " over the SLO kept); request counts and latencies are estimates"]
    failures = [line for entry in target.failures for line in _failure_text(entry)]
    if failures:
        out[-1:-1] = ["", "Collection failures", *failures]
    rows = [["endpoint", "count", "rps", "p50 ms", "p95 ms", "p99 ms", "max ms", "5xx",
             "cpu"]]
    for e in report.endpoints:
        rows.append([e.route, str(e.count), _fmt(e.rps), _fmt(e.p50_ms), _fmt(e.p95_ms),
                     _fmt(e.p99_ms), _fmt(e.max_ms), f"{e.error_rate * 100:.1f}%",
                     _share(e.cpu_share)])
    out += ["Endpoints", *_table(rows)] if report.endpoints else ["No endpoints recorded."]
    if report.processes:
        rows = [["pid", "cpu avg", "rss max MB", "rss MB/min", "threads", "fds", "server cpu",
                 "native cpu"]]
        rows += [[str(p.pid), _fmt(p.cpu_percent_avg, "%"), _fmt(p.rss_mb_max),
                  f"{p.rss_mb_slope_per_min:+.2f}", str(p.threads_max), str(p.fds_max),
                  _share(p.server_cpu_share), _share(p.native_cpu_share)]
                 for p in report.processes]
        out += ["", "Processes", *_table(rows)]
        out += [f"  pid {p.pid}: the garbage collector held the event loop"
                f" {p.loop_gc_pauses.count} times, {p.loop_gc_pauses.seconds:.2f} s in all (longest"
                f" {p.loop_gc_pauses.longest_ms:.0f} ms); {GC_ADVICE}"
                for p in report.processes if p.loop_gc_pauses is not None]
        out += [f"  {line}" for line in exit_notes(
            {p.pid: p.exited_after_seconds for p in report.processes
             if p.exited_after_seconds is not None})]
    flags = report.flags
    out += ["", f"Flags ({len(flags)})"]
    if not flags:
        out.append("  none: no bottleneck crossed its threshold")
    for f in flags:
        loc = f.location
        at = f" at {loc.file}:{loc.line}" if loc else ""
        out += [f"  [{f.severity.upper()}] {f.kind} {f.route or ''}{at}".rstrip(),
                f"      {f.evidence}", f"      fix: {f.suggestion}"]
    return "\n".join(out) + "\n"
