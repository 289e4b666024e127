"""What attach, run and demo share: the outputs around a Collection, and its end."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from apiscope.analysis.report import check_report_suffix
from apiscope.collection import Collection, CollectOptions
from apiscope.collectors.target import Target
from apiscope.metrics import LiveFlags, MetricsExporter, serve_metrics, session_flags
from apiscope.metrics.live_flags import FlagSource
from apiscope.store import SessionReader, SessionWriter


def default_session_path() -> Path:
    return Path(time.strftime("apiscope-%Y%m%d-%H%M%S.sqlite"))


def options_from(args: argparse.Namespace, *, inject: bool) -> CollectOptions:
    return CollectOptions(rate_hz=args.rate, duration=args.duration,
                          nonblocking=args.nonblocking, inject=inject, slo_ms=args.slo_ms)


def check_report_path(args: argparse.Namespace) -> None:
    if args.report:
        check_report_suffix(args.report)


def stored_flags(session: Path, slo_ms: float, writer: SessionWriter) -> FlagSource:
    """Analyse the growing session and store its flags in it, for the dashboard to show."""
    compute = session_flags(session, slo_ms)

    def flags() -> list[Mapping[str, Any]]:
        found = compute()
        writer.replace_flags(dict(flag) for flag in found)
        return found

    return flags


@contextmanager
def outputs(args: argparse.Namespace, session: Path, metrics: MetricsExporter,
            writer: SessionWriter) -> Iterator[None]:
    """Serve the live dashboard (with /metrics) or /metrics alone, for the run's duration."""
    stoppers: list[Callable[[], Any]] = []
    try:
        if not args.no_dashboard or args.metrics_port is not None:
            # One analysis loop feeds both the metrics' flags and the dashboard's.
            live_flags = LiveFlags(metrics, stored_flags(session, args.slo_ms, writer))
            live_flags.start()
            stoppers.append(live_flags.stop)
        if not args.no_dashboard:
            from apiscope.dashboard import start_dashboard_thread

            handle = start_dashboard_thread(session, args.host, args.port, metrics=metrics)
            stoppers.append(handle.stop)
            print(f"apiscope: dashboard at http://{args.host}:{args.port}/", file=sys.stderr)
        if args.metrics_port is not None:
            server = serve_metrics(metrics, args.host, args.metrics_port)
            stoppers.append(server.shutdown)
            print(f"apiscope: metrics at http://{args.host}:{args.metrics_port}/metrics",
                  file=sys.stderr)
        yield
    finally:
        for stop in reversed(stoppers):
            stop()


def collect(target: Target, args: argparse.Namespace, *, inject: bool,
            injector: Callable[[int], Any] | None = None,
            ejector: Callable[[int], Any] | None = None,
            before_end: Callable[[Collection], None] | None = None) -> Path:
    """Run one collection against `target` with the command's options; returns the session."""
    session = Path(args.session) if args.session else default_session_path()
    metrics = MetricsExporter(slo_seconds=args.slo_ms / 1000)  # exported for the alerts
    with SessionWriter(session) as writer:
        collection = Collection(target, writer, options_from(args, inject=inject),
                                metrics=metrics, injector=injector if inject else None)
        print(f"apiscope: sampling pid {target.pid} ({target.server}) at {args.rate} Hz"
              f" into {session}", file=sys.stderr)
        with outputs(args, session, metrics, writer):
            collection.start()
            try:
                collection.run_until_done()
            finally:
                if inject and ejector is not None and not collection.target_gone:
                    for pid in list(target.pids):
                        try:
                            ejector(pid)
                        except Exception as exc:  # detaching is best effort at the end
                            print(f"apiscope: warning: could not detach from {pid}: {exc}",
                                  file=sys.stderr)
                if before_end is not None:
                    before_end(collection)
        if collection.target_gone:
            print("apiscope: warning: the target exited; the session is kept", file=sys.stderr)
        summarize(collection)
        finish(args, session, writer)
    return session


def summarize(collection: Collection) -> None:
    t = collection.totals
    stats = collection.sampler_stats
    loss = ""
    if stats.expected:
        loss = f" ({100.0 * stats.loss:.1f}% lost against rate x seconds x threads)"
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


def finish(args: argparse.Namespace, session: Path, writer: SessionWriter) -> None:
    """Analyse the session once: store its flags in it, print them, write --report if asked."""
    from apiscope.analysis.report import analyse, load_session, save_report

    with SessionReader(session) as reader:
        data = load_session(reader)
    report = analyse(data, slo_ms=args.slo_ms)
    writer.replace_flags(report["flags"])
    writer.flush()
    flags = report["flags"]
    if flags:
        print(f"apiscope: {len(flags)} flag(s):", file=sys.stderr)
        for flag in flags:
            loc = flag.get("location") or {}
            where = f" at {loc['file']}:{loc['line']}" if loc.get("file") else ""
            route = f" {flag['route']}" if flag.get("route") else ""
            print(f"  [{flag['severity']}] {flag['kind']}{route}{where}", file=sys.stderr)
    else:
        print("apiscope: no bottleneck flagged", file=sys.stderr)
    if args.report:
        save_report(report, data, args.report)
        print(f"apiscope: report written to {args.report}", file=sys.stderr)
    print(f"apiscope: session saved to {session}; see it with: apiscope report {session}",
          file=sys.stderr)
