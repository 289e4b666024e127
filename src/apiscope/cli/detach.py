"""`apiscope detach PID`: remove an injected agent; the app keeps serving as before.

For a gunicorn master (or a uvicorn `--workers` supervisor) the agent lives in the workers, so
each worker is detached, and the master too in case it was injected on its own.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from apiscope.cli.base import positive_int
from apiscope.collectors.target import Target, describe_target
from apiscope.errors import ApiscopeError, TargetError, ToolMissingError
from apiscope.inject import InjectionResult, eject_agent
from apiscope.inject.target import agent_listening


class DetachCommand:
    name = "detach"
    help = "remove an injected agent; the app keeps serving as before"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pid", type=positive_int, metavar="PID",
                            help="the server process (uvicorn, gunicorn or granian master or"
                                 " worker, hypercorn, anycorn, daphne)")

    def run(self, args: argparse.Namespace) -> int:
        target = describe_target(args.pid)
        for note in target.notes:
            print(f"apiscope: {note}", file=sys.stderr)
        return 1 if detach_all(detach_pids(target)) else 0


def detach_pids(target: Target) -> list[int]:
    """The master (when there is one) first, then every worker."""
    pids = [target.master_pid] if target.master_pid is not None else []
    return pids + [pid for pid in target.pids if pid not in pids]


def detach_all(pids: list[int], out: TextIO | None = None) -> int:
    """Detach each process, saying what happened; returns how many could not be detached.

    A process without an agent socket is left untouched: no debugger is needed to know it has
    nothing to remove (and a supervisor whose main thread sleeps in C would never run our
    code). The first process's errors (no such PID, ptrace refused, gdb missing) are the
    user's to fix and propagate; a worker that exited meanwhile only gets a line.
    """
    out = out if out is not None else sys.stdout
    failures = 0
    for index, pid in enumerate(pids):
        if not agent_listening(pid):
            print(f"PID {pid}: no injected agent", file=out)
            continue
        try:
            result = eject_agent(pid)
        except (ToolMissingError, TargetError):
            if index == 0:
                raise
            print(f"PID {pid}: skipped (the worker is gone or cannot be traced)", file=out)
            continue
        except ApiscopeError as exc:
            print(f"PID {pid}: not detached: {exc.message}", file=out)
            failures += 1
            continue
        print(f"PID {pid}: {describe(result)}", file=out)
    return failures


def describe(result: InjectionResult) -> str:
    restored = [a["app"] for a in result.apps if a.get("state") == "restored"]
    changed = [a["app"] for a in result.apps if a.get("state") == "changed"]
    if changed:
        return (f"agent stopped; {len(changed)} app(s) had their middleware replaced after the"
                " agent was added, so that middleware was left in place")
    if restored:
        names = ", ".join(sorted(set(restored)))
        plural = "s" if len(restored) > 1 else ""
        return f"agent removed from {len(restored)} app{plural} ({names}); serving as before"
    return "no injected agent"
