"""`apiscope attach PID`: profile a server that is already running."""

from __future__ import annotations

import argparse

from apiscope.cli.base import add_collect_options, positive_int
from apiscope.errors import NotAvailableYet


class AttachCommand:
    name = "attach"
    help = "attach to a running ASGI server process and profile it"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pid", type=positive_int, metavar="PID",
                            help="the server process (uvicorn, gunicorn master or worker)")
        add_collect_options(parser, inject=True)

    def run(self, args: argparse.Namespace) -> int:
        raise NotAvailableYet("attach is not built yet")
