"""Stand-ins for what a collection talks to: the session writer, the metrics, agent clients,
injections, the sampler, the resource collector and the clock. Each records what it was told."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from apiscope.collect.workers import Client
from apiscope.collection import CollectOptions
from apiscope.collectors.agent_client import AgentBatch, AgentError
from apiscope.collectors.budget import OverheadBudget
from apiscope.collectors.injections import DetachFailure
from apiscope.collectors.oncpu import LineLooks
from apiscope.collectors.pyspy import RecordOptions
from apiscope.collectors.resources import ProcessChanges
from apiscope.collectors.samplerstats import EndReason, SamplerStats
from apiscope.collectors.target import Target
from apiscope.model import (
    AgentStats,
    LoopStall,
    ProcessInfo,
    RequestRecord,
    ResourceSample,
    StackWindow,
    UnfinishedRequest,
)


class FakeWriter:
    """Records every call as (method, args, kwargs); `meta` keeps the latest of each key."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.meta: dict[str, Any] = {}
        self.failure: str | None = None
        self.committed_samples = 0
        self.committed_requests = 0
        self.request_cpu = 0.0
        self.flushed = 0

    def set_meta(self, **values: Any) -> None:
        self.meta.update(values)
        self.calls.append(("set_meta", (), values))

    def flush(self, timeout: float = 10.0) -> None:
        self.flushed += 1

    def __getattr__(self, name: str) -> Callable[..., None]:
        if not name.startswith(("put_", "mark_")):
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, tuple(list(a) if isinstance(a, Iterable)
                                           and not isinstance(a, str | dict) else a
                                           for a in args), kwargs))
        return record

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for method, args, _ in self.calls if method == name]


class FakeMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if not name.startswith(("observe_", "forget_")):
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, tuple(list(a) if isinstance(a, Iterable)
                                           and not isinstance(a, str) else a
                                           for a in (*args, *kwargs.values()))))
        return record

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for method, args in self.calls if method == name]


def stats(pid: int, recorded: int = 0, dropped: int = 0, errors: int = 0) -> AgentStats:
    return AgentStats(ts=0.0, pid=pid, recorded=recorded, dropped=dropped, errors=errors)


def request(pid: int, route: str = "/items/{item_id}") -> RequestRecord:
    return RequestRecord(pid=pid, start=1000.0, duration_ms=3.0, method="GET", route=route,
                         status=200)


def batch(pid: int, requests: int = 0, **kwargs: Any) -> AgentBatch:
    return AgentBatch(requests=[request(pid) for _ in range(requests)], routes=[],
                      threadpool=None, stats=kwargs.pop("stats", stats(pid)), **kwargs)


class FakeClient:
    """Answers pulls from a script: AgentBatch objects, or exceptions to raise."""

    def __init__(self, pid: int, answers: list[AgentBatch | Exception] | None = None) -> None:
        self.pid = pid
        self.answers = list(answers or [])
        self.closed = False
        self.pulls: list[float | None] = []
        self.keeps: list[tuple[int, float | None] | None] = []
        self.watch_shares: list[float | None] = []
        self.profile_shares: list[float | None] = []
        # What the end's question about hung requests gets: their list, or an exception.
        self.stuck: list[UnfinishedRequest] | Exception = []
        self.asked_unfinished: list[float] = []

    def unfinished(self, older_than: float) -> list[UnfinishedRequest]:
        self.asked_unfinished.append(older_than)
        if isinstance(self.stuck, Exception):
            raise self.stuck
        return self.stuck

    def pull(self, max_requests: int | None = None, orphan_after: float | None = None,
             keep: tuple[int, float | None] | None = None,
             watch_share: float | None = None,
             profile_share: float | None = None) -> AgentBatch:
        self.pulls.append(orphan_after)
        self.keeps.append(keep)
        self.watch_shares.append(watch_share)
        self.profile_shares.append(profile_share)
        if not self.answers:
            raise ConnectionRefusedError("nobody there")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        self.closed = True


class FakeClients:
    """A client factory that remembers the clients it made (and can script them)."""

    def __init__(self) -> None:
        self.made: dict[int, FakeClient] = {}
        self.scripts: dict[int, list[AgentBatch | Exception]] = {}

    def __call__(self, pid: int) -> Client:
        client = FakeClient(pid, self.scripts.get(pid))
        self.made[pid] = client
        return client


