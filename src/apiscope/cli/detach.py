"""`apiscope detach PID`: remove an injected agent."""

from __future__ import annotations

import argparse

from apiscope.cli.base import positive_int
from apiscope.errors import NotAvailableYet


class DetachCommand:
    name = "detach"
    help = "remove an injected agent; the app keeps serving as before"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pid", type=positive_int, metavar="PID", help="the server process")

    def run(self, args: argparse.Namespace) -> int:
        raise NotAvailableYet("detach is not built yet")
