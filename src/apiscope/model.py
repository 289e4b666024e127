"""Plain data shared by the collectors, the session store, the analysis and the exporters.

Everything here is a frozen dataclass of builtins (a frame, the most numerous, is a named
tuple): collectors produce these, the store persists them, and analysis rules read them back.
No behaviour beyond small derived properties.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple


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


class Frame(NamedTuple):
    """One stack frame as py-spy reports it; `line` is the line executing in that frame.

    A named tuple rather than a dataclass: stacks of them key the dictionaries that count
    samples, store stacks and attribute them, and a tuple hashes in C (a 60-frame stack in
    0.9 us, against 6.5 us through a dataclass's generated `__hash__`)."""

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
    # (looks, looks blocked on the GIL) of each (pid, tid) looked at (collectors/gillooks.py).
    thread_gil: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    # Looks that found a thread of the process waiting for the GIL, per (pid, tid) of the
    # thread holding it then (tid 0: one the agent did not name; collectors/gillooks.py).
    gil_holders: dict[tuple[int, int], int] = field(default_factory=dict)
    # CPU seconds of threads Python does not run, per (pid, tid, frames) of the request
    # thread's stack waiting in the C call; (pid, 0, ()) not placed (collectors/native.py).
    native_cpu: dict[tuple[int, int, tuple[Frame, ...]], float] = field(default_factory=dict)
    # The share of the host's CPU time (all CPUs, every process) in use over the window.
    host_busy: float | None = None
    # The (pid, tid) the kernel first read at the window's end: started within it.
    thread_born: frozenset[tuple[int, int]] = frozenset()


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
    # The share of the kernel's looks that found the thread waiting for the GIL (None: not
    # looked at, or a session from before the looks).
    gil_share: float | None = None


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
    weight: int = 1  # the requests it stands for: n when the agent kept one in n
    # A streamed response (its body in several messages): the time to its head, the latency
    # the client waited; the stream's own length is `duration_ms`. None for other responses.
    first_byte_ms: float | None = None

    @property
    def latency_ms(self) -> float:
        """How long the client waited for the response: to a stream's head, else the whole."""
        return self.first_byte_ms if self.first_byte_ms is not None else self.duration_ms

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
    # The application's class serving the route when the handler is a method it inherits from
    # a library (a DRF viewset's `list`, a Django generic view's `get`): where to look, since
    # the handler's own file is the library's. Empty otherwise.
    view: str = ""  # "module:qualname"
    view_file: str = ""
    view_line: int = 0

    @property
    def function(self) -> str:
        """The handler's own name: `list` for `tracker.views:TicketViewSet.list`."""
        return self.handler.rpartition(":")[2].rpartition(".")[2]

    @property
    def app_handler(self) -> str:
        """"module:qualname" of the handler as the application has it: its class with the
        method it inherits (`tracker.views:IssueList.get`, not Django's `BaseListView.get`)."""
        return f"{self.view}.{self.function}" if ":" in self.view else self.handler


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
    serve_cpu: float = 0.0  # CPU seconds the agent spent answering pulls (not stored)
    keep_every: int = 1  # the agent keeps one request in this many (errors and slow: all)


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
class LoopStall:
    """The event loop ran no callback for `duration_ms` (measured in the target)."""

    pid: int
    tid: int  # the loop thread's native id
    start: float  # epoch seconds when the loop was last seen running
    duration_ms: float
    frames: tuple[Frame, ...]  # the loop thread's stack during the stall, root first
    cpu_ms: float | None = None  # the loop thread's CPU time during the stall
    # What the kernel said the loop thread was doing at each look during the stall: "cpu" (on
    # a CPU), "nogil" (on a CPU without the GIL: the watchdog took it at once as it woke, so
    # C code that released it ran), "queue" (ready, waiting for a CPU: more run-queue than CPU
    # time since the last look), "sleep", "io", "gil" (waiting for the GIL, where the agent
    # knew its futex), "lock" (a lock or a condition; or the GIL, where it did not).
    activity: dict[str, int] = field(default_factory=dict)
    # Who held the loop, from the agent's looks at a timed pass or a late probe: "one" (one
    # task at two looks or more in a row: its stack is the one here), "many" (different tasks
    # or callbacks: the loop busy with many things, no stack), "glimpse" (one look: not
    # proven), "gc" (the garbage collector ran for half of the pass or more: no code's hold),
    # None (not followed, or a session written before this was told).
    held: str | None = None
    # The route ("METHOD TEMPLATE") of the request whose task held the loop, where the agent
    # found one at its looks and the framework had routed it; None otherwise.
    route: str | None = None

    @property
    def looks_asleep(self) -> int:
        """Looks that found the loop thread asleep or in I/O (not on a lock: the GIL is one)."""
        return self.activity.get("sleep", 0) + self.activity.get("io", 0)

    @property
    def looks_running(self) -> int:
        """Looks that found it on a CPU or ready for one."""
        return sum(self.activity.get(kind, 0) for kind in ("cpu", "nogil", "queue"))


@dataclass(frozen=True, slots=True)
class UnfinishedRequest:
    """A request still running when the collection ended, its response not begun (the agent's
    answer to `unfinished`, see `apiscope.agent.inflight.unfinished`)."""

    pid: int
    ts: float  # when it was seen (epoch seconds)
    method: str
    route: str
    elapsed_ms: float
    awaiting: str | None  # what its coroutine waited for (None: running on the loop then)
    chain: tuple[Frame, ...]  # the innermost frames its coroutine was suspended in, outer first
    thread: tuple[Frame, ...] = ()  # the stack of the thread running it (a sync handler's)

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.route}"


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
class ThreadSpan:
    """A thread that ran calls an endpoint's requests handed to a pool (`agent/offload.py`,
    `ThreadSpans`), over one pull: from the first such request's start to the last one's end
    (epoch seconds). Django's ASGI handler runs each request's sync code in a thread of its
    own: such a thread's every sample is that request's."""

    pid: int
    tid: int
    endpoint: str
    start: float
    end: float
    requests: int


@dataclass(frozen=True, slots=True)
class OffloadLooks:
    """How often the agent's looks found a pool thread busy with work an endpoint's requests
    handed to it with no frame of the app on its stack (`agent/offload.py`), and the CPU
    seconds those requests' handed calls used by their threads' clocks (timed, `PoolTiming`),
    over one pull: what the pool's offloaded CPU is shared by (`analysis.cpu`)."""

    ts: float
    pid: int
    endpoint: str
    looks: int
    cpu: float = 0.0


# CPython's default switch interval (sys.getswitchinterval()): the longest a thread that asked
# for the GIL waits for the one running Python to drop it; GIL waits are judged against it.
SWITCH_INTERVAL = 0.005


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
