"""`apiscope run -- CMD ...`: start a server under apiscope."""

from __future__ import annotations

import argparse

from apiscope.cli.base import add_collect_options
from apiscope.errors import NotAvailableYet


class RunCommand:
    name = "run"
    help = "start an ASGI server command under apiscope, the agent active from the first request"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_collect_options(parser)
        parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                            help="the server command, e.g. -- uvicorn app:app")

    def run(self, args: argparse.Namespace) -> int:
        raise NotAvailableYet("run is not built yet")
