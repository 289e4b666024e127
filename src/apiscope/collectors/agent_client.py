"""`AgentClient`: pulls the in-process agent's records over its Unix socket.

Converts the agent's JSON (see `apiscope.agent.transport`) into the shared model.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from apiscope.agent.paths import (
    SocketDirError,
    check_private_dir,
    mount_root,
    namespace_pid,
    socket_dir,
    socket_dir_for,
    socket_path,
)
from apiscope.collectors.oncpu import LineLooks
from apiscope.errors import TargetError
from apiscope.model import (
    AgentStats,
    Frame,
    GilSample,
    LoopLagSample,
    LoopStall,
    OffloadLooks,
    ProfileNode,
    QueryStat,
    RequestRecord,
    RouteInfo,
    StoredProfile,
    ThreadPoolSample,
    ThreadSpan,
    UnfinishedRequest,
)
from apiscope.source import class_line

MAX_RESPONSE_BYTES = 512 * 1024 * 1024  # a full ring buffer is tens of MB; this is a sanity cap


@dataclass(frozen=True, slots=True)
class WatchdogReport:
    """What the agent's watchdogs measured since the previous pull (see agent/watchdog.py)."""

    stalls: list[LoopStall]
    lag: list[LoopLagSample]  # one per event loop watched
    gil: GilSample | None
    cpu_seconds: float  # the watchdogs' own CPU time since they started (cumulative)
    errors: int
    # (system call number, address) a thread blocks in while it waits for the GIL (None: the
    # agent could not learn it); see agent/gilwatch.gil_futex and collectors/gillooks.py
    gil_futex: tuple[int, int] | None = None
    # (file, line, looks asleep, looks running) of the lines its threads were seen at (see
    # agent/threadlooks.py), since the previous pull
    sleeps: tuple[LineLooks, ...] = ()
    # (address of the GIL's state, offset of a thread state's ident) and {ident: native thread
    # id}: who holds the GIL, told from outside (agent/gilwatch.gil_holder_layout); None: unknown
    gil_holder: tuple[int, int] | None = None
    idents: dict[int, int] | None = None
    # (file, function, route, tasks): how many tasks running that function requests of that
    # route started (agent/loopwatch.py `_note_task`)
    tasks: tuple[tuple[str, str, str, int], ...] = ()


class AgentUnavailable(ConnectionError):
    """No agent answers on the socket (not injected yet, detached, or the process exited)."""


