"""One collecting run: stack sampling, agent pulls and resources, written to a session file.

`Collection` wires the collectors to the session and decides when the run ends (duration
over, Ctrl-C or another stop signal, every target process gone, or the session file no longer
writable). The CLI commands `attach`, `run` and `demo` build one and call `run_until_done()`;
`close_agents()` then detaches every agent injected on the way.

The work itself is done by the parts in `apiscope.collect`: the worker set (who is pulled,
injected, detached), the record sink (the session and the metrics, fed together), the failure
log (what went wrong, per process, kept for the report) and the terminal (status and warnings).
Each collaborator can be passed in, which is how the orchestration is tested without a server.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import psutil

from apiscope.collect.failures import FailureLog
from apiscope.collect.fanout import Metrics, RecordSink, Writer
from apiscope.collect.figures import overhead_parts, overhead_percent
from apiscope.collect.status import Counters, Terminal, pull_text, status_line, window_text
from apiscope.collect.taskroutes import TaskRoutes
from apiscope.collect.workers import Client, Injector, WorkerSet
from apiscope.collect.workers import remove_stale_socket as remove_stale_socket
from apiscope.collectors.agent_client import AgentBatch, AgentClient, AgentError
from apiscope.collectors.budget import (
    OverheadBudget,
    RequestKeeping,
    WatchShare,
    profile_share,
)
from apiscope.collectors.injections import DetachFailure
from apiscope.collectors.oncpu import LineLooks
from apiscope.collectors.proctree import worker_children
from apiscope.collectors.pyspy import RecordOptions
from apiscope.collectors.resources import ProcessChanges, ResourceCollector
from apiscope.collectors.samplerstats import EndReason, SamplerStats
from apiscope.collectors.spy import target_stopped
from apiscope.collectors.stacks import StackSampler
from apiscope.collectors.target import Target
from apiscope.errors import TargetError
from apiscope.metrics import MetricsExporter
from apiscope.model import LoopStall, ResourceSample, RouteInfo, StackWindow


@dataclass
class CollectOptions:
    rate_hz: int = 100
    duration: float | None = None
    nonblocking: bool = False
    inject: bool = True  # an agent is expected (injected, or loaded by `run`)
    slo_ms: float = 200.0
    max_overhead: float = 2.0  # percent of the target's capacity; 0: always sample at rate_hz
    window_seconds: float = 1.0
    poll_seconds: float = 1.0  # pulls from the agents: each wakes both sides
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


class SessionOutput(Writer, Protocol):
    """The session writer as the orchestrator uses it, beyond the records (`SessionWriter`)."""

    @property
    def failure(self) -> str | None: ...
    committed_samples: int
    committed_requests: int
    request_cpu: float  # CPU seconds spent storing requests

    def flush(self, timeout: float = 10.0) -> None: ...


class Sampler(Protocol):
    """The stack sampler as the orchestrator drives it (`StackSampler`)."""

    stats: SamplerStats
    end_reason: EndReason | None
    error: Exception | None
    budget: OverheadBudget | None
    options: RecordOptions

    def start(self) -> None: ...
    def stop(self, timeout: float = 30.0) -> None: ...
    def note_stalls(self, stalls: Iterable[LoopStall]) -> None: ...
    def note_sleeps(self, looks: Iterable[LineLooks]) -> None: ...
    def asleep_lines(self) -> list[tuple[str, int]]: ...
    def note_gil(self, pid: int, futex: tuple[int, int]) -> None: ...
    def note_gil_holder(self, pid: int, layout: tuple[int, int],
                        idents: Mapping[int, int]) -> None: ...
    def note_gil_wait(self, pid: int, wait_seconds: float, wakes: int) -> None: ...
    def set_look_interval(self, seconds: float) -> None: ...


class Resources(Protocol):
    """The resource collector as the orchestrator uses it (`ResourceCollector`)."""

    def alive_pids(self) -> list[int]: ...
    def collect(self) -> list[ResourceSample]: ...
    def refresh(self) -> ProcessChanges: ...


# Builds the sampler of a target: (target, options, on_window, agent_cpu) -> sampler.
SamplerFactory = Callable[[Target, CollectOptions, Callable[[StackWindow], None],
                           Callable[[], float]], Sampler]


def stack_sampler(target: Target, options: CollectOptions,
                  on_window: Callable[[StackWindow], None],
                  agent_cpu: Callable[[], float]) -> StackSampler:
    """py-spy on the target, within the overhead budget (which pays for the agents too)."""
    budget = (OverheadBudget(options.max_overhead / 100, options.rate_hz)
              if options.max_overhead > 0 else None)
    return StackSampler(
        target.sample_pid, rate_hz=options.rate_hz, subprocesses=target.master_pid is not None,
        nonblocking=options.nonblocking, window_seconds=options.window_seconds,
        on_window=on_window, budget=budget, agent_cpu=agent_cpu,
        workers=_workers_of(target.master_pid, target.server)
        if target.master_pid is not None else None)


def _workers_of(master: int, server: str) -> Callable[[], list[int]]:
    """The master's workers as they are now (gunicorn replaces the ones that exit)."""
    def workers() -> list[int]:
        return [p.pid for p in worker_children(psutil.Process(master), server)]

    return workers


