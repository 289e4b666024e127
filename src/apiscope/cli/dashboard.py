"""`apiscope dashboard SESSION`: replay a saved session in the web dashboard."""

from __future__ import annotations

import argparse

from apiscope.cli.base import port
from apiscope.errors import NotAvailableYet


class DashboardCommand:
    name = "dashboard"
    help = "serve the dashboard for a saved session, or a fleet view from Prometheus"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("session", nargs="?", metavar="SESSION", help="a session file")
        parser.add_argument("--host", default="127.0.0.1", help="listen address")
        parser.add_argument("--port", type=port, default=8050, help="listen port")
        parser.add_argument("--prometheus", metavar="URL",
                            help="show a fleet view read from this Prometheus server")

    def run(self, args: argparse.Namespace) -> int:
        raise NotAvailableYet("the dashboard is not built yet")
