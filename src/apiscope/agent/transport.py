"""`AgentServer`: a daemon thread answering the collector on a Unix socket.

Protocol: newline-delimited JSON. The collector writes one request object per line
(`{"op": "pull"}` or `{"op": "ping"}`) and reads one response object per line. A pull may
say which requests to keep from then on (`"keep": n`, one in n at random, and
`"keep_slower_ms"`: slower ones always; see `recorder.Recorder`), the version of the route
table it has (`"routes_version"`: the answer carries `"routes"` only when its own differs), and
the share of a core the
loop watchdogs may spend following long passes (`"watch_share"`, see
`watchdog.Watchdogs.set_follow_share`) and the share of the clock the per-request profiles may
sample (`"profile_share"`, see `profiling.RequestProfiling.set_share`). It answers
`{"pid", "ts", "requests": [[start, duration_ms, method, route, status, exc_type, exc_file,
exc_line, queries, weight, first_byte_ms], ...], "routes_version": n, "routes": [...],
"threadpool": {...} | null,
"stats": {"recorded", "dropped", "skipped", "keep_every", "serve_cpu", "errors"},
"profiles": [...], "profiling": {...},
"watchdogs": {...} | null, "offloaded": [...], "thread_spans": [...], "more": bool}`
(`profiling`: the per-request profiler's status,
e.g. why pyinstrument is unavailable in the target; `watchdogs`: loop lag, loop stalls and the
GIL wait measured since the previous pull, see `watchdog.Watchdogs.pull`); an unknown op
answers `{"error": "..."}`. Requests are drained by the pull: each is delivered once, at most
`"max"` (optional in the request; 20000 by default) per pull, `more` saying others wait.
`{"op": "dump"}` answers what the process is doing now: the requests in flight with their
await chains, and every thread's stack (see `inflight.dump_state`). `{"op": "unfinished",
"older_than": seconds}` answers `{"pid", "requests": [...]}`: the requests timed by the agent
that have run that long with no response begun, what each awaits and where (see
`inflight.unfinished`); the collector asks once, as it ends.

Only this process's own user and root may talk to it: the socket's directory is private to
that user already, and each connection's peer uid (`SO_PEERCRED`) is checked as well: a second
lock, for a directory named by the environment or reached by root through a container's files.

The request path never touches this thread: it only appends to the recorder's deque. A slow or
absent collector therefore costs nothing but dropped entries once the buffer is full.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

Responder = Callable[[dict[str, Any]], dict[str, Any]]

MAX_REQUEST_BYTES = 64 * 1024  # requests are tiny; anything longer is not a collector
CLIENT_TIMEOUT = 30.0  # an idle connection is closed after this long without a request
SEND_TIMEOUT = 5.0  # a client that does not read its answer for this long is dropped
MAX_CLIENTS = 4


class _Client:
    """One connection: what it sent so far of its next request line, and when it last spoke."""

    __slots__ = ("buffer", "conn", "last")

    def __init__(self, conn: socket.socket, now: float) -> None:
        self.conn = conn
        self.buffer = b""
        self.last = now


class AgentServer:
    """Serves `respond(request)` on a 0600 Unix socket at `path`, from one thread.

    That thread also serves every connection (at most `MAX_CLIENTS`; a partial request never
    holds the others up) and calls `tick()`, when given, every `tick_every` seconds: every
    thread of the agent's is one more for a stack sampler to read at each of its samples, and
    one more wake-up in a process that serves requests.
    """

    def __init__(self, path: str, respond: Responder, *,
                 tick: Callable[[], object] | None = None, tick_every: float = 1.0) -> None:
        self.path = path
        self._respond = respond
        self._tick = tick
        self._tick_every = tick_every
        self._listener: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None  # stop() wakes select()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # The connections being served: the server thread's, read by stop() to end them.
        self._clients: dict[socket.socket, _Client] = {}
        self.cpu_seconds = 0.0  # CPU time spent answering (building and encoding responses)

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _unlink_stale(self.path)
            listener.bind(self.path)
            # The directory is private already; 0600 on the socket is the second lock.
            os.chmod(self.path, 0o600)
            listener.listen(8)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._wake = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="apiscope-agent", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._wake is not None:
            self._wake[1].send(b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for conn in list(self._clients):  # a collector's open connection ends here too
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._listener is not None:
            self._listener.close()
        for sock in self._wake or ():
            sock.close()
        self._wake = None
        if self._listener is None:
            return  # never bound: the file at path (if any) is someone else's
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def abandon(self) -> None:
        """Close this process's copies of the sockets without touching the socket file: for a
        forked child, whose parent still serves on it (the thread was not forked along)."""
        for sock in (self._listener, *(self._wake or ())):
            if sock is not None:
                sock.close()
        self._listener, self._wake, self._thread = None, None, None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _serve(self) -> None:
        assert self._listener is not None and self._wake is not None
        clients = self._clients
        next_tick = time.monotonic() + self._tick_every
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._listener, selectors.EVENT_READ)
                selector.register(self._wake[0], selectors.EVENT_READ)
                while not self._stopping.is_set():
                    if self._tick is not None:
                        timeout: float | None = max(0.0, next_tick - time.monotonic())
                    else:  # idle connections are still dropped in time
                        timeout = CLIENT_TIMEOUT if clients else None
                    for key, _ in selector.select(timeout):
                        if self._stopping.is_set():
                            break
                        if key.fileobj is self._listener:
                            self._accept(selector)
                        elif key.fileobj in clients:
                            self._readable(selector, clients[key.fileobj])
                    now = time.monotonic()
                    for client in [c for c in clients.values() if now - c.last > CLIENT_TIMEOUT]:
                        self._drop(selector, client)
                    if self._tick is not None and now >= next_tick and \
                            not self._stopping.is_set():
                        next_tick = now + self._tick_every
                        try:
                            self._tick()
                        except Exception:
                            pass  # a periodic check of the agent's: never into the app
        finally:
            for conn in list(clients):
                conn.close()
            clients.clear()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        # A cap, so that a flood of connections can't fill the target with sockets.
        if not peer_allowed(conn) or len(self._clients) >= MAX_CLIENTS:
            conn.close()
            return
        conn.settimeout(SEND_TIMEOUT)  # reads come when select says so: only sends can wait
        self._clients[conn] = _Client(conn, time.monotonic())
        selector.register(conn, selectors.EVENT_READ)

    def _readable(self, selector: selectors.BaseSelector, client: _Client) -> None:
        try:
            data = client.conn.recv(MAX_REQUEST_BYTES)
            if not data:  # the collector went away
                raise ConnectionError
            client.buffer += data
            client.last = time.monotonic()
            while b"\n" in client.buffer and not self._stopping.is_set():
                line, client.buffer = client.buffer.split(b"\n", 1)
                client.conn.sendall(self._answer(line))
            if len(client.buffer) > MAX_REQUEST_BYTES:
                raise ValueError("request too long")  # not a collector
        except (OSError, ValueError):
            self._drop(selector, client)

    def _drop(self, selector: selectors.BaseSelector, client: _Client) -> None:
        self._clients.pop(client.conn, None)
        try:
            selector.unregister(client.conn)
        except (KeyError, ValueError, OSError):
            pass
        client.conn.close()

    def _answer(self, line: bytes) -> bytes:
        began = time.thread_time()
        try:
            return self._encode_answer(line)
        finally:
            # Two collectors answered at once may lose an addition: a figure, not a ledger.
            self.cpu_seconds += time.thread_time() - began

    def _encode_answer(self, line: bytes) -> bytes:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
            response = self._respond(request)
        except ValueError as exc:
            response = {"error": f"bad request: {exc}"}
        except Exception as exc:  # the agent's own failure: tell the collector, keep serving
            response = {"error": f"{type(exc).__name__}: {exc}"}
        return json.dumps(response, separators=(",", ":")).encode() + b"\n"


def peer_allowed(conn: socket.socket) -> bool:
    """Whether the process at the other end runs as our user or as root."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):  # no SO_PEERCRED (not Linux): the directory guards it
        return True
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (0, os.getuid(), os.geteuid())


def _unlink_stale(path: str) -> None:
    """Remove a socket file left by a dead process with our pid (pids are reused)."""
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return
    with probe:
        try:
            probe.connect(path)
        except FileNotFoundError:
            return
        except ConnectionRefusedError:
            os.unlink(path)
            return
    raise OSError(f"another agent is already serving {path}")
