"""`apiscope diff BASE NEW`: compare two sessions."""

from __future__ import annotations

import argparse
import json

from apiscope.analysis.diff import diff_reports, render_diff_text
from apiscope.analysis.report import analyse, load_session
from apiscope.analysis.thresholds import resolve_thresholds
from apiscope.cli.base import add_config_option
from apiscope.cli.report import emit
from apiscope.exporters.diff import render_diff_svg
from apiscope.exporters.report import active_stacks
from apiscope.exporters.tree import build_tree
from apiscope.store.reader import SessionReader


class DiffCommand:
    name = "diff"
    help = "compare two sessions: latency changes, new and removed flags, a differential flamegraph"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("base", metavar="BASE", help="the earlier session file")
        parser.add_argument("new", metavar="NEW", help="the later session file")
        parser.add_argument("--format", choices=["text", "json", "svg"], default="text")
        parser.add_argument("-o", "--output", metavar="PATH", help="write here, not stdout")
        add_config_option(parser)

    def run(self, args: argparse.Namespace) -> int:
        # Both sessions are judged by the same thresholds: a flag appears or goes away because
        # the app changed, not the rules.
        thresholds = resolve_thresholds(args.config)
        with SessionReader(args.base) as base_reader, SessionReader(args.new) as new_reader:
            base, new = load_session(base_reader), load_session(new_reader)
        if args.format == "svg":
            text = render_diff_svg(build_tree(active_stacks(base)), build_tree(active_stacks(new)),
                                   title=f"apiscope diff: {args.base} -> {args.new}")
        else:
            diff = diff_reports(analyse(base, thresholds=thresholds),
                                analyse(new, thresholds=thresholds))
            text = (json.dumps(diff.to_json(), indent=2) + "\n" if args.format == "json"
                    else render_diff_text(diff))
        emit(text, args.output)
        return 0
