"""The checks made before a debugger touches a process, and the version that picks the method."""

from __future__ import annotations

import re

import psutil

from apiscope.agent.paths import namespace_pid
from apiscope.collectors.proctree import FIND_SERVERS, SERVER_NAMES
from apiscope.collectors.target import check_ptrace, is_python, python_version
from apiscope.errors import TargetError

_VERSION = re.compile(r"^(\d+)\.(\d+)")


def check_target(pid: int) -> tuple[int, int] | None:
    """Raise TargetError unless `pid` is a CPython we may trace; its (major, minor) if known."""
    try:
        proc = psutil.Process(pid)
        if not is_python(proc):
            raise TargetError(_not_python(proc))
        check_ptrace(pid)
        return parse_version(python_version(proc))
    except psutil.NoSuchProcess:
        raise TargetError(f"no process with PID {pid}: check the PID; the server may have"
                          " exited") from None
    except psutil.AccessDenied:
        raise TargetError(f"permission denied reading process {pid}: run apiscope as root or as"
                          " the user that runs the server") from None


def parse_version(text: str) -> tuple[int, int] | None:
    match = _VERSION.match(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _not_python(proc: psutil.Process) -> str:
    head = f"PID {proc.pid} ({proc.name()}) is not a Python process"
    children = []
    for child in proc.children(recursive=True):
        try:
            if is_python(child):
                children.append(child.pid)
        except psutil.Error:
            continue
    if children:
        listing = ", ".join(str(pid) for pid in children[:5])
        return f"{head}; its Python child processes: {listing}. Give one of these PIDs"
    return f"{head}: give the PID of the {SERVER_NAMES} process (find it with {FIND_SERVERS})"


def agent_listening(pid: int, proc_root: str = "/proc") -> bool:
    """Whether `pid` serves an agent socket (`agent-<pid>.sock`), without touching it.

    Read from the Unix socket table of the process's own network namespace, so it holds for a
    server in a container too. When the table cannot be read, we cannot tell: say yes and let
    the injection find out.
    """
    name = f"/agent-{namespace_pid(pid, proc_root)}.sock"  # the pid it has in its container
    try:
        with open(f"{proc_root}/{pid}/net/unix", encoding="utf-8", errors="replace") as table:
            return any(line.rstrip().endswith(name) for line in table)
    except OSError:
        return True
