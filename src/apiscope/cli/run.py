"""`apiscope run -- CMD ...`: start a server under apiscope, the agent present from the start."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from apiscope.cli.base import add_collect_options
from apiscope.cli.collecting import check_report_path, collect
from apiscope.collectors.target import Target, describe_target
from apiscope.errors import TargetError, UsageError

AUTOSTART_DIR = Path(__file__).resolve().parent.parent / "autostart"
AGENT_INIT = Path(__file__).resolve().parent.parent / "agent" / "__init__.py"


def agent_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a Python server load the agent at start-up."""
    env = dict(os.environ if base is None else base)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(AUTOSTART_DIR) + (os.pathsep + path if path else "")
    env["APISCOPE_AGENT_INIT"] = str(AGENT_INIT)
    env["APISCOPE_COLLECTOR_PID"] = str(os.getpid())  # its sampler may trace the server (Yama)
    return env


def start_server(cmd: list[str], env: dict[str, str] | None = None,
                 log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """Start the server with the agent; its output goes to `log` when given, else ours.

    The server gets a session of its own: a Ctrl-C at the terminal reaches apiscope alone,
    which ends the collection first and then stops the server.
    """
    try:
        return subprocess.Popen(cmd, env=agent_environment(env), stdout=log, stderr=log,
                                start_new_session=True)
    except FileNotFoundError:
        raise UsageError(f"cannot run {cmd[0]!r}: no such program") from None
    except PermissionError:
        raise UsageError(f"cannot run {cmd[0]!r}: permission denied") from None


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def describe_started(proc: subprocess.Popen[bytes]) -> Target:
    """The target of a server apiscope just started, or a clear error if it already ended."""
    try:
        return describe_target(proc.pid)
    except TargetError:
        if proc.poll() is not None:
            raise UsageError(f"the server command exited with code {proc.returncode} before"
                             " it could be profiled: run it alone to see why") from None
        raise


class RunCommand:
    name = "run"
    help = "start an ASGI server command under apiscope, the agent active from the first request"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_collect_options(parser)
        parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                            help="the server command, e.g. -- uvicorn app:app")

    def run(self, args: argparse.Namespace) -> int:
        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            raise UsageError("no server command given: apiscope run -- uvicorn app:app")
        check_report_path(args)
        proc = start_server(cmd)
        print(f"apiscope: started {shlex.join(cmd)} (pid {proc.pid})", file=sys.stderr)
        try:
            target = describe_started(proc)
            # The agent loads itself at start-up (agent_environment): nothing to inject.
            collected = collect(target, args, inject=True)
        finally:
            stop_server(proc)
        return collected.exit_code
