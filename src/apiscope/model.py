"""Plain data shared by the collectors, the session store, the analysis and the exporters.

Everything here is a frozen dataclass of builtins: collectors produce these, the store persists
them, and analysis rules read them back. No behaviour beyond small derived properties.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ThreadRole(StrEnum):
    """What a thread does in an ASGI server."""

    LOOP = "loop"  # runs the asyncio/uvloop event loop
    WORKER = "worker"  # a thread-pool worker (anyio/asyncio default executor) running sync code
    OTHER = "other"  # anything else (aiosqlite connection threads, the agent, gunicorn arbiter)


class SampleState(StrEnum):
    """What a sampled thread was doing."""

    WAITING = "waiting"  # idle in the event loop's selector or an idle worker's queue get
    RUNNING = "running"  # on a CPU, as the kernel measured the thread's CPU time
    RUNNABLE = "runnable"  # ready to run, waiting in the run queue for a free CPU (measured)
    BLOCKED = "blocked"  # off-CPU at a working stack: a sleep, I/O, a lock, the GIL


@dataclass(frozen=True, slots=True)
class Frame:
    """One stack frame as py-spy reports it; `line` is the line executing in that frame."""

    function: str
    file: str
    line: int

    def label(self) -> str:
        return f"{self.function} ({self.file}:{self.line})"


@dataclass(frozen=True, slots=True)
class StackSample:
    """`count` samples of one thread showing the same stack (frames root first)."""

    pid: int
    tid: int
    thread_name: str
    frames: tuple[Frame, ...]
    count: int
    state: SampleState = SampleState.RUNNING
    gil: bool | None = None  # held the GIL, when known


@dataclass(frozen=True, slots=True)
class StackWindow:
    """All samples one py-spy record run returned for [start, end) (epoch seconds)."""

    start: float
    end: float
    rate_hz: int
    samples: tuple[StackSample, ...]
    errors: int = 0  # samples py-spy failed to read, when it says so
    threads: dict[tuple[int, int], ThreadRole] = field(default_factory=dict)
    # CPU seconds each (pid, tid) used in the window, and each process in all (the kernel's).
    thread_cpu: dict[tuple[int, int], float] = field(default_factory=dict)
    process_cpu: dict[int, float] = field(default_factory=dict)
    # Seconds each (pid, tid) waited in the run queue for a CPU in the window.
    thread_runqueue: dict[tuple[int, int], float] = field(default_factory=dict)
    # Recorded without --idle: a thread shows only while py-spy found it active, so its
    # samples are not the window's length (see collectors/oncpu.py).
    active_only: bool = False


@dataclass(frozen=True, slots=True)
class WindowInfo:
    """One stored sampling window, without its samples."""

    id: int
    start: float
    end: float
    rate_hz: int
    errors: int


@dataclass(frozen=True, slots=True)
class ThreadCpu:
    """CPU seconds one thread (tid 0: the whole process) used in one sampling window."""

    window: float  # the window's start
    pid: int
    tid: int
    seconds: float
    runqueue: float | None = None  # seconds waiting in the run queue for a CPU, when known


@dataclass(frozen=True, slots=True)
class QueryStat:
    """The queries of one request sharing one normalized statement."""

    statement: str
    count: int
    total_ms: float
    file: str | None = None  # user-code call site of the statement, when repeated
    line: int | None = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the in-process agent measured it."""

    pid: int
    start: float  # epoch seconds of the first receive
    duration_ms: float
    method: str
    route: str  # the template, e.g. "/items/{item_id}", or "<unmatched>"
    status: int
    exc_type: str | None = None
    exc_file: str | None = None
    exc_line: int | None = None
    queries: tuple[QueryStat, ...] = ()

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.route}"


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """One entry of the app's route table."""

    method: str
    template: str
    handler: str  # "module:function"
    file: str
    line: int  # first line of the handler
    is_async: bool


@dataclass(frozen=True, slots=True)
class ResourceSample:
    """psutil figures of one process at one instant."""

    ts: float
    pid: int
    cpu_percent: float
    rss_bytes: int
    threads: int
    fds: int
    connections: int = 0
    ctx_voluntary: int = 0
    ctx_involuntary: int = 0
    read_bytes: int = 0
    write_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ThreadPoolSample:
    """The thread-pool limiter's state in one process at one instant."""

    ts: float
    pid: int
    total_tokens: int
    borrowed_tokens: int
    waiting: int


