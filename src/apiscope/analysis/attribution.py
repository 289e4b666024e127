"""Attributing stack samples to endpoints and to application code.

Two questions every rule asks of a stack (frames root first, as py-spy reports them):
- which endpoint's handler is running? The handler whose frame is in the stack, matched by file
  and function name against the route table, the frame closest to the leaf winning (a handler
  that calls another handler is charged to the inner one).
- which line of the *application* is executing? The leaf-most application frame, as
  `apiscope.frames.is_app_frame` judges it for every view (neither the standard library, nor an
  installed package, nor apiscope itself, nor a module body, nor a `bin/` script). The
  application's own modules count even when they are installed into site-packages: their
  directories (the "app roots") are derived here, from the route table.

A handler serving several methods is charged to one of them, chosen in the order GET, POST, PUT,
PATCH, DELETE, then alphabetically (HEAD and OPTIONS last): Starlette registers HEAD beside every
GET, and the report's endpoints are keyed by the method the requests used, which is usually GET.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from apiscope.agent.offload import is_offloaded, package_of
from apiscope.frames import (
    STDLIB_PATH,
    THIRD_PARTY,
    TOOL_ROOTS,
    is_agent_entry,
    is_app_frame,
    is_tool_file,
    norm,
)
from apiscope.model import Frame, RouteInfo

# `is_app_frame` and `TOOL_ROOTS` live in `apiscope.frames`, shared with every view; the rules
# import them from here with the rest of the attribution.
__all__ = ["FRAMEWORKS", "TOOL_ROOTS", "RouteMatcher", "app_roots", "dispatch_lines",
           "framework_route", "is_app_frame", "is_tool_work", "library_call", "method_rank",
           "offloaded_work", "passes_on", "request_frame", "tool_work_or_import", "user_frame"]

_METHOD_ORDER = {"GET": 0, "POST": 1, "PUT": 2, "PATCH": 3, "DELETE": 4, "HEAD": 8, "OPTIONS": 9}


def _same_file(a: str, b: str) -> bool:
    """Equal paths, or one a path-suffix of the other (short vs. full py-spy file names)."""
    a, b = norm(a), norm(b)
    if a == b:
        return True
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return not short.startswith("/") and long.endswith("/" + short)


def method_rank(method: str) -> tuple[int, str]:
    return (_METHOD_ORDER.get(method, 5), method)


# Frameworks that serve routes of their own (FastAPI's /docs and /openapi.json, Litestar's
# /schema, Django's admin, DRF's API root, django-ninja's docs).
FRAMEWORKS = ("fastapi.", "starlette.", "litestar.", "django.", "rest_framework.", "ninja.")


def framework_route(route: RouteInfo) -> bool:
    """A route the framework itself serves: its module must not make the whole framework
    count as application code."""
    return route.handler.startswith(FRAMEWORKS)


def app_roots(routes: Iterable[RouteInfo], stacks: Iterable[Sequence[Frame]] = (), *,
              own_code: bool = False) -> tuple[str, ...]:
    """Directories holding the application's code, from its handlers' modules and files.

    A handler in package module `shop.api.items` at `/x/shop/api/items.py` gives `/x/shop` (the
    whole top-level package; for a library's method serving an app's class, the class's
    module); a top-level module `main` at `/srv/main.py` gives `/srv`, unless
    that directory is site-packages, where only the file itself is the app's.

    Handlers installed in site-packages give roots only when every handler is installed (the
    application itself was installed there): beside handlers of the application's own
    directories, they are a library's routes (an auth library's login routes, a schema
    viewer), and that library is not the application's code. Nor are they when any of the
    session's `stacks` runs code of the application's own directories (`runs_own_code`; or
    `own_code`, for a caller that asked already): a serving framework's generic handler
    dispatching to the user's functions (BentoML's `api_endpoint_wrapper` for a service's
    methods) is the framework's code.
    """
    local: set[str] = set()
    installed: set[str] = set()
    for route in routes:
        if route.view_file:  # the app's class serving a library's method: the app's module
            module, file = route.view.split(":", 1)[0], route.view_file
        elif framework_route(route):
            continue
        else:
            module, file = route.handler.split(":", 1)[0], route.file
        parts = module.split(".") if module else []
        path = PurePosixPath(norm(file))
        if not file or not path.is_absolute():
            continue
        third_party = THIRD_PARTY.search(str(path)) is not None
        if len(parts) > 1:
            depth = len(parts) - 1 if path.stem != "__init__" else len(parts)
            root = path.parents[depth - 1] if depth - 1 < len(path.parents) else path.parent
            (installed if third_party else local).add(str(root))
        elif third_party:
            installed.add(str(path))
        else:
            local.add(str(path.parent))
    if local:
        return tuple(sorted(local))
    if installed and (own_code or runs_own_code(stacks)):
        return ()
    return tuple(sorted(installed))


def runs_own_code(stacks: Iterable[Sequence[Frame]]) -> bool:
    """Whether any stack runs a function of a file outside the installed packages and the
    standard library (not a module body, not a launcher above the event loop)."""
    return any(user_frame(frames, ()) is not None for frames in stacks)


# The frames that run the event loop: the runner's, the loop's and a callback's (a task's step
# runs in `Handle._run`). What the loop runs is below them; an application frame above them is a
# launcher that started the loop (a `main()` calling `uvicorn.run` or `asyncio.run`), which runs
# none of it. A thread calling into the loop (`call_soon_threadsafe`) is not running it.
_LOOP_RUNNERS = re.compile(
    r"[/\\](asyncio[/\\](base_events|events|runners)|uvloop[/\\]__init__)\.py$")
_LOOP_FUNCTIONS = frozenset({"run", "run_forever", "run_until_complete", "_run_once", "_run"})


def runs_loop(frame: Frame) -> bool:
    """True for a frame of asyncio's (or uvloop's) runner running the event loop."""
    return (frame.function.rsplit(".", 1)[-1] in _LOOP_FUNCTIONS
            and _LOOP_RUNNERS.search(frame.file) is not None)


# Python source files; any other suffix in a stack is a template compiled to Python (Jinja2,
# Mako, Chameleon), whose line numbers are the generated code's, not the template's.
_PYTHON_SUFFIXES = ("", ".py", ".pyw", ".pyx")


def user_frame(frames: Sequence[Frame], app_roots: Sequence[str],
               tool_roots: Sequence[str] = TOOL_ROOTS, *, through_loop: bool = False,
               ) -> Frame | None:
    """The leaf-most application frame of a root-first stack, or None.

    Not above the event loop (`runs_loop`), unless `through_loop`: with nothing of the
    application between the loop and the leaf, the work is the server's or a library's, not
    the line of the application's launcher that started the loop.

    A compiled template's frames are the application's but name no line of it: the frame that
    rendered the template stands for them (its call is the template's cost).
    """
    for frame in reversed(frames):
        if not through_loop and runs_loop(frame):
            return None
        if (is_app_frame(frame, app_roots, tool_roots)
                and PurePosixPath(norm(frame.file)).suffix in _PYTHON_SUFFIXES):
            return frame
    return None


def request_frame(frames: Sequence[Frame], handler_index: int | None,
                  app_roots: Sequence[str]) -> Frame | None:
    """The leaf-most application frame at or below the handler's frame, when a handler runs.

    The application's frames above the handler are its middleware passing the request on
    (`get_response(request)`, `await self.app(scope, receive, send)`): what runs below them
    is the handler's (or, in a library's generic view, the framework's), not theirs. A loop
    below the handler (a sync handler calling `asyncio.run`) runs the handler's work."""
    if handler_index is None:
        return user_frame(frames, app_roots)
    return user_frame(frames[handler_index:], app_roots, through_loop=True)


def dispatch_lines(stacks: Iterable[tuple[Sequence[Frame], int | None]],
                   app_roots: Sequence[str]) -> set[tuple[str, int]]:
    """The application's lines seen above a handler's frame: where its middleware passes the
    request on. Seen with no handler below them, they run the framework's own work around
    the handler (routing, the other middleware, rendering the response): not a line's cost."""
    lines = set()
    for frames, index in stacks:
        for frame in frames[:index or 0]:
            if is_app_frame(frame, app_roots):
                lines.add((frame.file, frame.line))
        # A line calling a framework app's entry hands the request on, whether a handler is
        # seen below it or not: an app's own ASGI wrapper (lifespan set-up, then `await
        # admin(scope, receive, send)`) around a library's FastAPI app read as a CPU hotspot
        # of 41% (the framework's middleware and routing) where no handler was sampled.
        for position in range(len(frames) - 1):
            if _enters_framework(frames[position + 1]) \
                    and is_app_frame(frames[position], app_roots):
                lines.add((frames[position].file, frames[position].line))
    return lines


_WEB_FRAMEWORKS = ("starlette", "fastapi", "litestar", "django", "quart", "falcon", "channels")


def _enters_framework(frame: Frame) -> bool:
    """A web framework's ASGI entry: an app's, router's or middleware's `__call__`."""
    return frame.function.endswith("__call__") \
        and package_of(norm(frame.file)) in _WEB_FRAMEWORKS


def passes_on(user: Frame | None, handler_index: int | None,
              dispatch: Collection[tuple[str, int]]) -> bool:
    """Whether a stack's application frame `user` is a middleware line passing requests on
    (one of `dispatch_lines`) with no handler running below it: then it is no line's cost."""
    return handler_index is None and user is not None and (user.file, user.line) in dispatch


def library_call(frames: Sequence[Frame], user: Frame | None) -> str | None:
    """The function the application frame `user` called, when the leaf is not the app's own
    line: the library (or standard library) code the time is spent in. The agent's own
    wrappers between them (a driver's `connect` counted and timed) are passed over: what the
    line called is what they wrap."""
    if user is None or not frames or frames[-1] == user or user not in frames:
        return None
    index = frames.index(user) + 1
    return next((f.function for f in frames[index:] if not is_tool_file(f.file)), None)


# Profilers that run inside the target's threads: their frames are measurement overhead.
_PROFILER_PACKAGES = re.compile(r"[/\\](site|dist)-packages[/\\]pyinstrument[/\\]")


def is_tool_work(frames: Sequence[Frame], tool_roots: Sequence[str] = TOOL_ROOTS) -> bool:
    """True when a stack is the measuring tools' own work, not the application's.

    Reading from the leaf, past the standard library (which anyone calls): a frame of apiscope
    itself (the injected agent recording a request or building a profile) or of an in-process
    profiler (pyinstrument's sampler, called from inside a handler) means yes; any other frame,
    the application's or a third-party package's, means no. So the agent's middleware, on every
    request's stack above the framework and the handler, does not make their work its own.
    The agent's start-up is the exception: injected as a pending call, it runs on top of
    whatever the main thread was doing (often a request), and all it calls, third-party
    imports included, is its own.
    """
    if any(is_agent_entry(frame.file) for frame in frames):
        return True
    for frame in reversed(frames):
        file = frame.file
        if is_tool_file(file, tool_roots) or _PROFILER_PACKAGES.search(file):
            return True
        if not STDLIB_PATH.search(file):
            return False
    return False


def tool_work_or_import(frames: Sequence[Frame]) -> bool:
    """True when a stack is the measuring tools' own work (`is_tool_work`) or an import (a
    module being loaded): neither is a line's hold of the event loop or its CPU."""
    return is_tool_work(frames) or any(f.file.startswith("<frozen importlib") for f in frames)


def offloaded_work(frames: Sequence[Frame], app_roots: Sequence[str]) -> bool:
    """True when a stack is work an async handler handed to a pool thread (C code, or a
    library's, run through `asyncio.to_thread`, `run_in_threadpool`, `sync_to_async`): a pool
    worker's frame with nothing of the application's or of a framework's above it. The same
    test the agent's looks make (`agent/offload.py`), whose counts say whose work it was."""
    return is_offloaded([(f.file, f.function) for f in frames],
                        lambda file, function: is_app_frame(Frame(function, file, 0), app_roots))


@dataclass(slots=True)
class _Entry:
    """A handler function's file and the endpoint its frames are charged to."""

    file: str
    endpoint: str | None  # None: it served requests of several templates
    template: str
    # A library's method serving the app's classes (DRF's `ListAPIView.get`, Django's
    # `BaseDetailView.get`): generic code one view's handler may call for another's.
    generic: bool = False
    qualname: str = ""  # the handler's qualified name ("Class.method")
    endpoints: list[str] = field(default_factory=list)  # every endpoint it serves


class RouteMatcher:
    """Finds which endpoint's handler a stack is running.

    One handler may serve several endpoints: a DRF router's format-suffix twin of each route
    (`/tickets/` and `/tickets.{format}/?`), a Django function view answering any method. Given
    the endpoints that served requests (`served`), a handler is charged to one of its
    endpoints that served some, and an endpoint that served requests but is missing from
    the route table (a POST to a view the table lists under GET) takes the handler of its
    template when the table has exactly one for it. Among endpoints alike in that, the
    template's order decides, so the choice does not move as counts change.

    A handler serving requests on several templates cannot be told apart by its own frame:
    DRF's `ListModelMixin.list` runs every viewset's list. The app's view class tells them
    apart when one of its methods runs below (`IssueList.get_queryset` under the generic
    `get`, on Python 3.11+, whose frames name the class); without one, its frames are a
    handler's of no endpoint (the time is not charged to one route for all of them).

    The leaf-most handler frame is the handler, so that an app's handler calling another's
    is charged to the inner one, except for a library's method: generic views call each
    other (`ListAPIView.get` calls `ListModelMixin.list`, itself a viewset's handler), and
    the outermost of them is the one the framework dispatched to. An application handler
    anywhere in the stack comes before them (an app's `get` calling `super().get()`).
    """

    def __init__(self, routes: Sequence[RouteInfo], served: Collection[str] = (),
                 roots: Sequence[str] | None = None) -> None:
        served = frozenset(served)
        routes = [*routes, *_served_only(routes, served)]
        ordered = sorted(routes, key=lambda r: (f"{r.method} {r.template}" not in served,
                                                r.template, method_rank(r.method)))
        # function name -> its handlers' entries, one per file, preferred endpoint first
        self._by_name: dict[str, list[_Entry]] = {}
        self._handlers: dict[str, str] = {}
        # The app's view classes serving a library's methods: (class qualname, its file,
        # the library method's name, the endpoint), preferred endpoint first.
        self._views: list[tuple[str, str, str, str]] = []
        # (function, file) of the app's functions below a handler of several endpoints ->
        # the one endpoint they run for (`learn`).
        self._learned: dict[tuple[str, str], str] = {}
        self._served = served
        for route in ordered:
            endpoint = f"{route.method} {route.template}"
            self._handlers.setdefault(endpoint, route.handler)
            qualname = route.handler.split(":", 1)[-1]
            names = {qualname, qualname.rsplit(".", 1)[-1]}
            generic = bool(route.view_file) or framework_route(route)
            if route.view_file and ":" in route.view:
                self._views.append((route.view.split(":", 1)[1], route.view_file,
                                    qualname.rsplit(".", 1)[-1], endpoint))
            for name in names:
                entries = self._by_name.setdefault(name, [])
                entry = next((e for e in entries if _same_file(e.file, route.file)), None)
                if entry is None:
                    entry = _Entry(route.file, endpoint, route.template, generic, qualname)
                    entries.append(entry)
                elif endpoint in served and entry.endpoint in served \
                        and entry.template != route.template:
                    entry.endpoint = None  # serving requests on two templates: ambiguous
                entry.endpoints.append(endpoint)
        # The app's directories: `app_roots` of the routes unless given (from the stacks too).
        self.roots = tuple(roots) if roots is not None else app_roots(routes)

    def handler_of(self, endpoint: str) -> str | None:
        """The "module:qualname" serving an endpoint ("METHOD /template")."""
        return self._handlers.get(endpoint)

    def endpoint_of(self, frames: Sequence[Frame]) -> str | None:
        """"METHOD /template" of the handler running in `frames` (root first), or None."""
        found = self.handler_at(frames)
        return found[1] if found is not None else None

    def handler_at(self, frames: Sequence[Frame]) -> tuple[int, str | None] | None:
        """(index, endpoint) of the handler frame in `frames` (root first), or None; the
        endpoint is None for a handler of several that no view class below tells apart (see
        above)."""
        found: tuple[int, _Entry] | None = None
        for index in range(len(frames) - 1, -1, -1):
            entry = self._match(frames[index])
            if entry is None:
                continue
            found = (index, entry)
            if not entry.generic:
                break  # the app's handler: the leaf-most one
            # else a library's method: the root-most one seen so far, unless an app's follows
        if found is None:
            return None
        index, entry = found
        if entry.endpoint is not None:
            return index, entry.endpoint
        by_view = self._by_view(frames, index) if entry.generic and self._views else None
        return index, by_view or self._by_learned(frames, index)

    def shares_handlers(self) -> bool:
        """Whether a handler serves requests of several endpoints (see `learn`)."""
        return any(entry.endpoint is None
                   for entries in self._by_name.values() for entry in entries)

    def learn(self, labelled: Iterable[tuple[Sequence[Frame], str]]) -> bool:
        """Learn which app function below a handler serving several endpoints runs for which
        of them, from stacks the agent labelled with their request's endpoint (the watchdog's
        holds, the sampled requests' profiles). BentoML serves every API of a service through
        one `api_endpoint_wrapper`, and the service's method below it is what tells the APIs
        apart. A function seen under several endpoints tells none. True when what it
        learnt differs from what it knew."""
        known, self._learned = self._learned, {}
        seen: dict[tuple[str, str], set[str]] = {}
        for frames, endpoint in labelled:
            found = self.handler_at(frames)
            if found is None or found[1] is not None:
                continue
            for frame in frames[found[0] + 1:]:
                if is_app_frame(frame, self.roots):
                    seen.setdefault((frame.function, norm(frame.file)), set()).add(endpoint)
                    break
        self._learned = {key: endpoints.pop() for key, endpoints in seen.items()
                         if len(endpoints) == 1}
        return self._learned != known

    def _by_learned(self, frames: Sequence[Frame], handler: int) -> str | None:
        """The endpoint of the first app function below the handler at `handler` that
        `learn` tied to one endpoint."""
        if not self._learned:
            return None
        for frame in frames[handler + 1:]:
            if is_app_frame(frame, self.roots):
                return self._learned.get((frame.function, norm(frame.file)))
        return None

    def sharing(self, frames: Sequence[Frame]) -> tuple[str, ...]:
        """The endpoints that served requests through the handler running in `frames` when
        it serves several and nothing in the stack tells which (one generated CRUD function
        for every table, one generic view for several models); () otherwise."""
        found = self.handler_at(frames)
        if found is None or found[1] is not None:
            return ()
        entry = self._match(frames[found[0]])
        if entry is None:
            return ()
        return tuple(dict.fromkeys(e for e in entry.endpoints if e in self._served))

    def _by_view(self, frames: Sequence[Frame], handler: int) -> str | None:
        """The endpoint of the app's view class whose method runs below the library method
        at `handler`, when the class and that method name one endpoint."""
        method = frames[handler].function.rsplit(".", 1)[-1]
        for frame in frames[handler + 1:]:
            if "." not in frame.function:
                continue
            owner = frame.function.rsplit(".", 1)[0]
            found = {endpoint for view, file, name, endpoint in self._views
                     if view == owner and _same_file(file, frame.file)}
            if found:
                named = {endpoint for view, file, name, endpoint in self._views
                         if endpoint in found and name == method}
                found = named or found
                found = (found & self._served) or found  # a format-suffix twin left idle
                return found.pop() if len(found) == 1 else None
        return None

    def _match(self, frame: Frame) -> _Entry | None:
        entries = self._by_name.get(frame.function)
        if entries is None and "." in frame.function:
            # By the method's name alone, unless both names say whose method it is and they
            # differ: a login endpoint's `post` is not the logout endpoint's beside it.
            owner = _owner(frame.function)
            entries = [e for e in self._by_name.get(frame.function.rsplit(".", 1)[-1], ())
                       if not _owner(e.qualname) or _owner(e.qualname) == owner]
        for entry in entries or ():
            if _same_file(entry.file, frame.file):
                return entry
        return None


def _owner(qualname: str) -> str:
    """The class (or function) a qualified name's last part is defined in, "" for none."""
    parts = qualname.split(".")
    return parts[-2] if len(parts) > 1 else ""


def _served_only(routes: Sequence[RouteInfo], served: Collection[str]) -> list[RouteInfo]:
    """Rows for endpoints that served requests under a method the table does not list, where
    the table has one handler for their template."""
    known = {f"{r.method} {r.template}" for r in routes}
    by_template: dict[str, list[RouteInfo]] = {}
    for route in routes:
        by_template.setdefault(route.template, []).append(route)
    extra = []
    for endpoint in sorted(served):
        method, _, template = endpoint.partition(" ")
        rows = by_template.get(template, [])
        if endpoint not in known and len({r.handler for r in rows}) == 1:
            extra.append(replace(rows[0], method=method))
    return extra
