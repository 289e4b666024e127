"""`AgentClient`: pulls the in-process agent's records over its Unix socket.

Converts the agent's JSON (see `apiscope.agent.transport`) into the shared model.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from apiscope.agent.paths import SocketDirError, socket_path
from apiscope.errors import TargetError
from apiscope.model import AgentStats, QueryStat, RequestRecord, RouteInfo, ThreadPoolSample

MAX_RESPONSE_BYTES = 512 * 1024 * 1024  # a full ring buffer is tens of MB; this is a sanity cap


class AgentUnavailable(ConnectionError):
    """No agent answers on the socket (not injected yet, detached, or the process exited)."""


@dataclass(frozen=True, slots=True)
class AgentBatch:
    """What one pull returned: requests finished since the previous pull, and current state."""

    requests: list[RequestRecord]
    routes: list[RouteInfo]
    threadpool: ThreadPoolSample | None
    stats: AgentStats
    profiles: list[dict[str, Any]] = field(default_factory=list)


class AgentClient:
    """Talks to the agent of process `pid`; one connection, reopened when it breaks."""

    def __init__(self, pid: int, directory: str | None = None, timeout: float = 1.0) -> None:
        self.pid = pid
        self.timeout = timeout
        try:
            self.path = socket_path(pid, directory)
        except SocketDirError as exc:
            raise TargetError(str(exc)) from exc
        self._sock: socket.socket | None = None
        self._buffer = b""

    def available(self) -> bool:
        """True when an agent answers a ping on the socket."""
        if not os.path.exists(self.path):
            return False
        try:
            return bool(self.request({"op": "ping"}).get("ok"))
        except AgentUnavailable:
            return False

    def pull(self) -> AgentBatch:
        """Drain the agent's finished requests; raises AgentUnavailable when nobody answers."""
        return batch_from_json(self.request({"op": "pull"}), self.pid)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request line, read one response line (one retry on a stale connection)."""
        for attempt in (1, 2):
            try:
                return self._exchange(message)
            except (OSError, ValueError) as exc:
                self.close()
                if attempt == 2 or isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
                    raise AgentUnavailable(f"no agent answers at {self.path}: {exc}") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        response = json.loads(self._read_line())
        if not isinstance(response, dict):
            raise ValueError("agent response is not an object")
        if "error" in response:
            raise ValueError(f"agent error: {response['error']}")
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


def batch_from_json(data: dict[str, Any], pid: int | None = None) -> AgentBatch:
    """The model objects of one pull response."""
    pid = int(data.get("pid", pid or 0))
    ts = float(data.get("ts", time.time()))
    stats = data.get("stats") or {}
    pool = data.get("threadpool")
    return AgentBatch(
        requests=[_request(r, pid) for r in data.get("requests", [])],
        routes=[_route(r) for r in data.get("routes", [])],
        threadpool=ThreadPoolSample(
            ts=float(pool.get("ts", ts)), pid=pid, total_tokens=int(pool["total_tokens"]),
            borrowed_tokens=int(pool["borrowed_tokens"]), waiting=int(pool["waiting"]),
        ) if pool else None,
        stats=AgentStats(ts=ts, pid=pid, recorded=int(stats.get("recorded", 0)),
                         dropped=int(stats.get("dropped", 0)), errors=int(stats.get("errors", 0))),
        profiles=list(data.get("profiles", [])),
    )


def _request(r: dict[str, Any], pid: int) -> RequestRecord:
    return RequestRecord(
        pid=pid, start=float(r["start"]), duration_ms=float(r["duration_ms"]),
        method=str(r["method"]), route=str(r["route"]), status=int(r["status"]),
        exc_type=r.get("exc_type"), exc_file=r.get("exc_file"), exc_line=r.get("exc_line"),
        queries=tuple(QueryStat(statement=q[0], count=int(q[1]), total_ms=float(q[2]),
                                file=q[3], line=q[4]) for q in r.get("queries", ())),
    )


def _route(r: dict[str, Any]) -> RouteInfo:
    return RouteInfo(method=str(r["method"]), template=str(r["template"]),
                     handler=str(r["handler"]), file=str(r["file"]), line=int(r["line"]),
                     is_async=bool(r["is_async"]))
