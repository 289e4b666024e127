"""`AgentMiddleware`: the pure-ASGI wrapper that times each HTTP request and records it.

It wraps whatever ASGI callable the server calls (any framework, or none). The route comes
from what the framework left in the scope once the app returned: Starlette's matched route
(`scope["route"]`), Litestar's `scope["path_template"]`, Django's resolver match on the request
(see `django_routes`); Quart's, Falcon's and Flask's routers (Flask mounted in a Starlette app
through a WSGI adapter) leave nothing there, so their requests are matched when the collector
pulls (see `matched_routes`); an app that names no route gets its raw paths grouped
(`pathgroups`).

The request path does no I/O, takes no lock and allocates little: one `_Request` (the
request's timing, and the statements the query hooks count into it), its `watched_send` bound
and, after the response, one tuple appended to the recorder's deque. Whatever can wait is
done by the agent's socket thread when the collector pulls: counting requests per route to arm
profiles, and (in `inflight`) finding the requests in flight from the tasks' frames when a
dump is asked for (what this path costs a server is measured in docs/benchmarks.md, "paired").
Everything the agent itself does is inside try/except: its failures are counted, never seen by
a request.
"""

from __future__ import annotations

import sys
import time
from asyncio import _get_running_loop
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import Token
from types import TracebackType
from typing import Any

from .django_routes import REQUEST_KEY, DjangoTemplates, install_request_hook
from .failures import FAILURE_KEY
from .failures import listen as listen_for_failures
from .frameworks import DJANGO, LITESTAR, STARLETTE, apps_inside
from .loopwatch import SERVING
from .matched_routes import DEFERRED, UNMATCHED
from .offload import OFFLOAD, OffloadCounts, ThreadSpans
from .pathgroups import PathGrouper
from .paths import AppFiles
from .profiling import ProfileRun, RequestProfiling
from .queries import CURRENT, QueryHooks, RequestQueries
from .recorder import Recorder, RequestEntry
from .routes import INFERRED, RouteRegistry, effective_template, template_of
from .threadpool import ThreadPoolProbe
from .watchdog import Watchdogs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_NESTED = "apiscope.recording"
_UNSEEN = object()
_new = object.__new__
_MISSING = Token.MISSING
# `SERVING`'s methods bound once: looked up on the variable, each call would bind them anew.
_serve, _unserve = SERVING.set, SERVING.reset


def _is_mount(route: Any) -> bool:
    return getattr(route, "routes", None) is not None and not hasattr(route, "endpoint")


def _route_context(scope: Scope) -> Any:
    """A route of a router FastAPI included: the prefixed path is in its effective context."""
    fastapi_scope = scope.get("fastapi")
    return fastapi_scope.get("effective_route_context") if fastapi_scope else None