@dataclass(frozen=True, slots=True)
class AgentStats:
    """The agent's own counters (cumulative since it started)."""

    ts: float
    pid: int
    recorded: int
    dropped: int
    errors: int


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A process of the target: the server itself, or a worker of a gunicorn master."""

    pid: int
    ppid: int | None
    role: str  # "master", "worker" or "single"
    command: str
    first_seen: float
    exited_at: float | None = None


@dataclass(frozen=True, slots=True)
class StoredGap:
    """A stretch without stack samples (a stopped target), as the collector stores it: epoch
    seconds, and why when known. The report shows it in its own shape (`apiscope.report.Gap`)."""

    start: float
    end: float
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SessionMeta:
    """What the collector noted about its session (`SessionWriter.set_meta`), read back typed.

    Any of it may be missing: a session cut short, or written by an older version, lacks some
    keys, and they read as None or empty. `from_stored` is the one place that knows the stored
    shape. Numbers stay as they were written (an int is not turned into a float), so the report
    shows them as it always has. The failures per process and the agents left behind are kept
    as stored: the report types them (`apiscope.report`, which the model does not import)."""

    # Noted at the start: the target and the options it was collected with.
    command: str | None = None
    pids: tuple[int, ...] = ()  # the processes serving requests
    server: str | None = None
    python: str | None = None  # the target's version, e.g. "3.11.7"
    target_pid: int | None = None
    master_pid: int | None = None
    rate_hz: int | None = None
    slo_ms: float | None = None
    nonblocking: bool | None = None
    inject: bool | None = None
    start: float | None = None  # epoch seconds
    # Kept current while collecting, final once it ends.
    end: float | None = None
    samples_total: int | None = None
    samples_errors: int | None = None
    samples_expected: int | None = None
    sample_loss: float | None = None
    windows_dropped: int | None = None
    windows_failed: int | None = None
    max_overhead: float | None = None  # percent; None without an overhead budget
    overhead: float | None = None  # percent measured, None before the budget's first window
    agent_dropped: int | None = None
    gaps: tuple[StoredGap, ...] = ()
    detach_failed: tuple[Mapping[str, object], ...] = ()  # {"pid", "reason", "retry"} each
    target_failures: tuple[Mapping[str, object], ...] = ()  # one entry per process
    routing: Mapping[str, object] | None = None  # where the agent's route names came from
    watchdog_cpu_seconds: Mapping[int, float] = field(default_factory=dict)  # by pid

    @classmethod
    def from_stored(cls, values: Mapping[str, Any]) -> SessionMeta:
        """The stored key/value pairs (JSON decoded); a value of the wrong type reads as
        missing, unknown keys are ignored."""
        get = values.get
        return cls(
            command=_text(get("command")), pids=_ints(get("pids")), server=_text(get("server")),
            python=_text(get("python")), target_pid=_int(get("target_pid")),
            master_pid=_int(get("master_pid")), rate_hz=_int(get("rate_hz")),
            slo_ms=_number(get("slo_ms")), nonblocking=_flag(get("nonblocking")),
            inject=_flag(get("inject")), start=_number(get("start")), end=_number(get("end")),
            samples_total=_int(get("samples_total")), samples_errors=_int(get("samples_errors")),
            samples_expected=_int(get("samples_expected")),
            sample_loss=_number(get("sample_loss")),
            windows_dropped=_int(get("windows_dropped")),
            windows_failed=_int(get("windows_failed")),
            max_overhead=_number(get("max_overhead")), overhead=_number(get("overhead")),
            agent_dropped=_int(get("agent_dropped")), gaps=_gaps(get("gaps")),
            detach_failed=_objects(get("detach_failed")),
            target_failures=_objects(get("target_failures")),
            routing=dict(routing) if isinstance(routing := get("routing"), Mapping) else None,
            watchdog_cpu_seconds=_per_pid(get("watchdog_cpu_seconds")))


def _number(value: object) -> float | None:
    """A stored number as written (an int stays an int), a number in a string read as one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _int(value: object) -> int | None:
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _flag(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _ints(value: object) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(n for n in map(_int, value) if n is not None)


def _objects(value: object) -> tuple[Mapping[str, object], ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(dict(entry) for entry in value if isinstance(entry, Mapping))


def _gaps(value: object) -> tuple[StoredGap, ...]:
    gaps = []
    for entry in _objects(value):
        start, end = _number(entry.get("start")), _number(entry.get("end"))
        if start is not None and end is not None:
            gaps.append(StoredGap(start, end, _text(entry.get("reason"))))
    return tuple(gaps)


def _per_pid(value: object) -> dict[int, float]:
    """{pid: seconds} from JSON's {"pid": seconds} (object keys are text)."""
    if not isinstance(value, Mapping):
        return {}
    out = {}
    for key, seconds in value.items():
        pid, number = _int(key), _number(seconds)
        if pid is not None and number is not None:
            out[pid] = number
    return out


@dataclass(frozen=True, slots=True)
class LoopStall:
    """The event loop ran no callback for `duration_ms` (measured in the target)."""

    pid: int
    tid: int  # the loop thread's native id
    start: float  # epoch seconds when the loop was last seen running
    duration_ms: float
    frames: tuple[Frame, ...]  # the loop thread's stack during the stall, root first
    cpu_ms: float | None = None  # the loop thread's CPU time during the stall
    # What the kernel said the loop thread was doing at each look during the stall: "cpu" (on
    # a CPU), "queue" (ready, waiting for a CPU: more run-queue than CPU time since the last
    # look), "sleep", "io", "lock" (a lock, a condition or the GIL).
    activity: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoopLagSample:
    """How late the loop ran its probe callbacks over one pull interval."""

    ts: float
    pid: int
    probes: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class GilSample:
    """What the GIL watchdog measured over one pull interval."""

    ts: float
    pid: int
    seconds: float  # the interval observed
    wait_seconds: float  # waiting to reacquire the GIL (OS run-queue time excluded)
    acquisitions: int
    max_wait_ms: float
    runqueue_known: bool = True


@dataclass(frozen=True, slots=True)
class ProfileNode:
    """One node of a sampled request's async profile: the agent's compact tree (see
    `apiscope.agent.profiletree`), typed once where the store reads it back.

    The agent ships plain JSON (it is standard library only); `from_json` reads it as leniently
    as the analysis always has (a missing number is 0, a child that is not an object is
    skipped), so a tree from any agent version reads. The root is a synthetic node (`file` "")
    named after the request."""

    function: str
    file: str  # "" for the synthetic root
    line: int  # the line executing in that frame
    time_ms: float  # inclusive wall time
    await_ms: float  # suspended with this frame the innermost awaiting one
    children: tuple[ProfileNode, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProfileNode:
        return cls(str(data.get("function") or ""), str(data.get("file") or ""),
                   int(data.get("line") or 0), float(data.get("time_ms") or 0.0),
                   float(data.get("await_ms") or 0.0),
                   tuple(cls.from_json(child) for child in data.get("children") or ()
                         if isinstance(child, Mapping)))

    def to_json(self) -> dict[str, Any]:
        """The agent's JSON shape (for exporters that take it)."""
        return {"function": self.function, "file": self.file, "line": self.line,
                "time_ms": self.time_ms, "await_ms": self.await_ms,
                "children": [child.to_json() for child in self.children]}

    def walk(self) -> Iterator[ProfileNode]:
        """This node and every node below it, parents first."""
        yield self
        for child in self.children:
            yield from child.walk()

    @property
    def key(self) -> tuple[str, str, int]:
        """What nodes merge on across profiles: (function, file, line)."""
        return (self.function, self.file, self.line)


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """One request's async profile as the store holds it: who served it, when, how long it
    took, and its call tree (None for a stored tree that is not one)."""

    pid: int
    start: float  # epoch seconds the request started
    method: str
    route: str  # the template, as the agent named the request's route
    duration_ms: float
    tree: ProfileNode | None

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.route}"
