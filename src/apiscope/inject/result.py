"""How the injected code reports back: a JSON status file beside the agent's socket.

The code runs in the target some time after the debugger has left, so the injector waits for
the file (with a deadline) instead of reading the debugger's output. A token in the file tells
this injection's answer from one left by an earlier run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from apiscope.inject.errors import InjectionFailed, InjectionTimeout

POLL_INTERVAL = 0.02


@dataclass(frozen=True)
class InjectionResult:
    """What an injection did in one process, as the target reported it."""

    pid: int
    action: str  # "attach" or "detach"
    method: str  # "ptrace", "gdb" or "remote_exec"
    status: dict[str, Any]  # the bootstrap's status (apps, socket, python, elapsed_ms, note)
    seconds: float  # the whole injection, from the first check to the status read back
    debugger_seconds: float  # the debugger's run: bounds how long the target was stopped
    # When the debugger runs began and the last one ended (time.time()): a refused attach is
    # tried again, so this can be longer than `debugger_seconds`. The target may have been
    # stopped at any moment of it.
    debugger_span: tuple[float, float] | None = None

    @property
    def apps(self) -> list[dict[str, Any]]:
        return list(self.status.get("apps") or [])

    @property
    def wrapped(self) -> int:
        """Apps the agent was put in front of by this call (0 when already there)."""
        return int(self.status.get("wrapped") or 0)

    @property
    def restored(self) -> int:
        """Apps whose own middleware stack a detach put back."""
        return int(self.status.get("restored") or 0)

    @property
    def socket(self) -> str | None:
        value = self.status.get("socket")
        return str(value) if value else None

    @property
    def note(self) -> str | None:
        value = self.status.get("note")
        return str(value) if value else None

    @property
    def main_thread_ms(self) -> float:
        """How long the target's main thread spent running our code (finding and wrapping)."""
        return float(self.status.get("elapsed_ms") or 0.0)


def result_path(directory: str, pid: int) -> str:
    return os.path.join(directory, f"inject-{pid}.json")


def read_result(path: str) -> dict[str, Any] | None:
    """The status in `path`, or None while it is missing (it is written atomically)."""
    try:
        with open(path, encoding="utf-8") as src:
            data = json.load(src)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InjectionFailed(f"unreadable injection status {path}: {exc}") from None
    return data if isinstance(data, dict) else None


def wait_for_result(path: str, token: str, pid: int, timeout: float, *,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep,
                    alive: Callable[[int], bool] = psutil.pid_exists) -> dict[str, Any]:
    """Poll for this injection's status until `timeout` seconds have passed."""
    deadline = clock() + timeout
    while True:
        status = read_result(path)
        if status is not None and status.get("token") == token:
            return status
        if not alive(pid):
            raise InjectionFailed(f"process {pid} exited before the agent reported back")
        if clock() > deadline:
            raise InjectionTimeout(
                f"process {pid} did not run the agent's loader within {timeout:.0f} s: its main"
                " thread has not reached a point where Python runs pending calls (it may be"
                " blocked in C code, or be unable to write to the agent's socket directory"
                f" {os.path.dirname(path)}). The call stays queued and may still run later;"
                f" `apiscope detach {pid}` removes the agent if it does")
        sleep(POLL_INTERVAL)
