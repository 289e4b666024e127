"""Scheduling the snippet with `sys.remote_exec` (PEP 768), for targets on Python 3.14+.

CPython 3.14 can run a script in another interpreter at its next safe point without a debugger.
`sys.remote_exec` must come from the same Python version as the target's, so we run the target's
own executable (`/proc/PID/exe`, the very file it runs) for that one call; `-I` keeps that
helper process clear of the environment's site-packages and PYTHON* variables.
"""

from __future__ import annotations

import os

from apiscope.errors import TargetError
from apiscope.inject.errors import InjectionFailed
from apiscope.inject.runner import RunResult
from apiscope.permissions import PTRACE_FIXES

REMOTE_EXEC_VERSION = (3, 14)


def remote_script_path(directory: str, pid: int) -> str:
    return os.path.join(directory, f"inject-{pid}.py")


def write_script(path: str, snippet: str, owner: int | None = None) -> None:
    """The script file `sys.remote_exec` reads: 0600, because the target runs what it says;
    given to `owner` (another user's target, which must read it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    if owner is not None:
        os.fchown(fd, owner, -1)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(snippet)


def remote_exec_argv(pid: int, script: str) -> list[str]:
    call = f"import sys; sys.remote_exec({pid}, {script!r})"
    return [f"/proc/{pid}/exe", "-I", "-c", call]


def check_remote_exec(pid: int, run: RunResult) -> None:
    """Raise the error that explains a failed `sys.remote_exec`; return when it was queued."""
    if run.returncode == 0 and not run.timed_out:
        return
    out = run.output
    if "PermissionError" in out or "Operation not permitted" in out:
        raise TargetError(f"not allowed to run code in PID {pid} (ptrace refused)."
                          f" Fix one of: {PTRACE_FIXES}")
    if "ProcessLookupError" in out or "No such process" in out:
        raise TargetError(f"no process with PID {pid}: the server may have exited")
    if "disabled" in out:
        raise TargetError(f"PID {pid} has remote debugging disabled (PYTHON_DISABLE_REMOTE_DEBUG,"
                          " -X disable-remote-debug, or a build without it): restart it without"
                          " that setting, or use `instrument(app)` in code")
    last = out.strip().splitlines()[-1:] or ["(no output)"]
    raise InjectionFailed(f"sys.remote_exec could not schedule the agent in PID {pid}: {last[0]}")