class AgentError(AgentUnavailable):
    """The agent answered, with an error of its own (`message`, in the agent's words).

    A kind of AgentUnavailable, so that a caller that only wants an answer treats it as none;
    a collector that reports failures tells it apart: the agent is there and says what broke.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"the agent answered with an error: {message}")
        self.message = message


@dataclass(frozen=True, slots=True)
class AgentBatch:
    """What one pull returned: requests finished since the previous pull, and current state."""

    requests: list[RequestRecord]
    routes: list[RouteInfo] | None  # None: the same as the last pull's
    threadpool: ThreadPoolSample | None
    stats: AgentStats
    # sampled requests' profiles, their trees kept as the agent's JSON (`PulledProfile`)
    profiles: list[PulledProfile] = field(default_factory=list)
    more: bool = False  # the agent holds more requests than one pull returns: pull again
    profiling: dict[str, Any] | None = None  # the agent's profiling status, when it says
    routing: dict[str, Any] | None = None  # {"source": "framework"|"inferred"|..., ...}
    watchdogs: WatchdogReport | None = None  # None from an agent without watchdogs
    # pool threads seen busy with each endpoint's handed-off work (none from an older agent)
    offloaded: list[OffloadLooks] = field(default_factory=list)
    # the threads that ran each endpoint's handed calls (none from an older agent)
    thread_spans: list[ThreadSpan] = field(default_factory=list)


class AgentClient:
    """Talks to the agent of process `pid`; one connection, reopened when it breaks."""

    def __init__(self, pid: int, directory: str | None = None, timeout: float = 1.0) -> None:
        self.pid = pid
        self.timeout = timeout
        # The agent names its socket with its pid as it sees it (a container's PID namespace).
        self.candidates = [socket_path(namespace_pid(pid), d)
                           for d in _directories(pid, directory)]
        self._sock: socket.socket | None = None
        self._connected: str | None = None  # the candidate an agent answered on
        self._buffer = b""
        self._routes_version: Any = None  # the version of the agent's route table we have

    @property
    def path(self) -> str:
        """The socket this client talks to: the one it connected to, else the first candidate
        that exists."""
        if self._connected is not None:
            return self._connected
        return next((path for path in self.candidates if os.path.exists(path)),
                    self.candidates[0])

    def available(self) -> bool:
        """True when an agent answers a ping on the socket."""
        if not os.path.exists(self.path):
            return False
        try:
            return bool(self.request({"op": "ping"}).get("ok"))
        except AgentUnavailable:
            return False

    def pull(self, max_requests: int | None = None, orphan_after: float | None = None,
             keep: tuple[int, float | None] | None = None,
             watch_share: float | None = None,
             profile_share: float | None = None) -> AgentBatch:
        """Drain the agent's finished requests (at most `max_requests`, else the agent's
        default); raises AgentUnavailable when nobody answers.

        `orphan_after` tells an injected agent how many seconds without a pull mean that its
        collector is gone (it then removes itself; see `apiscope.agent.orphan`). `keep`
        (every, slower_ms) asks it to keep one request in `every` from now on, and all of
        `slower_ms` or longer (see `apiscope.agent.recorder.Recorder.keep`); `watch_share`,
        the share of a core its loop watchdogs may spend following long passes (see
        `apiscope.agent.watchdog.Watchdogs.set_follow_share`); `profile_share`, the share of
        the clock its per-request profiles may sample (see
        `apiscope.agent.profiling.RequestProfiling.set_share`).
        """
        message: dict[str, Any] = {"op": "pull"}
        if self._routes_version is not None:  # the table is sent again only when it changed
            message["routes_version"] = self._routes_version
        if max_requests is not None:
            message["max"] = max_requests
        if orphan_after is not None:
            message["orphan_after"] = orphan_after
        if keep is not None:
            message["keep"], message["keep_slower_ms"] = keep
        if watch_share is not None:
            message["watch_share"] = watch_share
        if profile_share is not None:
            message["profile_share"] = profile_share
        # Our pid for the process, not the one it has in its container.
        answer = self.request(message)
        batch = batch_from_json({**answer, "pid": self.pid}, self.pid)
        self._routes_version = answer.get("routes_version")  # None from an older agent
        return batch

    def unfinished(self, older_than: float) -> list[UnfinishedRequest]:
        """The requests that have run `older_than` seconds or more with no response begun;
        raises AgentUnavailable when nobody answers, AgentError when the agent cannot tell
        (an agent of an older apiscope knows no such question)."""
        data = self.request({"op": "unfinished", "older_than": older_than})
        return unfinished_from_json(data.get("requests", ()), self.pid, time.time())

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request line, read one response line.

        A kept connection the agent has closed since (idle timeout, agent restarted) is
        reopened once. Nothing else is retried: after a timeout the agent may have drained
        a batch already, and asking again would not bring it back.
        """
        reused = self._sock is not None
        try:
            return self._exchange(message)
        except AgentError:
            raise  # the agent answered: the connection is fine, the message is its own
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.close()
            if not reused:
                raise AgentUnavailable(f"no agent answers at {self.path}: {exc}") from exc
        except (OSError, ValueError) as exc:
            self.close()
            raise AgentUnavailable(f"no agent answers at {self.path}: {exc}") from exc
        try:
            return self._exchange(message)
        except AgentError:
            raise
        except (OSError, ValueError) as exc:
            self.close()
            raise AgentUnavailable(f"no agent answers at {self.path}: {exc}") from exc

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._connected = None
        self._buffer = b""

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        """Connect to the first existing candidate an agent listens on. A socket file nobody
        listens on (connection refused) was left by an exited process whose pid this one
        reuses: the next candidate is tried (the target's own directory, where an app that
        instrumented itself listens)."""
        refused: OSError | None = None
        for path in [p for p in self.candidates if os.path.exists(p)] or self.candidates[:1]:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(path)
            except ConnectionRefusedError as exc:
                sock.close()
                refused = exc
                continue
            except OSError:
                sock.close()
                raise
            self._connected = path
            return sock
        assert refused is not None
        raise refused

    def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._sock is None:
            self._sock = self._connect()
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        response = json.loads(self._read_line())
        if not isinstance(response, dict):
            raise ValueError("agent response is not an object")
        if "error" in response:
            raise AgentError(str(response["error"]))
        return response

    def _read_line(self) -> bytes:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                raise ConnectionResetError("the agent closed the connection")
            self._buffer += chunk
            if len(self._buffer) > MAX_RESPONSE_BYTES:
                raise ValueError("agent response too large")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