class FakeInjections:
    def __init__(self, fail: dict[int, str] | None = None,
                 orphan_seconds: float | None = 10.0) -> None:
        self.orphan_seconds = orphan_seconds
        self.pauses: list[tuple[float, float]] = []
        self.added: list[int] = []
        self.servers: set[str] = set()  # the servers whose apps the agents wrapped
        self.missing: dict[int, str] = {}  # why a process runs no agent
        self.closed = 0
        self._fail = fail or {}

    @property
    def started(self) -> set[int]:
        return set(self.added)

    def add(self, pid: int) -> None:
        if pid not in self.added:
            self.added.append(pid)

    def close(self) -> list[DetachFailure]:
        self.closed += 1
        return [DetachFailure(pid, reason) for pid, reason in sorted(self._fail.items())
                if pid in self.added]


class FakeSampler:
    """Delivers the windows a test hands it, when the test says."""

    def __init__(self, on_window: Callable[[StackWindow], None],
                 budget: OverheadBudget | None = None, rate_hz: int = 100) -> None:
        self.on_window = on_window
        self.stats = SamplerStats()
        self.end_reason: EndReason | None = None
        self.error: Exception | None = None
        self.budget = budget
        self.options = RecordOptions(rate_hz=rate_hz)
        self.started = self.stopped = False
        self.stalls: list[LoopStall] = []
        self.gil_futex: dict[int, tuple[int, int]] = {}
        self.gil_holders: dict[int, tuple[tuple[int, int], dict[int, int]]] = {}
        self.gil_waits: list[tuple[int, float, int]] = []
        self.sleeps: list[LineLooks] = []
        self.look_intervals: list[float] = []

    def note_stalls(self, stalls: Iterable[LoopStall]) -> None:
        self.stalls.extend(stalls)

    def note_sleeps(self, looks: Iterable[LineLooks]) -> None:
        self.sleeps.extend(looks)

    def asleep_lines(self) -> list[tuple[str, int]]:
        return sorted({(look.file, look.line) for look in self.sleeps
                       if look.asleep and not look.running})

    def note_gil(self, pid: int, futex: tuple[int, int]) -> None:
        self.gil_futex[pid] = futex

    def note_gil_holder(self, pid: int, layout: tuple[int, int],
                        idents: Mapping[int, int]) -> None:
        self.gil_holders[pid] = (layout, dict(idents))

    def note_gil_wait(self, pid: int, wait_seconds: float, wakes: int) -> None:
        self.gil_waits.append((pid, wait_seconds, wakes))

    def set_look_interval(self, seconds: float) -> None:
        self.look_intervals.append(seconds)

    def start(self) -> None:
        self.started = True

    def stop(self, timeout: float = 30.0) -> None:
        self.stopped = True

    def deliver(self, window: StackWindow) -> None:
        self.stats.windows += 1
        self.stats.stored += sum(s.count for s in window.samples)
        self.on_window(window)


class SamplerBox:
    """A sampler factory for Collection that keeps the sampler it built."""

    def __init__(self, budget: OverheadBudget | None = None) -> None:
        self.budget = budget
        self.sampler: FakeSampler | None = None

    def __call__(self, target: Target, options: CollectOptions,
                 on_window: Callable[[StackWindow], None],
                 agent_cpu: Callable[[], float]) -> FakeSampler:
        self.sampler = FakeSampler(on_window, self.budget, options.rate_hz)
        self.agent_cpu = agent_cpu
        return self.sampler


class FakeResources:
    """Processes a test makes appear and exit between two refreshes."""

    def __init__(self, pids: list[int]) -> None:
        self.alive = list(pids)
        self.new: list[ProcessInfo] = []
        self.gone: list[int] = []

    def alive_pids(self) -> list[int]:
        return sorted(self.alive)

    def collect(self) -> list[ResourceSample]:
        return [ResourceSample(ts=0.0, pid=pid, cpu_percent=1.0, rss_bytes=1, threads=1,
                               fds=1) for pid in self.alive_pids()]

    def refresh(self) -> ProcessChanges:
        changes = ProcessChanges(new=self.new, exited=self.gone)
        self.alive = [p for p in self.alive if p not in self.gone]
        self.alive += [info.pid for info in self.new]
        self.new, self.gone = [], []
        return changes

    def spawn(self, pid: int, ppid: int = 1) -> None:
        self.new.append(ProcessInfo(pid=pid, ppid=ppid, role="worker", command="w",
                                    first_seen=0.0))

    def exit(self, pid: int) -> None:
        self.gone.append(pid)


def target(pids: list[int], master: int | None = None) -> Target:
    return Target(pid=master or pids[0], pids=pids, master_pid=master, server="uvicorn",
                  command="uvicorn app:app", python_version="3.12.1",
                  processes=[ProcessInfo(pid=p, ppid=master, role="worker", command="w",
                                         first_seen=0.0) for p in pids])


def agent_error(message: str) -> AgentError:
    return AgentError(message)
