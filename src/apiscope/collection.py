"""One collecting run: stack sampling, agent pulls and resources, written to a session file.

`Collection` wires the collectors to the session writer and the metrics, and decides when the
run ends (duration over, Ctrl-C or another stop signal, every target process gone, or the
session file no longer writable). The CLI commands `attach`, `run` and `demo` build one and
call `run_until_done()`; `close_agents()` then detaches every agent injected on the way.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import psutil

from apiscope.collectors.agent_client import AgentBatch, AgentClient, WatchdogReport
from apiscope.collectors.budget import OverheadBudget
from apiscope.collectors.injections import AgentInjections, DetachFailure
from apiscope.collectors.resources import ResourceCollector
from apiscope.collectors.stacks import (
    EndReason,
    SamplerStats,
    StackSampler,
    target_stopped,
    window_loss,
)
from apiscope.collectors.target import Target
from apiscope.errors import ApiscopeError, TargetError
from apiscope.metrics import MetricsExporter
from apiscope.model import SampleState, StackWindow, ThreadRole
from apiscope.store import SessionWriter


@dataclass
class CollectOptions:
    rate_hz: int = 100
    duration: float | None = None
    nonblocking: bool = False
    inject: bool = True  # an agent is expected (injected, or loaded by `run`)
    slo_ms: float = 200.0
    max_overhead: float = 2.0  # percent of the target's capacity; 0: always sample at rate_hz
    window_seconds: float = 1.0
    poll_seconds: float = 0.5
    progress_seconds: float = 1.0  # how often the session's end time moves forward
    # 0 (--quiet): warnings only, no status line; 1: the status line; 2 (--verbose): also a
    # line per sampling window and per agent pull that returned something.
    verbosity: int = 1


@dataclass
class Totals:
    """Running counts for the status line and the end-of-run summary (the sampler keeps its
    own: `sampler_stats`)."""

    requests: int = 0
    agent_dropped: int = 0
    warnings: list[str] = field(default_factory=list)


class Collection:
    """Collects from one target into one session until told to stop or the target is gone."""

    def __init__(self, target: Target, writer: SessionWriter, options: CollectOptions,
                 metrics: MetricsExporter | None = None,
                 injections: AgentInjections | None = None,
                 status: TextIO | None = sys.stderr,
                 clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self.writer = writer
        self.options = options
        self.metrics = metrics or MetricsExporter()
        self.injections = injections
        self.detach_failures: list[DetachFailure] = []
        self.storage_failure: str | None = None  # why the session could not be written
        self.status = status
        self.clock = clock
        self.totals = Totals()
        self.started = clock()
        self.target_gone = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._clients: dict[int, AgentClient] = {}
        self._routes_seen: dict[int, int] = {}
        self._watchdog_cpu: dict[str, float] = {}  # the agents' watchdogs' own CPU, by pid
        self._exited: set[int] = set()
        self._gaps_stored = 0
        self._agents_closed = False
        self._stopped = False
        self._running = False  # set once start() has started the sampler
        self._resources = ResourceCollector(target)
        self._sampler = StackSampler(
            target.sample_pid, rate_hz=options.rate_hz, subprocesses=target.master_pid is not None,
            nonblocking=options.nonblocking, window_seconds=options.window_seconds,
            on_window=self._on_window, budget=self._budget(options),
            agent_cpu=lambda: sum(self._watchdog_cpu.values()))
        self._poller = threading.Thread(target=self._poll_loop, name="apiscope-poller",
                                        daemon=True)

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        t = self.target
        self.writer.set_meta(
            command=t.command, pids=t.pids, server=t.server, python=t.python_version,
            target_pid=t.pid, master_pid=t.master_pid, rate_hz=self.options.rate_hz,
            slo_ms=self.options.slo_ms, start=self.started, nonblocking=self.options.nonblocking,
            inject=self.options.inject)
        for info in t.processes:
            self.writer.put_process(info)
        # Sampling first, at once; the injections follow in the background (`injections`).
        try:
            self._sampler.start()
        except TargetError:
            if target_stopped(t.sample_pid):  # py-spy's own error would blame a wrapper
                raise TargetError(f"process {t.sample_pid} is stopped (SIGSTOP, a debugger or"
                                  " a frozen cgroup): nothing runs there to sample. Continue it"
                                  f" (`kill -CONT {t.sample_pid}`) and attach again") from None
            raise
        self._poller.start()
        self._running = True
        for pid in t.pids:
            self._add_worker(pid)

    def request_stop(self) -> None:
        """End the run as Ctrl-C does (safe from a signal handler: it only sets a flag)."""
        self._stop.set()

    @staticmethod
    def _budget(options: CollectOptions) -> OverheadBudget | None:
        if options.max_overhead <= 0:
            return None
        return OverheadBudget(options.max_overhead / 100, options.rate_hz)

    @property
    def sampler_stats(self) -> SamplerStats:
        """The sampler's own account of stored, expected and failed samples."""
        return self._sampler.stats

    def stop(self) -> None:
        """End sampling and polling, pull the agents one last time, store the end (once)."""
        self._stop.set()
        if self._stopped or not self._running:
            return  # stopped already, or start() failed before anything ran
        self._stopped = True
        try:
            self._sampler.stop()
        finally:
            self._poller.join(timeout=10)
            self._pull_agents()  # what the agents recorded since the last pull
            for client in self._clients.values():
                client.close()
            end = self.clock()
            stats = self._sampler.stats
            self._store_gaps()
            self.writer.set_meta(end=end, samples_total=stats.stored,
                                 samples_errors=stats.errors,
                                 samples_expected=round(stats.expected),
                                 sample_loss=round(stats.loss, 4),
                                 windows_dropped=stats.dropped_windows,
                                 max_overhead=self.options.max_overhead,
                                 overhead=self._overhead(),
                                 windows_failed=stats.failed_windows,
                                 agent_dropped=self.totals.agent_dropped)
            if self.storage_failure is None:
                self.writer.flush()

    def close_agents(self) -> list[DetachFailure]:
        """Detach every process an agent was injected in (once); returns the failures, also
        stored in the session (`detach_failed`) for the report."""
        if self._agents_closed:
            return self.detach_failures
        self._agents_closed = True
        if self.injections is not None:
            self.detach_failures = self.injections.close()
            if self.detach_failures:
                self.writer.set_meta(detach_failed=[
                    {"pid": f.pid, "reason": f.reason, "retry": f.command}
                    for f in self.detach_failures])
        for pid in self._exited | (self.injections.started if self.injections else set()):
            if not psutil.pid_exists(pid):
                remove_stale_socket(pid)
        return self.detach_failures

    def run_until_done(self) -> None:
        """Block until the duration is over, Ctrl-C, or the target exits; then stop."""
        deadline = None if self.options.duration is None else self.started + self.options.duration
        next_progress = 0.0
        try:
            while not self._stop.is_set():
                if deadline is not None and self.clock() >= deadline:
                    break
                if self.target_gone or self._sampler_says_gone():
                    self.target_gone = True
                    break
                if self._storage_failed():
                    break
                if time.monotonic() >= next_progress:
                    next_progress = time.monotonic() + self.options.progress_seconds
                    self._store_progress()
                self._print_status()
                self._stop.wait(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self._print_status(final=True)
            self.stop()

    # -- collectors -----------------------------------------------------------------------------

    def _storage_failed(self) -> bool:
        failure = self.writer.failure
        if failure is not None and self.storage_failure is None:
            self.storage_failure = failure
            self._warn(f"the session file can no longer be written ({failure}): stopping;"
                       " what was written before stays readable")
        return failure is not None

    def _store_progress(self) -> None:
        """Keep the stored end time and gaps current: a session cut short by a full disk or a
        kill -9 still says how far it got."""
        self._store_gaps()
        self.writer.set_meta(end=self.clock())

    def _store_gaps(self) -> None:
        gaps = list(self._sampler.stats.gaps)
        if len(gaps) != self._gaps_stored:
            self._gaps_stored = len(gaps)
            self.writer.set_meta(gaps=[{"start": start, "end": end, "reason": reason}
                                       for start, end, reason in gaps])

    def _sampler_says_gone(self) -> bool:
        reason = self._sampler.end_reason
        if reason is EndReason.FAILED:
            self._warn(f"stack sampling stopped: {self._sampler.error}")
        return reason is EndReason.TARGET_EXITED

    def _add_worker(self, pid: int) -> None:
        self._clients[pid] = AgentClient(pid)
        if self.options.inject and self.injections is not None:
            self.injections.add(pid)  # in the background: sampling goes on meanwhile

    def _on_window(self, window: StackWindow) -> None:
        self.writer.put_window(window)
        loss = window_loss(window)
        dropped = max(0, int(loss.expected) - loss.stored - loss.errors)
        self.metrics.observe_samples(loss.stored, loss.errors, dropped=dropped)
        blocked: dict[int, int] = {}
        for s in window.samples:
            role = window.threads.get((s.pid, s.tid), ThreadRole.OTHER)
            if role is ThreadRole.LOOP and s.state is not SampleState.WAITING:
                blocked[s.pid] = blocked.get(s.pid, 0) + s.count
        for pid, count in blocked.items():
            self.metrics.observe_loop_blocked(pid, count / window.rate_hz)
        if self.options.verbosity >= 2:
            stats = self.sampler_stats
            self._detail(f"window {window.end - self.started:6.1f}s  rate {window.rate_hz} Hz"
                         f"  samples {loss.stored} of {loss.expected:.0f} expected"
                         f"  errors {loss.errors}  windows lost"
                         f" {stats.dropped_windows + stats.failed_windows}")

    def _poll_loop(self) -> None:
        next_resources = 0.0
        while not self._stop.wait(self.options.poll_seconds):
            try:
                self._pull_agents()
                now = time.monotonic()
                if now >= next_resources:
                    next_resources = now + 1.0
                    self._collect_resources()
            except Exception as exc:  # a collector failing must not end the run silently
                self._warn(f"collector error: {exc}")

    def _collect_resources(self) -> None:
        samples = self._resources.collect()
        self.writer.put_resources(samples)
        self.metrics.observe_resources(samples)
        changes = self._resources.refresh()
        for info in changes.new:
            self.writer.put_process(info)
            self._add_worker(info.pid)
        for pid in changes.exited:
            self.writer.mark_exited(pid, self.clock())
            self.metrics.forget_process(pid)
            self._exited.add(pid)
            client = self._clients.pop(pid, None)
            if client is not None:
                client.close()
            remove_stale_socket(pid)  # a worker that exits with os._exit leaves its socket
        if not self._resources.alive_pids():
            self.target_gone = True

    def _pull_agents(self) -> None:
        orphan = self.injections.orphan_seconds if self.injections is not None else None
        for pid, client in list(self._clients.items()):
            # A busy worker may hold more than one pull's worth: drain it, within reason.
            for _ in range(10):
                try:
                    batch = client.pull(orphan_after=orphan)
                except (OSError, ValueError):
                    break  # not injected (yet), or the worker is exiting
                self._store_batch(pid, batch)
                if not batch.more:
                    break

    def _store_batch(self, pid: int, batch: AgentBatch) -> None:
        if batch.requests:
            self.writer.put_requests(batch.requests)
            self.metrics.observe_requests(batch.requests)
            with self._lock:
                self.totals.requests += len(batch.requests)
        if batch.routes and self._routes_seen.get(pid) != len(batch.routes):
            self._routes_seen[pid] = len(batch.routes)
            self.writer.put_routes(pid, batch.routes)
        if batch.threadpool is not None:
            self.writer.put_threadpool([batch.threadpool])
            self.metrics.observe_threadpool(batch.threadpool)
        self.writer.put_agent_stats(batch.stats)
        self.metrics.observe_agent(batch.stats)
        if batch.routing and batch.routing.get("source") != "none":
            self.writer.set_meta(routing=batch.routing)  # templates, or paths grouped
        unavailable = (batch.profiling or {}).get("unavailable")
        if unavailable:
            self._warn(f"no per-request profiles from pid {pid}: {unavailable}")
        for profile in batch.profiles:
            self.writer.put_profile(pid, profile["start"], profile["method"],
                                    profile["route"], profile["duration_ms"], profile["tree"])
        with self._lock:
            self.totals.agent_dropped = max(self.totals.agent_dropped, batch.stats.dropped)
        if batch.watchdogs is not None:
            self._store_watchdogs(pid, batch.watchdogs)
        if self.options.verbosity >= 2 and (batch.requests or batch.profiles):
            self._detail(f"pull pid {pid}: {len(batch.requests)} requests,"
                         f" {len(batch.profiles)} profiles, agent dropped {batch.stats.dropped}"
                         + (" (more waiting)" if batch.more else ""))

    def _store_watchdogs(self, pid: int, report: WatchdogReport) -> None:
        self.writer.put_loop_stalls(report.stalls)
        self.writer.put_loop_lag(report.lag)
        if report.gil is not None:
            self.writer.put_gil([report.gil])
        self._watchdog_cpu[str(pid)] = report.cpu_seconds
        self.writer.set_meta(watchdog_cpu_seconds=dict(self._watchdog_cpu))

    # -- terminal output ------------------------------------------------------------------------

    def _warn(self, message: str) -> None:
        with self._lock:
            if message in self.totals.warnings:
                return
            self.totals.warnings.append(message)
        if self.status is not None:
            print(f"\napiscope: warning: {message}", file=self.status)

    def _detail(self, message: str) -> None:
        """A --verbose line, on a line of its own."""
        if self.status is not None:
            print(f"apiscope: {message}", file=self.status, flush=True)

    def _overhead(self) -> float | None:
        """The measured cost of the session, percent of the target's capacity (mean)."""
        budget = self._sampler.budget
        return round(100 * budget.mean_cost(), 3) if budget is not None and budget.history \
            else None

    def _rate_text(self) -> str:
        """`  rate 40 Hz (budget 2%)` while a budget holds the rate below the one asked for."""
        budget = self._sampler.budget
        rate = self._sampler.options.rate_hz
        if budget is None:
            return ""
        return f"  rate {rate} Hz (budget {self.options.max_overhead:g}%)"

    def _print_status(self, final: bool = False) -> None:
        if self.status is None or self.options.verbosity == 0:
            return
        line = (f"apiscope: {self.clock() - self.started:5.1f}s"
                f"  samples {self.sampler_stats.stored:,}  requests {self.totals.requests:,}"
                f"  processes {len(self._resources.alive_pids())}{self._rate_text()}")
        if self.storage_failure is not None:  # counting on would claim rows the file lacks
            line = (f"apiscope: session file failed; it holds {self.writer.committed_samples:,}"
                    f" samples and {self.writer.committed_requests:,} requests")
        # --verbose prints lines of its own: a status line redrawn in place would cut them.
        interactive = self.status.isatty() and self.options.verbosity < 2
        if interactive:
            print("\r" + line, end="\n" if final else "", file=self.status, flush=True)
        elif final:
            print(line, file=self.status, flush=True)



def remove_stale_socket(pid: int) -> None:
    """Remove the agent socket of an exited process, unless a live agent answers on it (the
    pid reused by a new process with its own agent)."""
    try:
        candidates = AgentClient(pid).candidates
    except ApiscopeError:
        return
    for path in candidates:
        if not os.path.exists(path):
            continue
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            try:
                os.unlink(path)
            except OSError:
                pass
        except OSError:
            pass
        finally:
            probe.close()
