"""`apiscope export SESSION`: a flamegraph of the session or a slice of it."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, cast

from apiscope.analysis.attribution import app_roots
from apiscope.errors import UsageError
from apiscope.exporters import FORMATS, Profile, any_renderer
from apiscope.exporters.slice import (
    BlockedMode,
    GilMode,
    IdleMode,
    SliceSpec,
    describe_session,
    route_matcher,
    select_samples,
    session_start,
)
from apiscope.model import StackSample
from apiscope.report import Report
from apiscope.store.reader import SessionReader


class ExportCommand:
    name = "export"
    help = "export a flamegraph (svg, speedscope, folded, html, pprof) of a session or a slice"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = FORMATS_HELP
        parser.add_argument("session", metavar="SESSION", help="a session file")
        parser.add_argument("--format", choices=FORMATS, required=True,
                            help="the file format (see below)")
        parser.add_argument("-o", "--output", metavar="PATH", help="write here, not stdout")
        parser.add_argument("--route", help="only samples of this endpoint, e.g."
                            " 'GET /items/{item_id}' or '/items/{item_id}' (every method)")
        parser.add_argument("--pid", type=int, help="only this process")
        parser.add_argument("--thread", type=int, metavar="TID", help="only this thread")
        parser.add_argument("--since", metavar="T", help="seconds from start, or an ISO time")
        parser.add_argument("--until", metavar="T", help="seconds from start, or an ISO time")
        parser.add_argument("--idle", choices=["include", "exclude", "only"], default="include",
                            help="samples of threads waiting for work")
        parser.add_argument("--blocked", choices=["include", "exclude", "only"],
                            default="include",
                            help="samples off-CPU at a working stack (sleep, I/O, locks, GIL);"
                            " --idle exclude --blocked exclude leaves on-CPU time only")
        parser.add_argument("--gil", choices=["any", "held", "not-held"], default="any")
        parser.add_argument("--threads", action="store_true",
                            help="add a process and a thread frame at the root of every stack")

    def run(self, args: argparse.Namespace) -> int:
        spec = SliceSpec(route=args.route, pid=args.pid, thread=args.thread, since=args.since,
                         until=args.until, idle=cast(IdleMode, args.idle),
                         gil=cast(GilMode, args.gil), blocked=cast(BlockedMode, args.blocked))
        with SessionReader(args.session) as reader:
            samples = select_samples(reader, spec)
            if not samples:
                raise UsageError(f"no samples match {spec.describe()}: {describe_session(reader)};"
                                 " widen the slice or drop some of its options")
            report = session_report(reader) if args.format == "html" else None
            profile = session_profile(reader, samples, f"{Path(args.session).name}:"
                                      f" {spec.describe()}", report, threads=args.threads)
        write_output(any_renderer(args.format).render(profile), args.output)
        if args.output:
            print(f"apiscope: wrote {profile.total:,} samples ({spec.describe()}) to"
                  f" {args.output}", file=sys.stderr)
        return 0


def session_profile(reader: SessionReader, samples: list[StackSample], title: str,
                    report: Report | None, threads: bool) -> Profile:
    """The samples with what pprof carries besides counts (rate, routes and time span) and the
    app roots that tell the application's frames as the report does."""
    start = session_start(reader)
    end = (reader.time_range() or (start, start))[1]
    rate = reader.meta().rate_hz or None
    routes = reader.routes()
    return Profile(samples, title, report, threads=threads, rate_hz=rate,
                   endpoint_of=route_matcher(routes, reader.served_endpoints()),
                   span=(start, max(0.0, end - start)),
                   app_roots=app_roots(routes, (s.frames for s in samples)))


def session_report(reader: SessionReader) -> Report | None:
    """The session's report for the html page, when the analysis package provides one."""
    try:
        module: Any = importlib.import_module("apiscope.analysis.report")
    except ImportError:
        return None  # an export without the report section beats no export
    report: Report = module.build_report(reader)
    return report


FORMATS_HELP = """formats:
  svg         a standalone interactive flamegraph (click to zoom, search)
  html        one page with the report and the flamegraph, no network needed
  speedscope  a speedscope.app file, one profile per process and thread
  folded      collapsed stacks, `root;...;leaf COUNT`, for flamegraph.pl and inferno
  pprof       gzipped profile.proto for go tool pprof, Pyroscope and other back ends:
              samples, cpu and wall nanoseconds, labels route, pid, thread
"""


def write_output(content: str | bytes, output: str | None) -> None:
    if output is None or output == "-":
        if isinstance(content, bytes):
            sys.stdout.buffer.write(content)
            sys.stdout.buffer.flush()
            return
        sys.stdout.write(content)
        sys.stdout.flush()
        return
    try:
        if isinstance(content, bytes):
            Path(output).write_bytes(content)
        else:
            Path(output).write_text(content, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}; choose a writable path"
                         " with -o") from None
