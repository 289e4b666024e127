"""`apiscope attach PID`: profile a server that is already running."""

from __future__ import annotations

import argparse
import sys

from apiscope.cli.base import add_collect_options, positive_int
from apiscope.cli.collecting import check_report_path, collect
from apiscope.collectors.target import describe_target
from apiscope.errors import ApiscopeError


class AttachCommand:
    name = "attach"
    help = "attach to a running ASGI server process and profile it"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pid", type=positive_int, metavar="PID",
                            help="the server process (uvicorn, gunicorn master or worker)")
        add_collect_options(parser, inject=True)

    def run(self, args: argparse.Namespace) -> int:
        check_report_path(args)
        target = describe_target(args.pid)
        for note in target.notes:
            print(f"apiscope: {note}", file=sys.stderr)
        inject = not args.no_inject
        if inject:
            from apiscope.inject import eject_agent, inject_agent

            def injector(pid: int) -> None:
                result = inject_agent(pid)
                if not result.apps:
                    print(f"apiscope: warning: pid {pid} serves no ASGI app that apiscope can"
                          " find: no endpoints will be recorded (stacks and resources are)",
                          file=sys.stderr)

            def ejector(pid: int) -> None:
                try:
                    eject_agent(pid)
                except ApiscopeError:
                    pass

            collect(target, args, inject=True, injector=injector, ejector=ejector)
        else:
            collect(target, args, inject=False)
        return 0
