"""`apiscope export SESSION`: a flamegraph of the session or a slice of it."""

from __future__ import annotations

import argparse

from apiscope.errors import NotAvailableYet


class ExportCommand:
    name = "export"
    help = "export a flamegraph (svg, speedscope, folded, html) of a session or a slice"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("session", metavar="SESSION", help="a session file")
        parser.add_argument("--format", choices=["svg", "speedscope", "folded", "html"],
                            required=True)
        parser.add_argument("-o", "--output", metavar="PATH", help="write here, not stdout")
        parser.add_argument("--route", help="only samples of this endpoint, e.g. 'GET /items/'")
        parser.add_argument("--pid", type=int, help="only this process")
        parser.add_argument("--thread", type=int, metavar="TID", help="only this thread")
        parser.add_argument("--since", metavar="T", help="seconds from start, or an ISO time")
        parser.add_argument("--until", metavar="T", help="seconds from start, or an ISO time")
        parser.add_argument("--idle", choices=["include", "exclude", "only"], default="include",
                            help="samples of threads waiting for work")
        parser.add_argument("--gil", choices=["any", "held", "not-held"], default="any")

    def run(self, args: argparse.Namespace) -> int:
        raise NotAvailableYet("export is not built yet")
