"""`apiscope dashboard SESSION`: replay a saved session in the web dashboard."""

from __future__ import annotations

import argparse
import sys

from apiscope.cli.base import port
from apiscope.errors import UsageError


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
        if args.prometheus and args.session:
            raise UsageError("give a SESSION to replay or --prometheus URL for the fleet view,"
                             " not both")
        if not args.session and not args.prometheus:
            raise UsageError("give the session file to replay: apiscope dashboard SESSION"
                             " (or --prometheus URL for the fleet view)")
        # Imported here: Dash and Plotly take a moment to load and other commands never need them.
        from apiscope.dashboard import create_app, serve

        if args.prometheus:
            from apiscope.fleet import create_fleet_app

            app = create_fleet_app(args.prometheus)  # an unreachable server exits 2
            what = f"fleet view of {args.prometheus}"
        else:
            app = create_app(args.session, live=False)
            what = f"dashboard for {args.session}"
        from apiscope.dashboard.access import new_token, require_token, url_with_token

        token = new_token()  # the session's data, private to whoever holds the URL
        if token is not None:
            require_token(app.server, token)
        url = url_with_token(f"http://{args.host}:{args.port}/", token)
        print(f"apiscope: {what} at {url} (Ctrl-C to stop)", file=sys.stderr)
        try:
            serve(app, args.host, args.port)
        except KeyboardInterrupt:
            pass
        return 0
