"""What attach, run and demo share: the outputs around a Collection, and its end.

Every way out ends the same way: the duration, Ctrl-C, SIGTERM, SIGHUP, the target's exit, a
session file that can no longer be written, or an error of ours all flush the last window,
detach every agent injected (a failure says how to retry) and keep the session.

An agent that could not be detached stays in a server that may be in production: the warning
names the PID and the command that retries, it is repeated as the last line, stored in the
session for `apiscope report`, and the command exits 1 (not a success) once the session is
saved, so that a script notices.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apiscope.analysis.thresholds import DEFAULT_SLO_MS, Thresholds, resolve_thresholds
from apiscope.collect.failures import detach_warning, failure_lines
from apiscope.collection import Collection, CollectOptions
from apiscope.collectors.injections import AgentInjections, DetachFailure
from apiscope.collectors.target import Target
from apiscope.dashboard import require_dash
from apiscope.dashboard.access import new_token, url_with_token
from apiscope.errors import UsageError
from apiscope.exporters.report import check_report_suffix
from apiscope.flag import Flag
from apiscope.lock import CollectorLock
from apiscope.metrics import LiveFlags, MetricsExporter, serve_metrics, session_flags
from apiscope.metrics.live_flags import FlagSource
from apiscope.signals import stop_on_signals
from apiscope.store import SessionReader, SessionWriter
from apiscope.store.writer import SessionWriteError

LOW_SPACE_BYTES = 64 * 1024 * 1024  # a busy session writes a few MB a minute


def default_session_path() -> Path:
    return Path(time.strftime("apiscope-%Y%m%d-%H%M%S.sqlite"))


def options_from(args: argparse.Namespace, *, inject: bool, slo_ms: float) -> CollectOptions:
    return CollectOptions(rate_hz=args.rate, duration=args.duration,
                          nonblocking=args.nonblocking, inject=inject, slo_ms=slo_ms,
                          max_overhead=args.max_overhead, verbosity=verbosity(args))


def verbosity(args: argparse.Namespace) -> int:
    """0 with --quiet, 2 with --verbose, else 1."""
    return 0 if args.quiet else 2 if args.verbose else 1


def say(args: argparse.Namespace, message: str) -> None:
    """A progress line, left out by --quiet (warnings, errors and the flags are not)."""
    if not args.quiet:
        print(f"apiscope: {message}", file=sys.stderr)


def collect_thresholds(args: argparse.Namespace) -> Thresholds:
    """The thresholds of this run (`--config`, else pyproject.toml's, else the defaults), with
    the objective settled: `--slo-ms`, else the thresholds' `slo_ms`, else 200. The live flags,
    /metrics, the dashboard and the final report all judge by these."""
    thresholds = resolve_thresholds(args.config)
    return replace(thresholds, slo_ms=args.slo_ms or thresholds.slo_ms or DEFAULT_SLO_MS)


def check_report_path(args: argparse.Namespace) -> None:
    """Refuse, before anything starts, paths, a config and a missing Dash that could only fail
    later."""
    collect_thresholds(args)
    if not args.no_dashboard:
        require_dash("run headless with --no-dashboard (--metrics-port PORT serves /metrics)")
    if args.report:
        check_report_suffix(args.report)
        check_writable_file(Path(args.report), "--report")
    if args.session:
        check_writable_file(Path(args.session), "--session")


def check_writable_file(path: Path, option: str) -> None:
    if path.is_dir():
        example = path / ("session.sqlite" if option == "--session" else "report.json")
        raise UsageError(f"{option} {path} is a directory: give a file path, such as {example}")
    parent = path.resolve().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {existing} (permission denied):"
                         " choose a directory you can write to")


def stored_flags(session: Path, thresholds: Thresholds, writer: SessionWriter) -> FlagSource:
    """Analyse the growing session and store its flags in it, for the dashboard to show."""
    compute = session_flags(session, thresholds=thresholds)

    def flags() -> list[Flag]:
        found = compute()
        writer.replace_flags(found)
        return found

    return flags


# Of the overhead budget, the most the live analysis (the flags of /metrics and the dashboard)
# may use. It re-reads the whole session each run: on MLflow's tracking server under load, a
# 36 s session cost 0.25 s of CPU a run, and run every 10 s, it and the dashboard's own run of
# the same analysis took half of a 2 % budget by themselves.
ANALYSIS_SHARE = 0.25


def analysis_share(args: argparse.Namespace, target: Target) -> float | None:
    """The share of a core the live analysis may use: `ANALYSIS_SHARE` of the budget, of the
    target's capacity (a core per serving process, no more than the machine has); None
    without a budget."""
    budget: float | None = getattr(args, "max_overhead", None)
    if not budget:
        return None
    cores = max(1, min(len(target.pids), os.cpu_count() or 1))
    return ANALYSIS_SHARE * budget / 100 * cores


@contextmanager
def outputs(args: argparse.Namespace, session: Path, metrics: MetricsExporter,
            writer: SessionWriter, thresholds: Thresholds,
            share: Callable[[], float] | None = None) -> Iterator[None]:
    """Serve the live dashboard (with /metrics) or /metrics alone, for the run's duration;
    their flags are analysed using at most `share()` of a core (asked after each run)."""
    stoppers: list[Callable[[], Any]] = []
    try:
        if not args.no_dashboard or args.metrics_port is not None:
            # One analysis loop feeds both the metrics' flags and the dashboard's (which
            # shows the flags it stores in the session).
            live_flags = LiveFlags(metrics, stored_flags(session, thresholds, writer),
                                   max_share=share)
            live_flags.start()
            stoppers.append(live_flags.stop)
        if not args.no_dashboard:
            from apiscope.dashboard import start_dashboard_thread

            token = dashboard_token(args)
            handle = start_dashboard_thread(session, args.host, args.port, metrics=metrics,
                                            token=token, thresholds=thresholds,
                                            analyse=False)
            stoppers.append(handle.stop)
            # Printed even with --quiet: the token in it is the only way in.
            print(f"apiscope: dashboard at {dashboard_url(args)} (the token keeps the"
                  " session private, as its file is)", file=sys.stderr)
        if args.metrics_port is not None:
            # Open on purpose, for Prometheus: only the figures, never stacks or SQL.
            server = serve_metrics(metrics, args.host, args.metrics_port)
            stoppers.append(server.shutdown)
            say(args, f"metrics at http://{args.host}:{args.metrics_port}/metrics")
        yield
    finally:
        for stop in reversed(stoppers):
            stop()


def dashboard_token(args: argparse.Namespace) -> str | None:
    """The dashboard's token, chosen once per command (demo opens the URL before serving)."""
    if not hasattr(args, "dashboard_token"):
        args.dashboard_token = new_token()
    token: str | None = args.dashboard_token
    return token


def dashboard_url(args: argparse.Namespace) -> str:
    return url_with_token(f"http://{args.host}:{args.port}/", dashboard_token(args))


@dataclass(frozen=True)
class Collected:
    """How a collection ended, for the command's exit code."""

    session: Path
    detach_failures: list[DetachFailure] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: the run ended and its session is kept (per the contract, as when the target
        exits). An agent left behind is warned about twice, the second time as the last line,
        and listed in the report's `target.failures`: a detach that timed out is usually still
        queued in the target and runs at its next request, so it does not fail the command."""
        return 0


def collect(target: Target, args: argparse.Namespace, *, inject: bool,
            injections: AgentInjections | None = None,
            before_end: Callable[[Collection], None] | None = None) -> Collected:
    """Run one collection against `target` with the command's options; says how it ended."""
    session = Path(args.session) if args.session else default_session_path()
    thresholds = collect_thresholds(args)
    slo_ms = thresholds.slo_ms or DEFAULT_SLO_MS  # always set by collect_thresholds
    metrics = MetricsExporter(slo_seconds=slo_ms / 1000)  # exported for the alerts
    with CollectorLock({target.sample_pid, *target.pids}, str(session)), \
            SessionWriter(session) as writer:
        warn_if_low_space(session)
        collection = Collection(target, writer, options_from(args, inject=inject, slo_ms=slo_ms),
                                metrics=metrics, injections=injections if inject else None)
        budget = getattr(args, "max_overhead", None)
        rate = (f"at up to {args.rate} Hz within a {budget:g}% budget" if budget
                else f"at {args.rate} Hz")
        say(args, f"sampling pid {target.pid} ({target.server}) {rate} into {session}")
        base = analysis_share(args, target)
        share = None if base is None else lambda: base * collection.analysis_scale()
        with outputs(args, session, metrics, writer, thresholds, share), \
                stop_on_signals(collection.request_stop):
            try:
                collection.start()
                collection.run_until_done()
            finally:
                collection.stop()  # a no-op after run_until_done; after an error, the flush
                report_detach(collection.close_agents())
                if before_end is not None:
                    before_end(collection)
            if collection.target_gone:
                print("apiscope: warning: the target exited; the session is kept",
                      file=sys.stderr)
            summarize(collection, quiet=args.quiet)
            finish(args, session, writer, thresholds,
                   store_flags=collection.storage_failure is None)
            remind_detach(collection.detach_failures)
        if collection.storage_failure is not None:
            raise SessionWriteError(f"the session file {session} could not be written:"
                                    f" {collection.storage_failure}. It keeps what was written"
                                    " before, readable with `apiscope report`")
    return Collected(session, list(collection.detach_failures))


def warn_if_low_space(session: Path) -> None:
    try:
        free = shutil.disk_usage(session.resolve().parent).free
    except OSError:
        return
    if free < LOW_SPACE_BYTES:
        print(f"apiscope: warning: only {free // (1024 * 1024)} MB free where the session is"
              f" written ({session.resolve().parent}); a busy server fills a few MB a minute:"
              " the session stops, keeping what it holds, when the disk is full",
              file=sys.stderr)


def report_detach(failures: list[DetachFailure]) -> None:
    """A warning per process the agent could not be taken out of, as soon as that is known."""
    for failure in failures:
        print(f"apiscope: {detach_warning(failure.pid, failure.reason, failure.command)}",
              file=sys.stderr)


def remind_detach(failures: list[DetachFailure]) -> None:
    """The last line, after the flags and the session's path: an agent left behind is what
    the user must not miss."""
    if failures:
        retries = "; ".join(f.command for f in failures)
        pids = ", ".join(str(f.pid) for f in failures)
        print(f"apiscope: warning: the agent is still in PID {pids}: retry with: {retries}",
              file=sys.stderr)


def summarize(collection: Collection, quiet: bool = False) -> None:
    """The end-of-run summary: samples and requests stored, and what went wrong on the way
    (also stored in the session: `apiscope report` shows it again)."""
    t = collection.totals
    stats = collection.sampler_stats
    for line in failure_lines(collection.failures.entries()):
        if line.startswith("warning:") or not quiet:
            print(f"apiscope: {line}", file=sys.stderr)
    if collection.storage_failure is not None:
        writer = collection.writer
        print(f"apiscope: the session holds {writer.committed_samples:,} samples and"
              f" {writer.committed_requests:,} requests written before the failure",
              file=sys.stderr)
        return
    for start, end, reason in stats.gaps:
        print(f"apiscope: warning: no samples for {end - start:.1f} s ({reason}); the gap is"
              " kept in the session and the report", file=sys.stderr)
    loss = ""
    if stats.expected:
        loss = f" ({100.0 * stats.loss:.1f}% lost against rate x seconds x threads)"
    if not quiet:
        print(f"apiscope: stored {stats.stored:,} samples{loss}, {t.requests:,} requests",
              file=sys.stderr)
    if stats.dropped_windows or stats.failed_windows:
        print(f"apiscope: warning: {stats.dropped_windows + stats.failed_windows} of"
              f" {stats.windows + stats.failed_windows} sampling windows were lost"
              f" ({stats.dropped_windows} not written by py-spy, {stats.failed_windows} not"
              " readable" + (f": {stats.last_failure}" if stats.last_failure else "") + ");"
              " sampling went on", file=sys.stderr)
    if t.requests == 0 and collection.options.inject:
        print("apiscope: warning: no requests were recorded: either no traffic reached the"
              " server, or no ASGI app was found in it (stacks and resources are still kept)",
              file=sys.stderr)


def finish(args: argparse.Namespace, session: Path, writer: SessionWriter,
           thresholds: Thresholds, store_flags: bool = True) -> None:
    """Analyse the session once: store its flags in it, print them, write --report if asked."""
    from apiscope.analysis.report import analyse, load_session
    from apiscope.analysis.stats import exit_notes
    from apiscope.exporters.report import save_report

    with SessionReader(session) as reader:
        data = load_session(reader)
    report = analyse(data, thresholds=thresholds)
    # Every process that exited, also one gone before its first resource sample (which the
    # report's processes cannot list).
    for line in exit_notes({pid: max(0.0, exited - data.start)
                            for pid, exited in data.exited.items()}):
        print(f"apiscope: warning: {line}", file=sys.stderr)
    flags = report.flags
    if store_flags:
        writer.replace_flags(flags)
        writer.flush()
    if flags:
        print(f"apiscope: {len(flags)} flag(s):", file=sys.stderr)
        for flag in flags:
            loc = flag.location
            where = f" at {loc.file}:{loc.line}" if loc and loc.file else ""
            route = f" {flag.route}" if flag.route else ""
            print(f"  [{flag.severity}] {flag.kind}{route}{where}", file=sys.stderr)
    else:
        print("apiscope: no bottleneck flagged", file=sys.stderr)
    if args.report:
        save_report(report, data, args.report)
        say(args, f"report written to {args.report}")
    say(args, f"session saved to {session}; see it with: apiscope report {session}")