def _noting_response(send: Send, profiler: Any) -> Send:
    """`send` that tells a profiled request's profiler when the response's last body message
    goes out: what the app runs after it (Starlette's background tasks) is no part of the
    request's latency (see `profiler.SliceProfiler.responded`). Only profiled requests pay."""
    def noting(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            profiler.responded()
        return send(message)
    return noting


class _Request(RequestQueries):
    """One request in flight: when it came in, what its `watched_send` saw of its response
    (its status, when its head went out, whether its body came in several messages, its end),
    and, as the `RequestQueries` the query hooks find in `CURRENT`, its statements. `inflight`
    finds it in the middleware's frame when a dump is asked for. It is also its task's
    `SERVING`, its `scope` the request's while it is served. Contexts copied while it was
    served keep it once it has ended (see `loopwatch.SERVING`): what it refers to is dropped
    then (`_finish`).

    The middleware makes it field by field (`AgentMiddleware.__call__`), not through
    `__init__`: a Python `__init__` is a call from C for each request. The fields the query
    hooks and the pool looks write (`stats`, `in_orm`, `offloaded`, `pool_cpu`, `threads`) are
    set only for a request put in `CURRENT` (`hooked`), the one way those find it.
    """

    # `handled` is set only for a 5xx (read with a default): unset, it costs a request nothing.
    __slots__ = ("called", "chunks", "end", "handled", "head", "middleware", "offloaded",
                 "pool_cpu", "scope", "send", "status", "threads")
    handled: tuple[BaseException, TracebackType | None]  # the exception and its traceback

    def __init__(self, called: float, scope: Scope | None = None) -> None:
        self.scope: Scope | None = scope
        self.called = called
        self.end: float | None = None
        self.head: float | None = None
        self.status = 0
        self.chunks = 0  # body messages that carried bytes, once one said more would follow
        self.send: Send | None = None  # the server's
        self.middleware: AgentMiddleware | None = None
        self.hooked()

    def hooked(self) -> None:
        """Set what the query hooks and the pool looks write (the request goes in `CURRENT`)."""
        self.offloaded = 0  # looks that found a pool thread busy with its work (`offload`)
        self.pool_cpu = 0.0  # CPU seconds of its calls handed to pools, timed (`offload`)
        self.threads: list[int] | None = None  # the threads that ran its handed calls
        self.stats = None
        self.in_orm = 0

    # A method, bound once a request, rather than a closure (a function and its cells): it
    # returns the server's own awaitable, so no coroutine of ours is created, and none is
    # resumed each time the server's send suspends.
    def watched_send(self, message: Message) -> Awaitable[None]:
        """The `send` the app is given: notes the response's status, head, chunks and end."""
        try:
            kind = message["type"]
            if kind == "http.response.start":
                status = self.status = int(message["status"])
                clock = self.middleware._clock  # type: ignore[union-attr]
                self.head = clock()
                if status >= 500:
                    # An error handler answering from its `except` block (Starlette's and
                    # FastAPI's for an HTTPException or a handler of the app's, a view
                    # catching what it raised): the exception it handles is this 5xx's cause,
                    # kept with its traceback (Starlette drops it once sent).
                    handled = sys.exc_info()[1]
                    if handled is not None:
                        self.handled = (handled, handled.__traceback__)
            elif kind == "http.response.body":
                if message.get("more_body", False):
                    if message.get("body"):
                        self.chunks += 1
                else:
                    clock = self.middleware._clock  # type: ignore[union-attr]
                    self.end = clock()
                    if self.chunks and message.get("body"):
                        self.chunks += 1
        except Exception:
            if self.middleware is not None:
                self.middleware._count_error()
        return self.send(message)  # type: ignore[misc]


class AgentMiddleware:
    """Records method, route template, status, timing, exception and queries of each request.

    A request's time runs from the call (the server calls the app once the request head has
    arrived, so this is where the app's first receive would start) to the last response body
    message; a response whose body comes in several messages (a stream) also has the time to
    its head, `first_byte_ms`. The call, not a wrapped first `receive()`: a streaming
    response's disconnect listener makes the first receive of a GET only after the handler
    ran, hiding its time.

    `clock` is a monotonic clock in seconds; start times are converted to epoch seconds with
    one offset to `wall_clock` taken at construction, so each request reads the clock only.
    """

    def __init__(self, app: ASGIApp, recorder: Recorder, *,
                 routes: RouteRegistry | None = None,
                 threadpool: ThreadPoolProbe | None = None,
                 query_hooks: QueryHooks | None = None,
                 app_files: AppFiles | None = None,
                 profiling: RequestProfiling | None = None,
                 watchdogs: Watchdogs | None = None,
                 offloaded: OffloadCounts | None = None,
                 spans: ThreadSpans | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.recorder = recorder
        self.routes = routes if routes is not None else RouteRegistry()
        self.threadpool = threadpool if threadpool is not None else ThreadPoolProbe()
        self.query_hooks = query_hooks
        self.app_files = app_files or (query_hooks.app_files if query_hooks else AppFiles())
        # An application installed into site-packages is known from its route table.
        self.routes.listen(self.app_files.learn_routes)
        self.profiling = profiling
        self.watchdogs = watchdogs
        self.offloaded = offloaded if offloaded is not None else OffloadCounts()
        self.spans = spans if spans is not None else ThreadSpans()
        self._offload = OFFLOAD
        self._clock = clock
        self._epoch_offset = wall_clock() - clock()
        self._last_app: Any = None
        self._loop: Any = _UNSEEN  # the loop of the last request
        self._named_by_starlette = False
        self._paths = PathGrouper()
        self._django = DjangoTemplates()
        self.injected = False  # put in front of a live server by `bootstrap`: detach removes it
        if watchdogs is not None:
            watchdogs.name_routes_with(self.served_route)
        self._prepare(app)

    def _prepare(self, app: ASGIApp) -> None:
        """Register the route tables of the framework apps inside `app`; let Django's handler
        leave each request (and so its resolver match) in the scope; listen for the exceptions
        the frameworks answer 500 for themselves (`failures`)."""
        try:
            for framework, inner in apps_inside(app):
                self.routes.add_app(inner)
                if framework == DJANGO:
                    install_request_hook(inner)
                listen_for_failures(framework, inner)
        except Exception:  # an app we misread is still served and timed, only unnamed
            self._count_error()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _NESTED in scope:
            await self.app(scope, receive, send)
            return
        # An agent further in (instrument() and injection both, or an instrumented sub-app in
        # a Mount) sees this key and stands back: each request is recorded once, outermost.
        scope[_NESTED] = True
        # (Attributes called through a local: a call of an instance's attribute is looked up
        # the slow way each time, not as a method of its class.)
        clock = self._clock
        request = _new(_Request)  # its fields one by one: see `_Request`
        request.called = clock()
        request.scope = scope
        request.status = request.chunks = 0
        request.end = request.head = None
        request.send = send
        request.middleware = self
        root_path = scope.get("root_path", "")
        token = run = None
        try:
            profiling = self.profiling
            if profiling is not None and profiling.armed:  # the one test unprofiled requests pay
                run = profiling.admit(scope.get("method", "GET"), scope.get("path", ""))
            # Starlette puts itself in scope["app"] before its middleware stack runs: the route
            # table of an app met for the first time is registered, and a loop met for the
            # first time gets a watchdog (`_met`).
            if scope.get("app") is not self._last_app or _get_running_loop() is not self._loop:
                self._met(scope)
            hooks = self.query_hooks
            # A database library is hooked, or work handed to pool threads was seen: the
            # request in the context, for the hooks and the looks (`offload`) to find.
            if hooks is not None and hooks.hooking or self._offload.wanted:
                request.hooked()
                token = CURRENT.set(request)
        except Exception:
            self._count_error()

        # The request in its task's context: a task it starts copies it, and the loop
        # watchdog names the route of a hold in such a task by it (`serving_scope`).
        serving = _serve(request)
        try:
            if run is None:
                app = self.app
                await app(scope, receive, request.watched_send)
            else:
                await run.around(self.app, scope, receive,
                                 _noting_response(request.watched_send, run.profiler))
        except BaseException as exc:
            self._finish(scope, root_path, request, exc, token, run, serving)
            raise
        self._finish(scope, root_path, request, None, token, run, serving)

    def _met(self, scope: Scope) -> None:
        """An app met for the first time (an injected agent wraps a live app), or a loop: its
        thread pool is captured (once) and it gets a watchdog."""
        app = scope.get("app")
        if app is not None and app is not self._last_app:
            self._last_app = app
            self.routes.add_app(app)
        loop = _get_running_loop()
        if loop is not self._loop:
            self._loop = loop  # None: not asyncio (trio), met once all the same
            if not self.threadpool.captured:
                self.threadpool.capture()
            if self.watchdogs is not None:
                self.watchdogs.see_loop()

    def _finish(self, scope: Scope, root_path: str, request: _Request,
                exc: BaseException | None, token: Any, run: ProfileRun | None = None,
                serving: Any = None) -> None:
        try:
            # Put back what the context held before only when that was a request still being
            # served (an app of another agent's calling this one): a context that held none,
            # or an ended request (one task serving requests in turn), keeps this one, ended,
            # which reads the same (`served_scope`: None), and no new mapping is made for it.
            if serving is not None:
                held = serving.old_value
                if held is not _MISSING and held.scope is not None:
                    _unserve(serving)
            if token is not None:
                CURRENT.reset(token)
            # Django's request, left by the hook (popping it breaks the scope<->request cycle).
            django_request = scope.pop(REQUEST_KEY) if REQUEST_KEY in scope else None
            # An exception the framework or an error handler answered 5xx for (`failures`).
            failure = scope.pop(FAILURE_KEY) if FAILURE_KEY in scope else None
            start = request.called
            end = request.end
            if end is None:
                end = self._clock()
            status = request.status
            if exc is None and 0 < status < 500:  # the common case: no cause to look for
                exc_type = exc_file = exc_line = None
            else:
                status, exc_type, exc_file, exc_line = self._cause(request, exc, failure)
            # The common case inline: a route the registry knows (Starlette, FastAPI).
            route = scope.get("route")
            found = self.routes.templates.get(id(route))
            if found is not None and found[0] is route and found[1] and status != 404 \
                    and "fastapi" not in scope:
                template = found[1]
                if not self._named_by_starlette:  # once: what named the routes (`routing()`)
                    self._named_by_starlette = True
                    self.routes.sources.add(STARLETTE)
            else:
                template = self.route_of(scope, root_path, status, django_request)
            # A streamed body (server-sent events, a download, tokens) lasts as long as the
            # stream does, by design: the time to its head is the latency the client waited.
            # A stream sends bytes in two messages or more: a whole body passed on in a
            # message of its own and an empty one to end it (Starlette's BaseHTTPMiddleware,
            # FastAPI's `@app.middleware("http")`) is a response the client waits for whole.
            first_byte = None
            if request.chunks > 1:
                head = request.head
                if head is not None:
                    first_byte = (head - start) * 1000.0
            # A plain tuple in RequestEntry's field order (see `recorder`).
            entry = (start + self._epoch_offset, (end - start) * 1000.0,
                     scope.get("method", "GET"), template, status, exc_type, exc_file,
                     exc_line, request.entries() if token is not None and request.stats
                     else (), 1, first_byte)
            self.recorder.record(entry)
            if token is not None:  # only a request in `CURRENT` has handed calls noted
                if request.offloaded or request.pool_cpu:
                    self.offloaded.add(entry[2], template, request.offloaded, request.pool_cpu)
                if request.threads is not None:
                    self.spans.add(request.threads, entry[2], template, entry[0],
                                   entry[0] + entry[1] / 1000.0)
        except Exception:
            self._count_error()
            if run is not None and self.profiling is not None:
                self.profiling.abandon(run)
            return
        finally:
            # What the request referred to, dropped: contexts copied while it was served keep
            # the request (its statements, a 5xx's exception and traceback: `_Request`). Not
            # the server's send: an app that sends after it returned (ASGI forbids it) gets
            # the server's own answer to that, as without the agent.
            request.scope = request.stats = None
            if request.status >= 500 and getattr(request, "handled", None) is not None:
                del request.handled
        if run is not None and self.profiling is not None:
            self._profiled(self.profiling, RequestEntry._make(entry), run)

    def _cause(self, request: _Request, exc: BaseException | None,
               failure: tuple[BaseException, TracebackType | None] | None,
               ) -> tuple[int, str | None, str | None, int | None]:
        """The status recorded for a request that raised, answered 5xx or answered nothing,
        and the type, file and line of the exception that caused it, if any."""
        status = request.status
        exc_type = exc_file = exc_line = None
        if exc is not None:
            # Raised after the whole response went out: Starlette's ServerErrorMiddleware
            # sends what an app's `exception_handler(Exception)` answers (a 404 for a
            # lookup the app failed), then raises again for the server to log. The
            # client got that answer, and the exception is its cause only for a 5xx.
            answered = request.end is not None and status > 0
            if not answered or status >= 500:
                exc_type = type(exc).__name__
                exc_file, exc_line = self.raising_line(exc.__traceback__)
            if not answered and isinstance(exc, Exception):
                status = 500  # what the server answers, or would have, had it not started
            elif not status:
                status = 499  # cancelled before any response (the client went away)
        elif not status:
            status = 500  # the app returned without a response: the server answers 500
        if status >= 500 and exc is None:
            if failure is None:  # one a handler answered for from its `except` block
                failure = getattr(request, "handled", None)
            if failure is not None:
                exc_type = type(failure[0]).__name__
                exc_file, exc_line = self.raising_line(failure[1])
        return status, exc_type, exc_file, exc_line

    def _profiled(self, profiling: RequestProfiling, entry: RequestEntry,
                  run: ProfileRun) -> None:
        try:
            route = entry.route
            if route[:1] == DEFERRED:
                route = self.routes.resolve(entry.method, route)
            profiling.finish(run, entry.start, entry.method, route, entry.duration_ms)
        except Exception:
            profiling.errors += 1

    def route_of(self, scope: Scope, root_path: str, status: int,
                 django_request: Any = None) -> str:
        """The matched route's full template; `<unmatched>` when the app's framework matched
        no route; the grouped raw path when the app has no routes we can read."""
        route = scope.get("route")
        context = _route_context(scope)
        if route is None and context is None:
            endpoint = scope.get("endpoint")  # FastAPI's low-priority routes (/docs) set only this
            found = self._lookup(scope, endpoint) if endpoint is not None else None
            if found == DEFERRED:  # a mounted app whose router is asked at pull time (Flask)
                return DEFERRED + str(scope.get("path", ""))
            return found if found is not None else self._other_route(scope, django_request)
        self.routes.sources.add(STARLETTE)
        if status == 404 and _is_mount(route):  # the mount's prefix matched, nothing inside it
            return UNMATCHED
        key = route if context is None else context
        template = self._lookup(scope, key)
        if template is not None:
            return template
        # A route of an app we have no table for, or of an inclusion FastAPI had not built
        # when the table was read: the mounts' prefixes are in root_path.
        inner_root = scope.get("root_path", "")
        prefix = inner_root[len(root_path):] if inner_root.startswith(root_path) else ""
        return prefix + (template_of(route) if context is None else effective_template(context))

    def served_route(self, scope: Scope) -> str | None:
        """"METHOD TEMPLATE" of a request still being served, once its framework has routed
        it (Starlette's and FastAPI's routes, Litestar's); None before, and for the frameworks
        whose templates are known only once the request ends. The loop watchdog asks it, from
        its own thread, of the request a stall served: it reads and changes nothing else."""
        context = _route_context(scope)
        key = context if context is not None else scope.get("route")
        if key is None:  # an app mounted whole (a login endpoint) is in scope["endpoint"]
            key = scope.get("endpoint")
        template = self.routes.template(key) if key is not None else None
        if template is None and context is not None and not scope.get("root_path"):
            template = effective_template(context)  # built since the table was read
        if template is None or template == DEFERRED:
            template = scope.get("path_template")  # Litestar's router writes it once matched
        if not isinstance(template, str) or not template:
            return None
        return f"{scope.get('method', 'GET')} {template}"

    def _other_route(self, scope: Scope, django_request: Any) -> str:
        """Litestar's and Django's templates, or the raw path grouped (ids as placeholders)."""
        sources = self.routes.sources
        template = scope.get("path_template")  # Litestar's router writes it once matched
        if template is not None:
            sources.add(LITESTAR)
            return str(template)
        if django_request is not None:
            sources.add(DJANGO)
            return self._django(django_request) or UNMATCHED
        if "router" in scope:  # Starlette's router ran and matched nothing
            sources.add(STARLETTE)
            return UNMATCHED
        if "litestar_app" in scope:
            sources.add(LITESTAR)
            return UNMATCHED
        if self.routes.deferred:  # Quart, Falcon: matched off the request path, at pull time
            return DEFERRED + str(scope.get("path", ""))
        sources.add(INFERRED)
        return self._paths(str(scope.get("path", "")))

    def _lookup(self, scope: Scope, key: Any) -> str | None:
        template = self.routes.template(key)
        if template is None and self.routes.built_since():
            # FastAPI built an inclusion's route contexts for this request, which the table
            # was read without (building them all at once stalled the loop for a second).
            self.routes.refresh()
            template = self.routes.template(key)
        if template is None:
            # First sight of this app (wrapped from outside, so scope["app"] was unset when the
            # request came in): Starlette's outermost router put itself in scope["router"].
            router = scope.get("router")
            if router is not None:
                self.routes.add_app(router)
                template = self.routes.template(key)
        return template

    def raising_line(self, tb: TracebackType | None) -> tuple[str | None, int | None]:
        """File and line of the last app-code frame of a traceback (the raising user line)."""
        found: tuple[str | None, int | None] = (None, None)
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if self.app_files.is_app(filename, tb.tb_frame.f_code.co_name):
                found = (filename, tb.tb_lineno)
            tb = tb.tb_next
        return found

    def _count_error(self) -> None:
        try:
            self.recorder.count_error()
        except Exception:  # a broken recorder must still not reach the request
            pass
