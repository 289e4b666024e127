"""`apiscope demo`: the sample item API under load, profiled."""

from __future__ import annotations

import argparse

from apiscope.cli.base import add_collect_options
from apiscope.errors import NotAvailableYet


class DemoCommand:
    name = "demo"
    help = "run the bundled sample item API under load and profile it"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_collect_options(parser)
        parser.add_argument("--fixed", action="store_true",
                            help="run the sample app with its bottlenecks fixed")
        parser.add_argument("--no-browser", action="store_true",
                            help="do not open the dashboard in a browser")
        parser.add_argument("--workers", type=int, default=1,
                            help="run the sample app under gunicorn with this many workers")

    def run(self, args: argparse.Namespace) -> int:
        raise NotAvailableYet("demo is not built yet")