def _directories(pid: int, directory: str | None) -> list[str]:
    """Where to look for the agent of `pid`: the directory given; else ours (where injection
    puts it, and where `apiscope run` targets inherit it from) and then the one the target's
    own environment names (an app that called `instrument()` in a shell unlike ours)."""
    if directory is not None:
        return [directory]
    try:
        found = [socket_dir()]
    except SocketDirError as exc:
        raise TargetError(str(exc)) from exc
    try:
        theirs = target_socket_dir(pid)
    except SocketDirError:
        return found  # a directory others can write into is no place to trust a socket from
    return found if theirs in found else [*found, theirs]


def target_socket_dir(pid: int, proc: str = "/proc") -> str:
    """The socket directory the agent in process `pid` uses: computed from that process's
    environment and uid, as the agent computes it, so that a collector running as another user
    (root attaching to a service account's server) looks in the right place. Falls back to
    our own `socket_dir()` when the process can't be read."""
    try:
        with open(f"{proc}/{pid}/environ", "rb") as f:
            raw = f.read()
        uid = os.stat(f"{proc}/{pid}").st_uid
    except OSError:
        return socket_dir()
    environ = dict(_env_pair(item) for item in raw.split(b"\0") if b"=" in item)
    root = mount_root(pid, proc)  # a container's files, as we reach them
    path = root + socket_dir_for(environ, uid, root)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return path  # no agent yet: the directory appears when one starts
    check_private_dir(path, info, owner=uid)
    return path


def _env_pair(item: bytes) -> tuple[str, str]:
    key, _, value = item.decode(errors="replace").partition("=")
    return key, value


def batch_from_json(data: dict[str, Any], pid: int | None = None) -> AgentBatch:
    """The model objects of one pull response."""
    pid = int(data.get("pid", pid or 0))
    ts = float(data.get("ts", time.time()))
    stats = data.get("stats") or {}
    pool = data.get("threadpool")
    return AgentBatch(
        requests=[_request(r, pid) for r in data.get("requests", [])],
        routes=[_route(r) for r in data["routes"]] if data.get("routes") is not None else None,
        threadpool=ThreadPoolSample(
            ts=float(pool.get("ts", ts)), pid=pid, total_tokens=int(pool["total_tokens"]),
            borrowed_tokens=int(pool["borrowed_tokens"]), waiting=int(pool["waiting"]),
        ) if pool else None,
        stats=AgentStats(ts=ts, pid=pid, recorded=int(stats.get("recorded", 0)),
                         dropped=int(stats.get("dropped", 0)), errors=int(stats.get("errors", 0)),
                         serve_cpu=float(stats.get("serve_cpu", 0.0)),
                         keep_every=int(stats.get("keep_every", 1))),
        profiles=[_profile(p, pid) for p in data.get("profiles", [])],
        more=bool(data.get("more", False)),
        profiling=data.get("profiling"),
        routing=data.get("routing"),
        watchdogs=watchdogs_from_json(data["watchdogs"], pid, ts) if data.get("watchdogs")
        else None,
        offloaded=_offloaded(data.get("offloaded"), pid, ts),
        thread_spans=_thread_spans(data.get("thread_spans"), pid),
    )


