"""One `Agent` per process: the recorder, the socket server and what the middleware shares.

The agent's files may be loaded twice in one process: as `apiscope.agent` by `instrument()`
and as `apiscope_agent` by injection. `current_agent()` looks for an agent the other copy
already runs, so that one process never has two agents competing for one socket.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from .inflight import dump_state, unfinished
from .matched_routes import DEFERRED
from .middleware import AgentMiddleware, ASGIApp
from .offload import OffloadCounts, PoolTiming, ThreadSpans, install_pool_timing
from .orphan import OrphanWatch
from .paths import AppFiles, ensure_private_dir, socket_dir, socket_path
from .profiling import ProfilingOptions, RequestProfiling
from .queries import QueryHooks, install_query_hooks
from .recorder import Recorder
from .routes import RouteRegistry
from .threadpool import ThreadPoolProbe
from .transport import AgentServer
from .watchdog import Watchdogs

# Requests per pull: keeps each answer quick to encode (a few MB), so that a collector's read
# timeout is not spent waiting for it; a busier buffer takes a few pulls in a row.
MAX_BATCH = 20_000
_T = TypeVar("_T")
ORPHAN_CHECK_SECONDS = 1.0  # how often the server thread asks whether the collector is gone

__all__ = ["Agent", "current_agent", "shutdown_agent", "socket_dir", "socket_path"]


class Agent:
    """The in-process agent: wrap apps with `middleware()`, serve pulls after `start()`."""

    def __init__(self, directory: str | None = None, recorder: Recorder | None = None) -> None:
        self.directory = directory
        self.recorder = recorder if recorder is not None else Recorder()
        self.routes = RouteRegistry()
        self.threadpool = ThreadPoolProbe()
        self.app_files = AppFiles()
        # Sampled async profiles (dicts, see `profiling`); drained by each pull.
        self.profiles: deque[dict[str, Any]] = deque(maxlen=1000)
        self.profiling = RequestProfiling(self.profiles)  # options from APISCOPE_PROFILE_*
        self.query_hooks: QueryHooks | None = None
        self.pool_timing: PoolTiming | None = None
        self.watchdogs = Watchdogs()  # options from APISCOPE_WATCHDOG_*
        self.offloaded = OffloadCounts()  # pool threads seen busy per route (see `offload`)
        self.spans = ThreadSpans()  # the threads that ran each route's handed calls
        self.orphan: OrphanWatch | None = None  # injected agents only: see `orphan`
        self._server: AgentServer | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def socket_path(self) -> str:
        server = self._server
        return server.path if server is not None else socket_path(os.getpid(), self.directory)

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.running

    def start(self) -> None:
        """Serve pulls on `socket_path(getpid())`; a no-op when already serving."""
        with self._lock:
            if self._server is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self.query_hooks = install_query_hooks(self.app_files)
            self.pool_timing = install_pool_timing(self.app_files.is_app)
            directory = ensure_private_dir(self.directory) if self.directory else socket_dir()
            server = AgentServer(socket_path(self._pid, directory), self.respond,
                                 tick=self._tick, tick_every=ORPHAN_CHECK_SECONDS)
            server.start()
            self._server = server
            self.watchdogs.start()

    def _tick(self) -> None:
        """The server thread's periodic check: an injected agent whose collector is gone
        takes itself out (see `orphan`)."""
        if self.orphan is not None:
            self.orphan.check()

    def stop(self) -> None:
        """Stop serving and remove the socket file; the middleware keeps recording."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None and self._pid == os.getpid():
            server.stop()
        self.watchdogs.stop()
        if self.orphan is not None:
            self.orphan.stop()

    def after_fork_in_child(self) -> None:
        """A forked worker (gunicorn --preload) inherits no server thread: serve its own pid.

        Locks are replaced, since another thread of the parent may have held them at the fork.
        """
        self._lock = threading.Lock()
        inherited, self._server = self._server, None
        self.recorder.reset()  # the parent's requests and counters are the parent's
        self.offloaded.reset()
        self.spans.reset()
        self.profiles.clear()
        self.profiling.reset()
        self.watchdogs.after_fork()  # no thread of the parent's runs here
        if inherited is None:
            return
        inherited.abandon()  # the parent's socket: close our copies, leave the file alone
        try:
            self.start()
        except OSError:
            self.recorder.count_error()  # nothing to raise into: we run inside os.fork()

    def middleware(self, app: ASGIApp) -> AgentMiddleware:
        """Wrap an ASGI app; the wrapper records into this agent."""
        return AgentMiddleware(app, self.recorder, routes=self.routes,
                               threadpool=self.threadpool, query_hooks=self._hooks(),
                               app_files=self.app_files, profiling=self.profiling,
                               watchdogs=self.watchdogs, offloaded=self.offloaded,
                               spans=self.spans)

    def configure_profiling(self, options: ProfilingOptions) -> None:
        """Change which requests are profiled (`every=0` stops profiling); apps already
        wrapped follow at once."""
        self.profiling.configure(options)

    def add_routes(self, app: Any) -> None:
        """Register the route table of a Starlette/FastAPI app (Mounts included)."""
        self.routes.add_app(app)

    def respond(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one collector request (see `transport`)."""
        op = request.get("op")
        if op == "ping":
            return {"pid": os.getpid(), "ok": True}
        if op == "pull":
            if self.orphan is not None:
                self.orphan.saw_pull(request.get("orphan_after"))
            limit = request.get("max", MAX_BATCH)
            if not isinstance(limit, int) or limit < 1:
                raise ValueError(f"max must be a positive integer, not {limit!r}")
            if "keep" in request:  # the share of requests to keep from now on (see Recorder)
                self.recorder.keep(request["keep"], request.get("keep_slower_ms"))
            if "watch_share" in request:  # what the loop watchdogs may spend following
                self.watchdogs.set_follow_share(request["watch_share"])
            if "profile_share" in request:  # what the profiles' sampled slices may take
                self.profiling.set_share(request["profile_share"])
            return self.pull(limit, request.get("routes_version"))
        if op == "dump":
            return dump_state()
        if op == "unfinished":  # requests running this long with no response yet
            older_than = request.get("older_than", 1.0)
            if not isinstance(older_than, (int, float)) or older_than < 0:
                raise ValueError(f"older_than must be seconds >= 0, not {older_than!r}")
            return {"pid": os.getpid(),
                    "requests": unfinished(self.watchdogs.loops(), float(older_than))}
        raise ValueError(f"unknown op {op!r}")

    def pull(self, limit: int = MAX_BATCH, routes_known: Any = None) -> dict[str, Any]:
        """The pull response: at most `limit` requests, `more` when the batch was full and
        others are left; the route table unless the collector has it already (`routes_known`,
        the version it has)."""
        # Side work first, guarded: a failure here must not cost the collector its batch.
        pool = self._guarded(self._refresh_and_sample)
        # Each request goes as its `RequestEntry` tuple, a JSON array in field order: no dict
        # per request and no key names to encode (a third of the encoding time and half the
        # bytes of objects, at thousands of requests a second).
        requests = self.routes.resolve_entries(self.recorder.drain(limit))
        try:  # off the request path: arm the routes whose turn to be profiled has come
            self.profiling.load()
            self.profiling.observe_batch(requests)
        except Exception:
            self.profiling.errors += 1
        profiles = [self.profiles.popleft() for _ in range(len(self.profiles))]
        answer = {
            "pid": os.getpid(),
            "ts": time.time(),
            "requests": requests,
            "routes_version": self.routes.version,
            "threadpool": pool,
            "stats": {"recorded": self.recorder.recorded, "dropped": self.recorder.dropped,
                      "skipped": self.recorder.skipped, "keep_every": self.recorder.keep_every,
                      # the answers' CPU so far (this one's encoding counts in the next)
                      "serve_cpu": self._server.cpu_seconds if self._server else 0.0,
                      "errors": self.recorder.errors + self.routes.errors
                      + (self.query_hooks.errors if self.query_hooks else 0)
                      + (self.pool_timing.errors if self.pool_timing else 0)},
            "profiling": self.profiling.stats(),  # off, or why pyinstrument is unavailable
            "routing": self.routes.routing(),  # framework templates, or paths grouped
            "profiles": profiles,
            "watchdogs": self._guarded(self.watchdogs.pull),  # loop lag, stalls, GIL wait
            # [method, route, looks, cpu]: pool threads seen busy with requests' handed-off
            # work, and the CPU seconds of their timed calls (see `offload`)
            "offloaded": self._guarded(self._offloaded),
            # [tid, method, route, first start, last end, requests]: the threads that ran
            # routes' handed calls (Django's thread per request; see `offload.ThreadSpans`)
            "thread_spans": self._guarded(self._thread_spans),
            # A full batch left others behind: the collector pulls again at once. Requests
            # that ended while this one was answered wait for the next pull (on a busy
            # server there always are some: pulling again for them doubled the pulls).
            "more": len(requests) >= limit and len(self.recorder) > 0,
        }
        if routes_known != self.routes.version:
            answer["routes"] = list(self.routes.rows)
        return answer

    def _offloaded(self) -> list[list[Any]]:
        return [[method, self._named(method, route), looks, cpu]
                for method, route, looks, cpu in self.offloaded.drain()]

    def _thread_spans(self) -> list[list[Any]]:
        return [[tid, method, self._named(method, route), start, end, count]
                for tid, method, route, start, end, count in self.spans.drain()]

    def _named(self, method: str, route: str) -> str:
        """A route recorded as a path whose router is asked at pull time, named."""
        return self.routes.resolve(method, route) if route[:1] == DEFERRED else route

    def _refresh_and_sample(self) -> dict[str, Any] | None:
        if self.query_hooks is not None:
            self.query_hooks.install()  # hook database libraries imported since the last pull
        if self.pool_timing is not None:
            self.pool_timing.install()  # and pools (anyio's) imported since
        self.routes.refresh_if_due()  # routes added since instrument(app)
        return self.threadpool.sample()

    def _guarded(self, work: Callable[[], _T]) -> _T | None:
        try:
            return work()
        except Exception:
            self.recorder.count_error()
            return None

    def _hooks(self) -> QueryHooks:
        if self.query_hooks is None:
            self.query_hooks = install_query_hooks(self.app_files)
        return self.query_hooks


_AGENT: list[Agent] = []  # this copy's process-wide agent, at most one
_COPIES = ("apiscope.agent.runtime", "apiscope_agent.runtime")


def current_agent(directory: str | None = None) -> Agent:
    """The process-wide agent, created on first use (not started: call `start()`)."""
    if not _AGENT:
        _AGENT.append(_other_copys_agent() or _new_agent(directory))
    return _AGENT[0]


def shutdown_agent() -> None:
    """Stop the process-wide agent and forget it; wrapped apps keep serving."""
    while _AGENT:
        _AGENT.pop().stop()


def _other_copys_agent() -> Agent | None:
    for name in _COPIES:
        module = sys.modules.get(name)
        if module is not None and module is not sys.modules[__name__]:
            found: list[Agent] = getattr(module, "_AGENT", [])
            if found:
                return found[0]
    return None


def _new_agent(directory: str | None) -> Agent:
    agent = Agent(directory)
    atexit.register(agent.stop)  # leave no socket file behind a clean exit
    os.register_at_fork(after_in_child=agent.after_fork_in_child)
    return agent