class Collection:
    """Collects from one target into one session until told to stop or the target is gone."""

    def __init__(self, target: Target, writer: SessionOutput, options: CollectOptions,
                 metrics: Metrics | None = None,
                 injections: Injector | None = None,
                 status: TextIO | None = sys.stderr,
                 clock: Callable[[], float] = time.time, *,
                 sampler: SamplerFactory = stack_sampler,
                 resources: Resources | None = None,
                 clients: Callable[[int], Client] = AgentClient,
                 workers: WorkerSet | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.writer = writer
        self.options = options
        self.metrics: Metrics = metrics or MetricsExporter()
        self.injections = injections
        self.storage_failure: str | None = None  # why the session could not be written
        self.status = status
        self.clock = clock
        self._monotonic = monotonic
        self.totals = Totals()
        self.started = clock()
        self.target_gone = False
        self.sink = RecordSink(writer, self.metrics)
        self.failures = FailureLog()
        self.terminal = Terminal(status, options.verbosity)
        self.totals.warnings = self.terminal.warnings  # one list: the summary reads it
        self.workers = workers if workers is not None else WorkerSet(
            injections=injections, inject=options.inject, clients=clients)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._routes_seen: dict[int, list[RouteInfo]] = {}
        self._routing_stored: dict[str, Any] | None = None  # the `routing` meta written last
        self._watchdog_cpu: dict[str, float] = {}  # the agents' watchdogs' own CPU, by pid
        self._task_routes = TaskRoutes()  # the routes each task function served
        self._serve_cpu: dict[int, float] = {}  # the agents' CPU answering pulls, by pid
        # What the agents' per-request profiles spent on the request threads, by pid.
        self._profile_cpu: dict[int, float] = {}
        # One request in `keeping.every` kept when taking them all in would cost too much.
        self.keeping = RequestKeeping(options.max_overhead / 100) \
            if options.max_overhead > 0 else None
        # What the agents' loop watchdogs may spend following long passes, as the budget goes.
        self.watch_share = WatchShare() if options.max_overhead > 0 else None
        self._intake_cpu = 0.0  # the collector's CPU pulling and handing on the agents' data
        self._kept = 0  # request records taken in
        # (when, cost, records kept, requests they stand for) at the last adjustment
        self._keep_mark: tuple[float, float, int, int] | None = None
        self._gaps_stored = 0
        self._stopped = False
        self._agents_closed = False
        self._running = False  # set once start() has started the sampler
        self._resources: Resources = resources if resources is not None \
            else ResourceCollector(target)
        self._sampler = sampler(target, options, self._on_window, self._agents_cpu)
        self._poller = threading.Thread(target=self._poll_loop, name="apiscope-poller",
                                        daemon=True)

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        t = self.target
        self.sink.meta(
            command=t.command, pids=t.pids, server=t.server, python=t.python_version,
            target_pid=t.pid, master_pid=t.master_pid, rate_hz=self.options.rate_hz,
            slo_ms=self.options.slo_ms, start=self.started, nonblocking=self.options.nonblocking,
            inject=self.options.inject, max_overhead=self.options.max_overhead)
        for info in t.processes:
            self.sink.process(info)
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
            self.workers.add(pid)

    def request_stop(self) -> None:
        """End the run as Ctrl-C does (safe from a signal handler: it only sets a flag)."""
        self._stop.set()

    @property
    def sampler_stats(self) -> SamplerStats:
        """The sampler's own account of stored, expected and failed samples."""
        return self._sampler.stats

    @property
    def detach_failures(self) -> list[DetachFailure]:
        return self.workers.detach_failures

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
            self.pull_agents()  # what the agents recorded since the last pull
            self.collect_unfinished()
            self.workers.close_clients()
            end = self.clock()
            stats = self._sampler.stats
            self._store_gaps()
            self._store_failures()
            # Reads failed while the injection's debugger held a target are not the sampler's.
            pauses = self.injections.pauses if self.injections is not None else []
            failed = stats.failed_reads(pauses)
            self.sink.meta(end=end, samples_total=stats.stored,
                           pauses=[{"start": began, "end": ended} for began, ended in pauses],
                           samples_errors=failed.sampler, samples_paused=failed.paused,
                           samples_expected=round(stats.expected),
                           sample_loss=round(stats.loss, 4),
                           windows_dropped=stats.dropped_windows,
                           max_overhead=self.options.max_overhead,
                           overhead=overhead_percent(self._sampler.budget),
                           overhead_parts=overhead_parts(self._sampler.budget),
                           windows_failed=stats.failed_windows,
                           agent_dropped=self.totals.agent_dropped,
                           asleep_lines=[list(site) for site in self._sampler.asleep_lines()])
            served = self._served_by()
            if served is not None:
                self.sink.meta(server=served)
            if self.storage_failure is None:
                self.writer.flush()

    def _served_by(self) -> str | None:
        """The server, where the command line named none (a Python program that runs uvicorn
        in-process: `dagster-webserver`) and the agents found one server's apps; else None."""
        servers = self.injections.servers if self.injections is not None else set()
        if self.target.server == "python" and len(servers) == 1:
            return next(iter(servers))
        return None

    def close_agents(self) -> list[DetachFailure]:
        """Detach every process an agent was injected in (once); returns the failures, also
        stored in the session (`detach_failed`, and in `target_failures` with the other
        failures of each process) for the report."""
        if self._agents_closed:
            return self.workers.detach_failures
        self._agents_closed = True
        failures = self.workers.detach()
        if failures:
            self.sink.meta(detach_failed=[{"pid": f.pid, "reason": f.reason, "retry": f.command}
                                          for f in failures])
            self.failures.detach_failed(failures)
            self._store_failures()
        return failures

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
                if self._monotonic() >= next_progress:
                    next_progress = self._monotonic() + self.options.progress_seconds
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
        """Keep the stored end time, gaps and failures current: a session cut short by a full
        disk or a kill -9 still says how far it got and what went wrong on the way."""
        self._store_gaps()
        self._store_failures()
        self.sink.meta(end=self.clock())

    def _store_gaps(self) -> None:
        gaps = list(self._sampler.stats.gaps)
        if len(gaps) != self._gaps_stored:
            self._gaps_stored = len(gaps)
            self.sink.meta(gaps=[{"start": start, "end": end, "reason": reason}
                                 for start, end, reason in gaps])

    def _store_failures(self) -> None:
        stopped = None
        if self._sampler.end_reason is EndReason.FAILED:
            stopped = str(self._sampler.error)
        self.failures.sampler(self.target.sample_pid, self._sampler.stats, stopped)
        self.failures.no_agent(self.workers.agentless())
        news = self.failures.news()
        if news is not None:
            self.sink.meta(target_failures=news)

    def _sampler_says_gone(self) -> bool:
        reason = self._sampler.end_reason
        if reason is EndReason.FAILED:
            self._warn(f"stack sampling stopped: {self._sampler.error}")
        return reason is EndReason.TARGET_EXITED

    def _on_window(self, window: StackWindow) -> None:
        counts = self.sink.window(window)
        if self.options.verbosity >= 2:
            stats = self.sampler_stats
            budget = self._sampler.budget
            self.terminal.detail(window_text(window.end - self.started, window.rate_hz, counts,
                                             stats.dropped_windows + stats.failed_windows,
                                             budget.last_parts if budget else None))

    def _agents_cpu(self) -> float:
        """The agents' own CPU seconds so far (watchdogs, answering pulls, and the profiles'
        sampled slices on the request threads, whole): the budget pays for them."""
        return sum(self._watchdog_cpu.values()) + sum(self._serve_cpu.values()) \
            + sum(self._profile_cpu.values())

    def _poll_loop(self) -> None:
        next_resources = 0.0
        while not self._stop.wait(self.options.poll_seconds):
            try:
                self.pull_agents()
                now = self._monotonic()
                if now >= next_resources:
                    next_resources = now + 1.0
                    self.collect_resources()
                    self.adjust_keeping()
                    self.adjust_watch_share()
            except Exception as exc:  # a collector failing must not end the run silently
                self._warn(f"collector error: {exc}")

    def collect_resources(self) -> None:
        """One resource sample per process, and the workers that came and went since."""
        self.sink.resources(self._resources.collect())
        changes = self._resources.refresh()
        for info in changes.new:
            self.sink.process(info)
            self.workers.add(info.pid)
        for pid in changes.exited:
            self.sink.exited(pid, self.clock())
            self.workers.remove(pid)
        if not self._resources.alive_pids():
            self.target_gone = True

    def adjust_keeping(self) -> None:
        """Choose how many requests the agents keep (one in n) from what taking them in cost
        since the last call: the collector's CPU pulling and storing them and the agents'
        CPU answering (see `RequestKeeping`)."""
        if self.keeping is None:
            return
        now = self._monotonic()
        cost = self._intake_cpu + self.writer.request_cpu + sum(self._serve_cpu.values())
        mark, self._keep_mark = self._keep_mark, (now, cost, self._kept, self.totals.requests)
        if mark is None:
            return
        before = self.keeping.every
        budget = self._sampler.budget
        every = self.keeping.observe(now - mark[0], cost - mark[1], self._kept - mark[2],
                                     self.totals.requests - mark[3],
                                     processes=max(1, len(self.workers.clients())),
                                     over_budget=budget is not None and budget.over_budget,
                                     room=budget.room() if budget is not None else None)
        if every != before:
            self.sink.meta(requests_kept_every=every,
                           requests_kept_every_max=max(self.keeping.history))

    def analysis_scale(self) -> float:
        """The part of its share of the budget the live analysis may use now: all of it,
        down to a sixteenth while the budget is over at its lowest sampling rate (as the
        agents' watchdogs, `WatchShare.scale`)."""
        return self.watch_share.scale if self.watch_share is not None else 1.0

    def adjust_watch_share(self) -> None:
        """Give the agents' loop watchdogs less to follow with, and look at the busy threads
        for GIL waits less often, while the budget is over at its lowest sampling rate; their
        defaults back when it has room (`WatchShare`)."""
        budget = self._sampler.budget
        if self.watch_share is None or budget is None:
            return
        before = self.watch_share.share
        share = self.watch_share.observe(budget, max(1, len(self.workers.clients())))
        if share != before:
            self.sink.meta(watch_share=share)
            self._sampler.set_look_interval(self.watch_share.look_interval)

    def pull_agents(self) -> None:
        """Drain every agent of what it recorded since the last pull."""
        began = time.thread_time()
        try:
            self._pull_agents()
        finally:
            self._intake_cpu += time.thread_time() - began

    def _pull_agents(self) -> None:
        orphan = self.workers.orphan_seconds
        # Errors and requests slower than the objective are always kept.
        keep = (self.keeping.every, self.options.slo_ms) if self.keeping is not None else None
        # Sent once it differs from the agents' own default (an older agent ignores it).
        watch = self.watch_share.share if self.watch_share is not None \
            and self.watch_share.history else None
        profile = profile_share(self.options.max_overhead / 100, self.analysis_scale()) \
            if self.options.max_overhead > 0 else None
        for pid, client in self.workers.clients():
            # A busy worker may hold more than one pull's worth: drain it, within reason.
            for _ in range(10):
                try:
                    batch = client.pull(orphan_after=orphan, keep=keep, watch_share=watch,
                                        profile_share=profile)
                except AgentError as exc:  # the agent is there and says what broke
                    if self.failures.agent_error(pid, exc.message):
                        self._warn(f"the agent in PID {pid} answered a pull with an error:"
                                   f" {exc.message} (further ones are counted in the report)")
                    break
                except (OSError, ValueError):
                    break  # not injected (yet), or the worker is exiting
                self._store_batch(pid, batch)
                if not batch.more:
                    break

    def collect_unfinished(self) -> None:
        """Ask each agent, once at the end, for the requests still running with no response
        begun: a request that hangs (a pool exhausted, a lock never freed, a call with no
        timeout) never finishes, so it is never pulled, and without this a server whose
        requests all hung would read as idle. Longer than the objective, and a second at
        least: a busy server always has requests in flight."""
        older_than = max(1.0, self.options.slo_ms / 1000.0)
        for _, client in self.workers.clients():
            try:
                self.sink.unfinished(client.unfinished(older_than))
            except (OSError, ValueError):
                # The worker is exiting, its agent is gone, or (AgentError) it is an agent of
                # an older apiscope, instrumented by hand, that cannot tell.
                pass

    def _store_batch(self, pid: int, batch: AgentBatch) -> None:
        if batch.requests:
            self.sink.requests(batch.requests)
            with self._lock:
                self.totals.requests += sum(r.weight for r in batch.requests)
                self._kept += len(batch.requests)
        if batch.routes and self._routes_seen.get(pid) != batch.routes:
            self._routes_seen[pid] = batch.routes
            self.sink.routes(pid, batch.routes)
        if batch.threadpool is not None:
            self.sink.threadpool(batch.threadpool)
        self.sink.agent_stats(batch.stats)
        self._serve_cpu[pid] = batch.stats.serve_cpu
        spent = (batch.profiling or {}).get("spent_seconds")
        if isinstance(spent, (int, float)) and not isinstance(spent, bool) \
                and spent != self._profile_cpu.get(pid):
            self._profile_cpu[pid] = float(spent)
            self.sink.meta(profile_seconds={str(p): s for p, s in self._profile_cpu.items()})
        if batch.routing and batch.routing.get("source") != "none" \
                and batch.routing != self._routing_stored:
            self._routing_stored = batch.routing
            self.sink.meta(routing=batch.routing)  # templates, or paths grouped
        unavailable = (batch.profiling or {}).get("unavailable")
        if unavailable:
            self._warn(f"no per-request profiles from pid {pid}: {unavailable}")
        limited = (batch.profiling or {}).get("limited")
        if limited:
            self._warn(f"pid {pid}: {limited}")
        for profile in batch.profiles:
            self.sink.profile(profile)
        with self._lock:
            self.totals.agent_dropped = max(self.totals.agent_dropped, batch.stats.dropped)
        watchdog_errors = batch.watchdogs.errors if batch.watchdogs is not None else None
        self.failures.agent_counters(pid, internal=batch.stats.errors, watchdog=watchdog_errors)
        self.sink.offloaded(batch.offloaded)
        self.sink.thread_spans(batch.thread_spans)
        if batch.watchdogs is not None:
            self.sink.watchdogs(batch.watchdogs)
            self._sampler.note_stalls(batch.watchdogs.stalls)  # lines measured asleep
            self._sampler.note_sleeps(batch.watchdogs.sleeps)  # on the loop or off it
            if batch.watchdogs.gil_futex is not None:  # threads' GIL waits, by the kernel
                self._sampler.note_gil(pid, batch.watchdogs.gil_futex)
                if batch.watchdogs.gil_holder is not None:  # and who holds it meanwhile
                    self._sampler.note_gil_holder(pid, batch.watchdogs.gil_holder,
                                                  batch.watchdogs.idents or {})
            gil = batch.watchdogs.gil
            if gil is not None:  # a quiet GIL needs no looks at who waits for it
                self._sampler.note_gil_wait(pid, gil.wait_seconds, gil.acquisitions)
            self._watchdog_cpu[str(pid)] = batch.watchdogs.cpu_seconds
            self.sink.meta(watchdog_cpu_seconds=dict(self._watchdog_cpu))
            if batch.watchdogs.tasks and self._task_routes.add(batch.watchdogs.tasks):
                self.sink.meta(task_routes=self._task_routes.rows())
        if self.options.verbosity >= 2 and (batch.requests or batch.profiles):
            self.terminal.detail(pull_text(pid, len(batch.requests), len(batch.profiles),
                                           batch.stats.dropped, batch.more))

    # -- terminal output ------------------------------------------------------------------------

    def _warn(self, message: str) -> None:
        self.terminal.warn(message)

    def counters(self) -> Counters:
        """What the status line shows now."""
        committed = None
        if self.storage_failure is not None:
            committed = (self.writer.committed_samples, self.writer.committed_requests)
        budget = self._sampler.budget is not None
        return Counters(
            elapsed=self.clock() - self.started, samples=self.sampler_stats.stored,
            requests=self.totals.requests, processes=len(self._resources.alive_pids()),
            rate_hz=self._sampler.options.rate_hz if budget else None,
            max_overhead=self.options.max_overhead if budget else None, committed=committed,
            keep_every=self.keeping.every if self.keeping is not None else 1)

    def _print_status(self, final: bool = False) -> None:
        if self.status is None or self.options.verbosity == 0:
            return
        self.terminal.status(status_line(self.counters()), final=final)