def _offloaded(value: Any, pid: int, ts: float) -> list[OffloadLooks]:
    """The agent's `offloaded` ([method, route, looks, cpu] each; an older agent's without
    cpu); malformed rows skipped."""
    rows = []
    for row in value if isinstance(value, list) else ():
        try:
            method, route, looks, *rest = row
            cpu = float(rest[0]) if rest else 0.0
            if (int(looks) > 0 or cpu > 0) and math.isfinite(cpu):
                rows.append(OffloadLooks(ts, pid, f"{method} {route}", max(0, int(looks)),
                                         max(0.0, cpu)))
        except (TypeError, ValueError):
            continue
    return rows


def _thread_spans(value: Any, pid: int) -> list[ThreadSpan]:
    """The agent's `thread_spans` ([tid, method, route, start, end, requests] each); malformed
    rows skipped."""
    rows = []
    for row in value if isinstance(value, list) else ():
        try:
            tid, method, route, start, end, count = row
            start, end = float(start), float(end)
            if math.isfinite(start) and math.isfinite(end) and end >= start and int(count) > 0:
                rows.append(ThreadSpan(pid, int(tid), f"{method} {route}", start, end,
                                       int(count)))
        except (TypeError, ValueError):
            continue
    return rows


def _frames(rows: Any) -> tuple[Frame, ...]:
    return tuple(Frame(str(f["function"]), str(f["file"]), int(f["line"])) for f in rows or ())


def unfinished_from_json(rows: Any, pid: int, ts: float) -> list[UnfinishedRequest]:
    """The model objects of an `unfinished` answer's requests."""
    return [UnfinishedRequest(pid=pid, ts=ts, method=str(r["method"]), route=str(r["route"]),
                              elapsed_ms=float(r["elapsed_s"]) * 1000.0,
                              awaiting=None if r.get("awaiting") is None else str(r["awaiting"]),
                              chain=_frames(r.get("await_chain")),
                              thread=_frames(r.get("thread_stack")))
            for r in rows]


def watchdogs_from_json(data: dict[str, Any], pid: int, ts: float) -> WatchdogReport:
    """The model objects of a pull's `watchdogs` part."""
    gil = data.get("gil")
    return WatchdogReport(
        stalls=[LoopStall(pid=pid, tid=int(s["tid"]), start=float(s["start"]),
                          duration_ms=float(s["duration_ms"]),
                          frames=tuple(Frame(str(f), str(file), int(line))
                                       for f, file, line in s.get("frames", ())),
                          cpu_ms=None if s.get("cpu_ms") is None else float(s["cpu_ms"]),
                          activity={str(k): int(v)
                                    for k, v in (s.get("activity") or {}).items()},
                          held=None if s.get("held") is None else str(s["held"]),
                          route=None if s.get("route") is None else str(s["route"]))
                for s in data.get("stalls", ())],
        lag=[LoopLagSample(ts=ts, pid=pid, probes=int(lag["probes"]),
                           p50_ms=float(lag["p50_ms"]), p99_ms=float(lag["p99_ms"]),
                           max_ms=float(lag["max_ms"]))
             for lag in data.get("loops", ())],
        gil=GilSample(ts=ts, pid=pid, seconds=float(gil["seconds"]),
                      wait_seconds=float(gil["wait_seconds"]),
                      acquisitions=int(gil["acquisitions"]),
                      max_wait_ms=float(gil["max_wait_ms"]),
                      runqueue_known=bool(gil.get("runqueue_known", True))) if gil else None,
        cpu_seconds=float(data.get("cpu_seconds", 0.0)),
        errors=int(data.get("errors", 0)),
        gil_futex=_futex(data.get("gil_futex")),
        sleeps=_line_looks(data.get("sleeps")),
        gil_holder=_futex(data.get("gil_holder")),
        idents=_idents(data.get("idents")),
        tasks=_task_routes(data.get("tasks")),
    )


def _idents(value: Any) -> dict[int, int] | None:
    """The agent's `idents` ([[ident, native thread id]...]) as a dict; malformed pairs
    skipped, None when there are none."""
    out = {}
    for pair in value if isinstance(value, list) else ():
        try:
            ident, tid = pair
            out[int(ident)] = int(tid)
        except (TypeError, ValueError):
            continue
    return out or None


