"""Running a debugger with a hard deadline, without ever leaving the target stopped.

A debugger killed outright while it has the target stopped (or is in the middle of calling a
function in it) can leave breakpoints or a half-finished call behind, which would crash the
server. So at the deadline we first interrupt it (SIGINT: gdb stops what it is doing, unwinds
any call it made and detaches cleanly) and only kill it if it ignores that too.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from apiscope.lifetime import interruptible

INTERRUPT_GRACE = 5.0  # seconds a debugger gets to detach after SIGINT


@dataclass(frozen=True)
class RunResult:
    """What a debugger run printed (stdout and stderr together) and how it ended."""

    returncode: int
    output: str
    timed_out: bool
    seconds: float


# (argv, timeout in seconds) -> RunResult; tests pass their own.
Runner = Callable[[Sequence[str], float], RunResult]


def run_with_deadline(argv: Sequence[str], timeout: float) -> RunResult:
    """Run `argv`, interrupting it at `timeout` seconds and killing it if it will not stop.

    Raises FileNotFoundError when the program does not exist.
    """
    started = time.monotonic()
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=interruptible)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        out = _interrupt(proc)
    return RunResult(returncode=proc.returncode, output=out.decode(errors="replace"),
                     timed_out=timed_out, seconds=time.monotonic() - started)


def _interrupt(proc: subprocess.Popen[bytes]) -> bytes:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=INTERRUPT_GRACE)
        return out
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return out
