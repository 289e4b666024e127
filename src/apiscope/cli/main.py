"""Entry point: parse the subcommand and run it, mapping expected errors to exit codes."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence

from apiscope import __version__
from apiscope.cli.attach import AttachCommand
from apiscope.cli.base import Command
from apiscope.cli.dashboard import DashboardCommand
from apiscope.cli.demo import DemoCommand
from apiscope.cli.detach import DetachCommand
from apiscope.cli.diff import DiffCommand
from apiscope.cli.dump import DumpCommand
from apiscope.cli.export import ExportCommand
from apiscope.cli.report import ReportCommand
from apiscope.cli.run import RunCommand
from apiscope.errors import ApiscopeError

COMMANDS: list[Command] = [
    AttachCommand(),
    RunCommand(),
    DemoCommand(),
    DashboardCommand(),
    ReportCommand(),
    ExportCommand(),
    DiffCommand(),
    DetachCommand(),
    DumpCommand(),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apiscope",
        description="Profile a running ASGI API server per endpoint, without a restart.",
    )
    parser.add_argument("--version", action="version", version=f"apiscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command_parser = sub.add_parser(command.name, help=command.help,
                                        description=command.help)
        command.prepare_parser(command_parser)
        command_parser.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage message on bad input
    try:
        return int(args.run(args))
    except ApiscopeError as exc:
        print(f"apiscope: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("apiscope: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours; the command has already detached and closed
        print(f"apiscope: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        where = _save_traceback(exc)
        if where is None:
            traceback.print_exception(exc, file=sys.stderr)
        else:
            print(f"apiscope: the details are in {where}: please attach them to a bug report",
                  file=sys.stderr)
        return 1


def _save_traceback(exc: BaseException) -> str | None:
    """Write the traceback to a new file private to the user (it may name the target's files);
    its path, or None when it could not be written."""
    try:
        fd, path = tempfile.mkstemp(prefix="apiscope-error-", suffix=".txt")
        with os.fdopen(fd, "w") as out:
            out.write(f"apiscope {__version__}, Python {sys.version.split()[0]}\n")
            out.write(f"command: apiscope {' '.join(sys.argv[1:])}\n\n")
            traceback.print_exception(exc, file=out)
    except OSError:
        return None
    return path


def entry() -> None:
    sys.exit(main())