def _line_looks(value: Any) -> tuple[LineLooks, ...]:
    """The agent's `sleeps` ([file, line, asleep, running, gil] each, without gil from an older
    agent); malformed rows skipped."""
    rows = []
    for row in value if isinstance(value, list) else ():
        try:
            file, line, asleep, running, *rest = row
            if len(rest) > 1:
                continue
            gil = int(rest[0]) if rest else 0
            rows.append(LineLooks(str(file), int(line), int(asleep), int(running), gil))
        except (TypeError, ValueError):
            continue
    return tuple(rows)


def _task_routes(value: Any) -> tuple[tuple[str, str, str, int], ...]:
    """The agent's `tasks` ([file, function, route, tasks] each); malformed rows skipped."""
    rows = []
    for row in value if isinstance(value, list | tuple) else ():
        try:
            file, function, route, tasks = row
            if isinstance(tasks, bool) or int(tasks) <= 0:
                continue
            rows.append((str(file), str(function), str(route), int(tasks)))
        except (TypeError, ValueError):
            continue
    return tuple(rows)


def _futex(value: Any) -> tuple[int, int] | None:
    """A pair of integers of the agent's (`gil_futex`: [system call number, address];
    `gil_holder`: [address, offset]), None when absent or malformed."""
    try:
        number, address = value
        return int(number), int(address)
    except (TypeError, ValueError):
        return None


_REQUEST_FIELDS = ("start", "duration_ms", "method", "route", "status", "exc_type",
                   "exc_file", "exc_line", "queries")


@dataclass(frozen=True, slots=True)
class PulledProfile:
    """A pulled profile, its fields typed where the agent's JSON is read and its call tree
    kept in that JSON (None when it is not a JSON object). The collector stores the tree as
    it came: typing each node on the way in and turning it back into JSON to store it was
    half of what taking in a pull cost on a saturated worker. `stored()` types it."""

    pid: int
    start: float
    method: str
    route: str
    duration_ms: float
    tree: dict[str, Any] | None

    def stored(self) -> StoredProfile:
        tree = ProfileNode.from_json(self.tree) if self.tree is not None else None
        return StoredProfile(self.pid, self.start, self.method, self.route, self.duration_ms,
                             tree)


def _profile(p: dict[str, Any], pid: int) -> PulledProfile:
    tree = p.get("tree")
    return PulledProfile(pid=pid, start=float(p["start"]), method=str(p["method"]),
                         route=str(p["route"]), duration_ms=float(p["duration_ms"]),
                         tree=tree if isinstance(tree, dict) else None)


def _request(r: list[Any] | dict[str, Any], pid: int) -> RequestRecord:
    """One request: an array in `_REQUEST_FIELDS` order (the agent's `RequestEntry`), or an
    object, as an agent of an earlier apiscope still running in a server sends it."""
    if isinstance(r, dict):
        r = [r.get(name) for name in _REQUEST_FIELDS]
    # An agent of an earlier apiscope sends no weight: it keeps every request.
    start, duration_ms, method, route, status, exc_type, exc_file, exc_line, queries = r[:9]
    weight = int(r[9]) if len(r) > 9 else 1
    first_byte = r[10] if len(r) > 10 else None  # nor the time to a stream's head
    return RequestRecord(
        pid=pid, start=float(start), duration_ms=float(duration_ms), method=str(method),
        route=str(route), status=int(status), exc_type=exc_type, exc_file=exc_file,
        exc_line=exc_line,
        queries=tuple(QueryStat(statement=q[0], count=int(q[1]), total_ms=float(q[2]),
                                file=q[3], line=q[4]) for q in queries or ()),
        weight=max(1, weight),
        first_byte_ms=float(first_byte) if first_byte is not None else None,
    )


def _route(r: dict[str, Any]) -> RouteInfo:
    view, view_file = str(r.get("view") or ""), str(r.get("view_file") or "")
    view_line = int(r.get("view_line") or 0)
    if view_file and ":" in view:  # the agent reads no source: its class line, from here
        view_line = class_line(view_file, view.partition(":")[2]) or view_line
    return RouteInfo(method=str(r["method"]), template=str(r["template"]),
                     handler=str(r["handler"]), file=str(r["file"]), line=int(r["line"]),
                     is_async=bool(r["is_async"]), view=view, view_file=view_file,
                     view_line=view_line)
