"""`apiscope dashboard SESSION`: replay a saved session in the web dashboard."""

from __future__ import annotations

import argparse
import sys

from apiscope.cli.base import port
from apiscope.errors import NotAvailableYet, UsageError


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
        if args.prometheus:
            raise NotAvailableYet(
                "the fleet view (--prometheus) is not available yet: replay a saved session"
                " with `apiscope dashboard SESSION`")
        if not args.session:
            raise UsageError("give the session file to replay: apiscope dashboard SESSION")
        # Imported here: Dash and Plotly take a moment to load and other commands never need them.
        from apiscope.dashboard import create_app, serve

        app = create_app(args.session, live=False)
        print(f"apiscope: dashboard for {args.session} at http://{args.host}:{args.port}/"
              " (Ctrl-C to stop)", file=sys.stderr)
        try:
            serve(app, args.host, args.port)
        except KeyboardInterrupt:
            pass
        return 0
