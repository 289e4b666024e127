"""`apiscope report SESSION`: the analysis of a session."""

from __future__ import annotations

import argparse

from apiscope.errors import NotAvailableYet


class ReportCommand:
    name = "report"
    help = "analyse a session: endpoints, processes and flagged bottlenecks"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("session", metavar="SESSION", help="a session file")
        parser.add_argument("--format", choices=["json", "html", "text"], default="text")
        parser.add_argument("-o", "--output", metavar="PATH", help="write here, not stdout")
        parser.add_argument("--fail-on", choices=["low", "medium", "high"],
                            help="exit 3 when a flag of this severity or worse exists")
        parser.add_argument("--slo-ms", type=float, default=None,
                            help="latency objective (default: the session's, else 200)")

    def run(self, args: argparse.Namespace) -> int:
        raise NotAvailableYet("report is not built yet")
