"""`apiscope report SESSION`: the analysis of a session."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from apiscope.analysis.flags import at_or_above
from apiscope.analysis.report import analyse, load_session, render_text
from apiscope.analysis.thresholds import resolve_thresholds
from apiscope.cli.base import add_config_option, positive_float
from apiscope.errors import BudgetExceeded, UsageError
from apiscope.exporters.report import render_html
from apiscope.exporters.report import write_report as write_report
from apiscope.store.reader import SessionReader


def emit(text: str, output: str | None) -> None:
    """Write `text` to the -o file, or to stdout."""
    if output is None:
        sys.stdout.write(text)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}: choose a writable path"
                         ) from None


REPORT_FORMATS_HELP = """formats:
  text  a summary for the terminal: endpoints, processes and flags with their evidence
  json  the full report ("apiscope_report": 1): target, window, samples, endpoints,
        processes and flags (kind, severity, location, evidence, metric, suggestion)
  html  a standalone page (no network needed) with the report and the flamegraph
"""


class ReportCommand:
    name = "report"
    help = "analyse a session: endpoints, processes and flagged bottlenecks"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = REPORT_FORMATS_HELP
        parser.add_argument("session", metavar="SESSION", help="a session file")
        parser.add_argument("--format", choices=["json", "html", "text"], default="text",
                            help="the output format (see below; default text)")
        parser.add_argument("-o", "--output", metavar="PATH", help="write here, not stdout")
        parser.add_argument("--fail-on", choices=["low", "medium", "high"],
                            help="exit 3 when a flag of this severity or worse exists")
        parser.add_argument("--slo-ms", type=positive_float, default=None, metavar="MS",
                            help="latency objective (default: the session's, else 200)")
        add_config_option(parser)

    def run(self, args: argparse.Namespace) -> int:
        thresholds = resolve_thresholds(args.config)
        with SessionReader(args.session) as reader:
            data = load_session(reader)
        report = analyse(data, slo_ms=args.slo_ms, thresholds=thresholds)
        if args.format == "json":
            text = json.dumps(report.to_json(), indent=2) + "\n"
        elif args.format == "html":
            text = render_html(report, data)
        else:
            text = render_text(report)
        emit(text, args.output)
        if args.output:
            print(f"apiscope: report written to {args.output}", file=sys.stderr)
        if args.fail_on:
            failing = at_or_above(report.flags, args.fail_on)
            if failing:
                kinds = ", ".join(sorted({f.kind for f in failing}))
                raise BudgetExceeded(
                    f"{len(failing)} flag(s) at or above {args.fail_on} severity ({kinds}):"
                    " fix them, or relax --fail-on")
        return 0
