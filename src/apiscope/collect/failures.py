"""What went wrong during a collection, per process, kept in the session for the report.

A collection goes on through most failures: a sampling window py-spy did not write, one we
could not read, a py-spy start that had to be retried, an agent that answered a pull with an
error, an agent left in a process because its detach failed. Each is a fact about one process
that the user must be able to see after the run, in the end-of-run summary and in any later
`apiscope report`, so the log is stored in the session's meta (`target_failures`) as it
changes. Stack windows cover the process tree py-spy samples, so they are counted on the
process it attaches to (the master of a gunicorn, else the server).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from apiscope.collectors.injections import DetachFailure
from apiscope.collectors.samplerstats import SamplerStats

META_KEY = "target_failures"


@dataclass(slots=True)
class ProcessFailures:
    """One process's failures; only what happened is reported."""

    pid: int
    windows_dropped: int = 0  # py-spy ended without writing its window
    windows_failed: int = 0  # written but not readable
    window_failure: str | None = None  # the last unreadable window's error
    sampler_retries: int = 0  # py-spy starts that failed and were retried (no sample lost)
    sampling_stopped: str | None = None  # why sampling ended before the run did
    agent_errors: int = 0  # pulls the agent answered with an error
    agent_error: str | None = None  # the last of them, in the agent's words
    agent_internal_errors: int = 0  # the agent's own caught errors (its counter)
    watchdog_errors: int = 0  # the agent's loop/GIL watchdogs' caught errors
    detach_failed: str | None = None  # why the agent could not be taken out
    retry: str | None = None  # the command that retries the detach
    no_agent: str | None = None  # why no agent records the process's requests

    def as_dict(self) -> dict[str, Any]:
        """The report's entry: the pid and every field that is set."""
        out: dict[str, Any] = {"pid": self.pid}
        for name in self.__slots__:
            value = getattr(self, name)
            if name != "pid" and value:
                out[name] = value
        return out


class FailureLog:
    """Collects the failures of one run, per process (thread-safe: the sampler, the poller and
    the main thread all report)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_pid: dict[int, ProcessFailures] = {}
        self._version = 0  # bumped on every change, so the store writes only news
        self._stored = 0

    def _entry(self, pid: int) -> ProcessFailures:
        entry = self._by_pid.get(pid)
        if entry is None:
            entry = self._by_pid[pid] = ProcessFailures(pid)
        return entry

    def agent_error(self, pid: int, message: str) -> bool:
        """A pull the agent answered with an error; True for the first one of that process."""
        with self._lock:
            entry = self._entry(pid)
            entry.agent_errors += 1
            entry.agent_error = message
            self._version += 1
            return entry.agent_errors == 1

    def agent_counters(self, pid: int, *, internal: int, watchdog: int | None) -> None:
        """The agent's own cumulative error counters, as its last pull gave them."""
        with self._lock:
            entry = self._by_pid.get(pid)
            if entry is None and not internal and not watchdog:
                return
            entry = self._entry(pid)
            changed = (entry.agent_internal_errors, entry.watchdog_errors)
            entry.agent_internal_errors = max(entry.agent_internal_errors, internal)
            if watchdog is not None:
                entry.watchdog_errors = max(entry.watchdog_errors, watchdog)
            if changed != (entry.agent_internal_errors, entry.watchdog_errors):
                self._version += 1

    def sampler(self, pid: int, stats: SamplerStats, stopped: str | None = None) -> None:
        """The sampler's counts, on the process py-spy attaches to."""
        with self._lock:
            if not (stats.dropped_windows or stats.failed_windows or stats.launch_retries
                    or stopped or pid in self._by_pid):
                return
            entry = self._entry(pid)
            before = (entry.windows_dropped, entry.windows_failed, entry.window_failure,
                      entry.sampler_retries, entry.sampling_stopped)
            entry.windows_dropped = stats.dropped_windows
            entry.windows_failed = stats.failed_windows
            entry.window_failure = stats.last_failure
            entry.sampler_retries = stats.launch_retries
            entry.sampling_stopped = stopped or entry.sampling_stopped
            if before != (entry.windows_dropped, entry.windows_failed, entry.window_failure,
                          entry.sampler_retries, entry.sampling_stopped):
                self._version += 1

    def no_agent(self, reasons: Mapping[int, str]) -> None:
        """Why each process runs no agent, where injecting one failed."""
        with self._lock:
            for pid, why in reasons.items():
                entry = self._entry(pid)
                if entry.no_agent != why:
                    entry.no_agent = why
                    self._version += 1

    def detach_failed(self, failures: Iterable[DetachFailure]) -> None:
        with self._lock:
            for failure in failures:
                entry = self._entry(failure.pid)
                entry.detach_failed, entry.retry = failure.reason, failure.command
                self._version += 1

    def entries(self) -> list[dict[str, Any]]:
        """The report's `target.failures`: one entry per process with a failure, by pid."""
        with self._lock:
            found = [e.as_dict() for _, e in sorted(self._by_pid.items())]
        return [e for e in found if len(e) > 1]

    def news(self) -> list[dict[str, Any]] | None:
        """The entries when they changed since the last call, else None (for the store)."""
        with self._lock:
            if self._version == self._stored:
                return None
            self._stored = self._version
        return self.entries()


def failure_lines(entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """The end-of-run summary's lines about the agents, one per failure kind and process.

    Windows lost are summed up by the sampler's own line; detach failures get their warning
    when they happen (`detach_warning`).
    """
    lines = []
    for e in entries:
        pid = e["pid"]
        if e.get("agent_errors"):
            n = e["agent_errors"]
            lines.append(f"warning: the agent in PID {pid} answered {n} pull{'s' * (n != 1)}"
                         f" with an error (the last: {e.get('agent_error')}); what it answered"
                         " otherwise is kept")
        if e.get("agent_internal_errors") or e.get("watchdog_errors"):
            parts = []
            if e.get("agent_internal_errors"):
                parts.append(f"{e['agent_internal_errors']} in recording requests")
            if e.get("watchdog_errors"):
                parts.append(f"{e['watchdog_errors']} in its loop and GIL watchdogs")
            lines.append(f"warning: the agent in PID {pid} caught errors of its own"
                         f" ({', '.join(parts)}); no request saw them")
        if e.get("sampling_stopped"):
            lines.append(f"warning: stack sampling of PID {pid} stopped before the end:"
                         f" {e['sampling_stopped']}")
        if e.get("sampler_retries"):
            n = e["sampler_retries"]
            lines.append(f"py-spy failed to start {n} time{'s' * (n != 1)} on PID {pid} and"
                         " was retried (the running one kept sampling)")
    return lines


def detach_warning(pid: int, reason: str, retry: str) -> str:
    """The warning for an agent left in a process: the PID and the command that retries."""
    return (f"warning: the agent in PID {pid} could not be detached ({reason}); retry with:"
            f" {retry}")
