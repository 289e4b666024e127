"""Helpers that tie what apiscope starts to apiscope's own life, even after a `kill -9`.

A collector killed with SIGKILL runs no cleanup code. Two things must not outlive it: the
py-spy it drives (which keeps tracing the server) and the temporary directory py-spy writes
into. `die_with_parent` makes the kernel kill a child when its parent goes; `Reaper` leaves a
tiny process that removes a directory once our end of a pipe closes, which the kernel does
for us however we end.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess

PR_SET_PDEATHSIG = 1
# The reaper reads until EOF (our end closes when we exit, however we exit), then removes.
_REAP = 'cat >/dev/null; rm -rf -- "$0"'


def die_with_parent() -> None:
    """`preexec_fn` for a child that must not outlive us: SIGKILL when the forking thread
    ends (Linux `PR_SET_PDEATHSIG`; the threads that start py-spy outlive their py-spy)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: py-spy's own --duration bound still ends it


def interruptible() -> None:
    """`preexec_fn` for a child we stop with SIGINT (py-spy writes its window on it, gdb
    detaches): SIGINT back to its default action. A shell starts background jobs with SIGINT
    ignored, an ignored signal stays ignored across exec, and apiscope keeps it so for itself
    (`nohup` semantics), but its children must still stop when asked."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interruptible_and_tied() -> None:
    """`interruptible` and `die_with_parent`, for py-spy."""
    interruptible()
    die_with_parent()


class Reaper:
    """Removes `path` when this process ends, cleanly or not; `close()` after removing it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            # Its own session: a Ctrl-C at the terminal must not end it before we do.
            self._proc = subprocess.Popen(["sh", "-c", _REAP, path], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True)
        except OSError:
            self._proc = None  # no shell: the directory is still removed on a clean exit

    def close(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
