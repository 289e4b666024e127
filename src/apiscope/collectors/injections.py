"""The agent's injections during one collection: started in the background, retried while a
worker has no app yet, and every one taken out again at the end.

Injecting one process takes a debugger run and then a wait for the target's main thread to
reach a safe point: up to seconds, or never for a main thread busy in C code. So each process
gets its own thread and sampling never waits for them; a worker whose injection is pending is
sampled meanwhile. A worker injected before its app is loaded (just forked, or after a HUP)
answers "no app" and is tried again a few times before that is believed.

`close()` detaches every process an injection was started in, whenever it appeared (workers
recycled by `--max-requests` or a `kill -HUP` of the master included), and returns the ones
that could not be detached, with the command that retries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from apiscope.collectors.pyspy import main_thread_site
from apiscope.collectors.spy import target_alive
from apiscope.errors import ApiscopeError
from apiscope.inject.errors import InjectionFailed, InjectionTimeout
from apiscope.inject.result import InjectionResult

# Seconds between the tries of a worker that has no app yet: about 15 s in all. A worker
# recycled under load (gunicorn's --max-requests) serves unrecorded until one succeeds, and
# loads its app 1-3 s after it starts: tries 0.25-1 s apart in those first seconds.
RETRY_DELAYS = (0.25, 0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0)
PENDING_GRACE = 3.0  # at the end, how long to wait for an injection still in flight

Inject = Callable[[int], InjectionResult]
Warn = Callable[[str], None]


@dataclass(frozen=True)
class DetachFailure:
    pid: int
    reason: str

    @property
    def command(self) -> str:
        return f"apiscope detach {self.pid}"


class AgentInjections:
    """Injects the agent into each process given to `add()`; `close()` detaches them all."""

    def __init__(self, inject: Inject, eject: Inject, warn: Warn, *,
                 alive: Callable[[int], bool] = target_alive,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS,
                 orphan_seconds: float | None = None,
                 where: Callable[[int], str | None] = main_thread_site) -> None:
        self._inject = inject
        self._where = where  # where a process's main thread is (when it runs no loader)
        self._eject = eject
        self._warn = warn
        self._alive = alive
        self._retry_delays = retry_delays
        self.orphan_seconds = orphan_seconds  # told to the agents with every pull
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._started: set[int] = set()  # every process an injection was started in
        self._serving: set[int] = set()  # processes whose agent wraps an app
        self._servers: set[str] = set()  # the servers whose apps the agents wrapped
        self._threads: dict[int, threading.Thread] = {}
        self._pauses: list[tuple[float, float]] = []
        self._missing: dict[int, str] = {}

    @property
    def started(self) -> set[int]:
        with self._lock:
            return set(self._started)

    @property
    def serving(self) -> set[int]:
        with self._lock:
            return set(self._serving)

    @property
    def servers(self) -> set[str]:
        """The servers ("uvicorn", ...) whose apps the agents found and wrapped: the server a
        program that runs one in-process (`dagster-webserver`, `datasette`) really is."""
        with self._lock:
            return set(self._servers)

    @property
    def pauses(self) -> list[tuple[float, float]]:
        """(start, end) of each debugger run in a target (time.time()): the process may
        have been stopped then, and py-spy's reads of it failed."""
        with self._lock:
            return list(self._pauses)

    def pending(self) -> set[int]:
        """Processes whose injection is still in flight."""
        with self._lock:
            return {pid for pid, t in self._threads.items() if t.is_alive()}

    def add(self, pid: int) -> None:
        """Inject `pid` in the background (once: a second call is a no-op)."""
        with self._lock:
            if pid in self._started or self._closing.is_set():
                return
            self._started.add(pid)
            thread = threading.Thread(target=self._inject_until_served, args=(pid,),
                                      name=f"apiscope-inject-{pid}", daemon=True)
            self._threads[pid] = thread
        thread.start()

    def wait(self, timeout: float) -> bool:
        """Wait until no injection is in flight; True when none is."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not self.pending()

    def close(self, grace: float = PENDING_GRACE) -> list[DetachFailure]:
        """Stop injecting, detach every process injected, return the ones that failed."""
        self._closing.set()
        self.wait(grace)
        for pid in sorted(self.pending()):
            self._warn(f"the injection into PID {pid} is still pending (its main thread has"
                       " not run Python code since): if it runs later, the agent removes itself"
                       " once no collector pulls from it; `apiscope detach"
                       f" {pid}` removes it at once")
        targets = sorted(pid for pid in self.started - self.pending() if self._alive(pid))
        failures: list[DetachFailure] = []
        threads = [threading.Thread(target=self._detach, args=(pid, failures), daemon=True)
                   for pid in targets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sorted(failures, key=lambda f: f.pid)

    def _paused(self, span: tuple[float, float] | None) -> None:
        """Keep the span of a debugger run, whether the injection it made worked or not."""
        if span is not None:
            with self._lock:
                self._pauses.append(span)

    def _detach(self, pid: int, failures: list[DetachFailure]) -> None:
        try:
            self._paused(self._eject(pid).debugger_span)
        except ApiscopeError as exc:
            if isinstance(exc, InjectionFailed):
                self._paused(exc.debugger_span)
            if self._alive(pid):  # a worker that exited meanwhile took its agent along
                with self._lock:
                    failures.append(DetachFailure(pid, exc.message))
        except Exception as exc:  # whatever went wrong, the user must learn of this pid
            with self._lock:
                failures.append(DetachFailure(pid, f"{type(exc).__name__}: {exc}"))

    def _without(self, pid: int, why: str, warning: str) -> None:
        """Warn that `pid` runs no agent (`warning`, then why), and keep why for the report
        (`missing`)."""
        with self._lock:
            self._missing[pid] = why
        self._warn(f"{warning}: {why}")

    @property
    def missing(self) -> dict[int, str]:
        """Why each process the agent was not started in (or found no app in) runs none."""
        with self._lock:
            return dict(self._missing)

    def _inject_until_served(self, pid: int) -> None:
        delays = iter(self._retry_delays)
        while not self._closing.is_set():
            try:
                result = self._inject(pid)
                self._paused(result.debugger_span)
            except InjectionTimeout as exc:
                self._paused(exc.debugger_span)
                site = self._where(pid)
                self._without(pid, exc.message + (f". Its main thread is at {site}" if site
                                                   else ""), f"no latencies from pid {pid} yet")
                return
            except ApiscopeError as exc:
                if isinstance(exc, InjectionFailed):
                    self._paused(exc.debugger_span)
                if self._alive(pid):
                    self._without(pid, exc.message, f"no latencies from pid {pid}")
                return
            if result.apps:
                with self._lock:
                    self._serving.add(pid)
                    self._servers.update(str(app["server"]) for app in result.apps
                                         if isinstance(app, dict) and app.get("server"))
                return
            delay = next(delays, None)
            if delay is None or not self._alive(pid):
                if self._alive(pid):
                    self._without(pid, "it serves no ASGI app that apiscope can find"
                                  + (f" ({result.note})" if result.note else ""),
                                  f"no endpoints will be recorded from pid {pid} (stacks and"
                                  " resources are)")
                return
            if self._closing.wait(delay):
                return
