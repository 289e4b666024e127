"""`apiscope attach PID`: profile a server that is already running."""

from __future__ import annotations

import argparse
import os
import sys

from apiscope.cli.base import add_collect_options, positive_int
from apiscope.cli.collecting import check_report_path, collect
from apiscope.collectors.injections import AgentInjections
from apiscope.collectors.target import describe_target

# Seconds without a pull after which an injected agent decides its collector is gone and
# removes itself (`apiscope.agent.orphan`); told to the agent with every pull.
ORPHAN_SECONDS = 10.0


def orphan_seconds() -> float:
    """`$APISCOPE_ORPHAN_SECONDS` (tests shorten it), else ORPHAN_SECONDS."""
    try:
        value = float(os.environ.get("APISCOPE_ORPHAN_SECONDS", ORPHAN_SECONDS))
    except ValueError:
        return ORPHAN_SECONDS
    return value if value > 0 else ORPHAN_SECONDS


def print_warning(message: str) -> None:
    print(f"\napiscope: warning: {message}", file=sys.stderr)


class AttachCommand:
    name = "attach"
    help = "attach to a running ASGI server process and profile it"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pid", type=positive_int, metavar="PID",
                            help="the server process (uvicorn, gunicorn or granian master or"
                                 " worker, hypercorn, anycorn, daphne)")
        add_collect_options(parser, inject=True)

    def run(self, args: argparse.Namespace) -> int:
        check_report_path(args)
        target = describe_target(args.pid)
        for note in target.notes:
            print(f"apiscope: {note}", file=sys.stderr)
        if args.no_inject:
            return collect(target, args, inject=False).exit_code
        from apiscope.inject import eject_agent, inject_agent

        injections = AgentInjections(inject_agent, eject_agent, print_warning,
                                     orphan_seconds=orphan_seconds())
        # 1 when an agent could not be detached: warned about, with the command that retries.
        return collect(target, args, inject=True, injections=injections).exit_code
