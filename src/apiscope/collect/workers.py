"""The target's worker processes as a collection sees them come and go.

Every process of the target gets an agent client (the agent may be there already: `run`, an
`instrument()` call, or a previous injection). With injection on, each new process gets an
injection too, started in the background. A process that exits loses its client and its stale
socket; at the end every process an injection was started in is detached, once, and the
failures are returned with the command that retries.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Protocol

import psutil

from apiscope.agent.paths import socket_dir
from apiscope.collectors.agent_client import AgentBatch, AgentClient
from apiscope.collectors.injections import DetachFailure
from apiscope.errors import ApiscopeError
from apiscope.model import UnfinishedRequest


class Client(Protocol):
    """An agent client as the collection uses it (`AgentClient`)."""

    def pull(self, max_requests: int | None = None, orphan_after: float | None = None,
             keep: tuple[int, float | None] | None = None,
             watch_share: float | None = None,
             profile_share: float | None = None) -> AgentBatch: ...

    def unfinished(self, older_than: float) -> list[UnfinishedRequest]: ...

    def close(self) -> None: ...


class Injector(Protocol):
    """The injections of one collection (`AgentInjections`)."""

    orphan_seconds: float | None

    @property
    def started(self) -> set[int]: ...

    @property
    def pauses(self) -> list[tuple[float, float]]: ...

    @property
    def servers(self) -> set[str]: ...

    @property
    def missing(self) -> dict[int, str]: ...

    def add(self, pid: int) -> None: ...

    def close(self) -> list[DetachFailure]: ...


class WorkerSet:
    """The processes pulled from, injected and detached during one collection.

    `clients` makes the agent client of a pid, `alive` tells whether a pid still runs and
    `remove_socket` cleans up after a process that exited: all three are seams for tests.
    """

    def __init__(self, *, injections: Injector | None = None, inject: bool = True,
                 clients: Callable[[int], Client] = AgentClient,
                 alive: Callable[[int], bool] = psutil.pid_exists,
                 remove_socket: Callable[[int], None] | None = None,
                 sweep: Callable[[], int] | None = None) -> None:
        self.injections = injections if inject else None
        self._new_client = clients
        self._alive = alive
        self._remove_socket = remove_socket if remove_socket is not None else remove_stale_socket
        self._sweep = sweep if sweep is not None else sweep_stale_sockets
        self._lock = threading.Lock()
        self._clients: dict[int, Client] = {}
        self._exited: set[int] = set()
        self._detached = False
        self.detach_failures: list[DetachFailure] = []

    @property
    def orphan_seconds(self) -> float | None:
        """Told to injected agents with every pull (None when nothing is injected)."""
        return self.injections.orphan_seconds if self.injections is not None else None

    @property
    def pulled(self) -> list[int]:
        """The processes whose agents are pulled from, in the order they came."""
        with self._lock:
            return list(self._clients)

    @property
    def injected(self) -> set[int]:
        """Every process an injection was started in, exited ones included."""
        return self.injections.started if self.injections is not None else set()

    @property
    def exited(self) -> set[int]:
        with self._lock:
            return set(self._exited)

    def clients(self) -> list[tuple[int, Client]]:
        """A snapshot to pull from: a worker may come or go meanwhile."""
        with self._lock:
            return list(self._clients.items())

    def add(self, pid: int) -> None:
        """A process to pull from, injected in the background when injection is on."""
        with self._lock:
            if pid in self._clients:
                return
            self._clients[pid] = self._new_client(pid)
        if self.injections is not None:
            self.injections.add(pid)  # sampling goes on meanwhile

    def remove(self, pid: int) -> None:
        """A process that exited: its client is closed and its stale socket removed (a worker
        that exits with os._exit leaves its socket behind)."""
        with self._lock:
            self._exited.add(pid)
            client = self._clients.pop(pid, None)
        if client is not None:
            client.close()
        self._remove_socket(pid)

    def close_clients(self) -> None:
        for _, client in self.clients():
            client.close()

    def agentless(self) -> dict[int, str]:
        """Why each process that runs no agent does not (an injection that failed)."""
        return self.injections.missing if self.injections is not None else {}

    def detach(self) -> list[DetachFailure]:
        """Detach every process injected (once), then clean up the sockets of the processes
        gone; returns the processes whose agent could not be detached."""
        if self._detached:
            return self.detach_failures
        self._detached = True
        if self.injections is not None:
            self.detach_failures = self.injections.close()
        for pid in sorted(self.exited | self.injected):
            if not self._alive(pid):
                self._remove_socket(pid)
        self._sweep()
        return self.detach_failures


STALE_AGE = 60.0  # seconds: a socket file younger than this may be an agent starting up


def sweep_stale_sockets(directory: str | None = None, min_age: float = STALE_AGE) -> int:
    """Remove the agent sockets in our socket directory that nobody listens on any more,
    left by processes killed with SIGKILL (an agent removes its socket on every other way
    out); returns how many. A socket is stale when connecting to it is refused; one younger
    than `min_age` is left alone (an agent binds its socket a moment before it listens).
    Never raises: this is housekeeping."""
    try:
        base = directory if directory is not None else socket_dir()
        entries = list(os.scandir(base))
    except (OSError, ApiscopeError):
        return 0
    removed, now = 0, time.time()
    for entry in entries:
        if not (entry.name.startswith("agent-") and entry.name.endswith(".sock")):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid() \
                or now - info.st_mtime < min_age:
            continue
        if _refused(entry.path):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


def _refused(path: str) -> bool:
    """Whether connecting to the Unix socket `path` is refused: nobody listens there."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def remove_stale_socket(pid: int) -> None:
    """Remove the agent socket of an exited process, unless a live agent answers on it (the
    pid reused by a new process with its own agent)."""
    try:
        candidates = AgentClient(pid).candidates
    except ApiscopeError:
        return
    for path in candidates:
        if os.path.exists(path) and _refused(path):
            try:
                os.unlink(path)
            except OSError:
                pass
