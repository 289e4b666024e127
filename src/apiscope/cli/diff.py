"""`apiscope diff BASE NEW`: compare two sessions."""

from __future__ import annotations

import argparse

from apiscope.errors import NotAvailableYet


class DiffCommand:
    name = "diff"
    help = "compare two sessions: latency changes, new and removed flags, a differential flamegraph"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("base", metavar="BASE", help="the earlier session file")
        parser.add_argument("new", metavar="NEW", help="the later session file")
        parser.add_argument("--format", choices=["text", "json", "svg"], default="text")
        parser.add_argument("-o", "--output", metavar="PATH", help="write here, not stdout")

    def run(self, args: argparse.Namespace) -> int:
        raise NotAvailableYet("diff is not built yet")
