"""What the server is doing right now: the requests in flight and every thread's stack.

Nothing is kept per request for this: the request path pays nothing. When a dump is asked for,
`dump_state` finds every asyncio loop of the process and walks, for each of its tasks, the
await chain of the task's coroutine (`cr_await` down to the awaited call; async generators and
awaited tasks followed). A task whose chain passes through the agent's middleware serves a
request the agent saw start: the middleware's frame holds its scope and its `_Request` (when it
came in), and its route is named as the middleware would name it. The thread running each
request is found too (the loop thread while the coroutine runs; the pool thread whose frames
hold the future the coroutine waits for, for a sync handler), and every thread's stack is
taken from `sys._current_frames()`. A coroutine running at that moment (a request holding the
loop) has no `cr_await`: its awaits are live on its thread's stack, and the chain goes on
there, down to the call it is in. On trio (hypercorn's trio worker) there is no asyncio loop:
trio's tasks are found on the heap and walked the same way.

Requests that were already in flight when the agent was injected have no agent frame; their
tasks are still found (a task whose coroutine has the ASGI `scope` of an HTTP request in a
frame) and listed with an unknown elapsed time. Standard library only, relative imports only,
Python 3.9 compatible: this runs inside the target.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from .matched_routes import DEFERRED
from .offload import TIMED_CODE
from .profiler import own_attribute, running_async_gen, wait_for_task
from .schedstat import native_id

MAX_DEPTH = 200  # frames per stack or chain: a deeper one keeps its root part
MAX_TASK_HOPS = 16  # awaited tasks followed from one request's chain
OWN_THREADS = ("apiscope-agent",)  # the agent's threads: the one answering the dump is busy

FrameInfo = dict[str, Any]


def frame_info(frame: FrameType) -> FrameInfo:
    code = frame.f_code
    return {"function": getattr(code, "co_qualname", code.co_name),
            "file": code.co_filename, "line": frame.f_lineno or 0}


def thread_stack(frame: FrameType | None) -> list[FrameInfo]:
    """Root-first frames of a thread whose leaf frame is `frame` (the pool timing's own frame
    left out: the call reads as it would without apiscope)."""
    leaf_first = []
    while frame is not None:
        if frame.f_code is not TIMED_CODE:
            leaf_first.append(frame_info(frame))
        frame = frame.f_back
    leaf_first.reverse()
    return leaf_first[:MAX_DEPTH]


def _awaitable_frame(obj: Any) -> tuple[FrameType | None, Any]:
    """The frame of a coroutine, async generator (or its asend/athrow) or generator, and what
    it awaits in turn. A profiled request's coroutine is driven by the profiler's generator
    (`SliceProfiler.drive`): the chain goes on in the coroutine it drives."""
    for frame_name, next_name in (("cr_frame", "cr_await"), ("ag_frame", "ag_await"),
                                  ("gi_frame", "gi_yieldfrom")):
        if hasattr(obj, frame_name):
            frame = getattr(obj, frame_name)
            if frame_name == "gi_frame" and frame is not None and _is_drive(frame):
                return _awaitable_frame(frame.f_locals.get("coro"))
            return frame, getattr(obj, next_name, None)
    return None, None


def _is_drive(frame: FrameType) -> bool:
    # By class name: the injected copy of this package has its own SliceProfiler.
    return frame.f_code.co_name == "drive" and \
        type(frame.f_locals.get("self")).__name__ == "SliceProfiler"


def _running_below(frame: FrameType | None) -> tuple[int | None, list[FrameType]]:
    """For the frame of a coroutine running now, whose awaits are live on a thread's stack
    (its `cr_await` is empty then): the thread running it and the frames it called, outermost
    first; (None, []) when no thread runs it (not started, finished)."""
    if frame is None:
        return None, []
    for ident, leaf in sys._current_frames().items():
        below: list[FrameType] = []
        current: FrameType | None = leaf
        while current is not None and current is not frame and len(below) < MAX_DEPTH:
            below.append(current)
            current = current.f_back
        if current is frame:
            below.reverse()
            return ident, below
    return None, []


def await_chain(task: Any) -> tuple[list[FrameInfo], str | None, Any]:
    """The frames the task's coroutine is suspended in (outermost first), a description of
    the awaited object at the bottom, and that object (a future) when there is one."""
    chain: list[FrameInfo] = []
    for _ in range(MAX_TASK_HOPS):
        obj: Any = task.get_coro()
        last: FrameType | None = None
        while obj is not None and len(chain) < MAX_DEPTH:
            frame, obj = _awaitable_frame(obj)
            if frame is None and last is not None:
                frame, obj = _awaitable_frame(running_async_gen(last))
            if frame is None:
                break  # a C awaitable (a future's iterator): the task's waiter says what
            chain.append(frame_info(frame))
            last = frame
            inner = wait_for_task(frame)  # wait_for's own task, on Python 3.11 and older
            if inner is not None:
                task, obj, last = inner, inner.get_coro(), None
            elif obj is None:  # running now: the rest of the chain is on its thread's stack
                chain.extend(frame_info(f) for f in _running_below(frame)[1])
        waiter = getattr(task, "_fut_waiter", None)
        if not isinstance(waiter, asyncio.Task):
            return chain, _describe(waiter, task), waiter
        task = waiter  # awaiting another task: its chain continues this one
    return chain, "a chain of tasks too long to follow", None


def _describe(awaited: Any, task: Any) -> str | None:
    if awaited is not None:
        return f"{type(awaited).__name__} ({'done' if awaited.done() else 'pending'})"
    coro = task.get_coro()
    if getattr(coro, "cr_running", False):
        return None  # running now: the thread's stack shows where
    if isinstance(task, _TrioTask):
        return "trio's scheduler (the chain's last await says for what)"
    return "nothing (ready to run)"


def _threads() -> dict[int, tuple[str, int]]:
    return {t.ident: (t.name, native_id(t) or 0)
            for t in threading.enumerate() if t.ident is not None}


def _holds(frame: FrameType | None, targets: tuple[Any, ...]) -> bool:
    """Whether a frame of this thread has one of `targets` among its locals, or as a local's
    `future` (anyio's workers keep the future of the call they run in a local;
    concurrent.futures' keep a work item whose `future` it is)."""
    while frame is not None:
        try:
            for value in frame.f_locals.values():
                if any(value is t for t in targets) or (isinstance(value, tuple) and any(
                        x is t for x in value for t in targets)):
                    return True
                held = own_attribute(value, "future")
                if held is not None and any(held is t for t in targets):
                    return True
        except Exception:  # a frame whose locals cannot be read says nothing
            pass
        frame = frame.f_back
    return False


def _chained_sources(future: Any, depth: int = 3) -> list[Any]:
    """The futures an asyncio future was chained to: a concurrent.futures one (`wrap_future`,
    as `run_in_executor`, `asyncio.to_thread` and asgiref's `sync_to_async` make it), or the
    future `asyncio.shield` guards (asgiref shields its executor's future). The callbacks that
    pass a cancellation or a result on hold them in their closures."""
    sources: list[Any] = []
    try:
        callbacks = list(getattr(future, "_callbacks", None) or ())
    except Exception:
        return sources
    for entry in callbacks:
        callback = entry[0] if isinstance(entry, tuple) else entry
        for cell in getattr(callback, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if value is future or any(value is known for known in sources):
                continue
            if isinstance(value, concurrent.futures.Future):
                sources.append(value)
            elif isinstance(value, asyncio.Future) and depth > 1:
                sources.append(value)
                sources.extend(_chained_sources(value, depth - 1))
    return sources


def _worker_of(future: Any, frames: dict[int, FrameType], skip: int) -> int | None:
    if future is None:
        return None
    targets = (future, *_chained_sources(future))
    for ident, frame in frames.items():
        if ident != skip and _holds(frame, targets):
            return ident
    return None


def _request_row(route: str, method: str, path: str, elapsed: float | None, task: Any,
                 loop_thread: int | None, frames: dict[int, FrameType]) -> dict[str, Any]:
    chain: list[FrameInfo] = []
    awaiting: str | None = None
    thread = loop_thread
    if task is not None:
        chain, awaiting, awaited = await_chain(task)
        if awaiting is None:  # running right now: on the loop thread (trio's: found)
            if thread is None:
                thread = _running_below(getattr(task.get_coro(), "cr_frame", None))[0]
        else:  # suspended: on a thread only when a pool thread works for what it awaits
            thread = _worker_of(awaited, frames, loop_thread or 0) if awaited is not None \
                else None
    return {"route": route, "method": method, "path": path, "elapsed_s": elapsed,
            "await_chain": chain, "awaiting": awaiting, "running": awaiting is None,
            "thread": thread}


def route_now(middleware: Any, scope: Any) -> str:
    """The route template of a request still running, once the framework has routed it."""
    if not any(key in scope for key in ("route", "endpoint", "path_template")):
        routes = getattr(middleware, "routes", None)
        if routes is not None and routes.deferred:  # Quart, Falcon: matched from the path
            try:
                return str(routes.resolve(str(scope.get("method", "GET")),
                                          str(scope.get("path", ""))))
            except Exception:
                pass
        return str(scope.get("path", ""))  # not routed yet, or a framework we cannot read
    try:
        found = str(middleware.route_of(scope, "", 200))
        if found[:1] == DEFERRED:  # a Flask app mounted inside: matched from the path
            found = str(middleware.routes.resolve(str(scope.get("method", "GET")), found))
        return found
    except Exception:
        return str(scope.get("path", ""))


def _request_of(task: Any) -> tuple[Any, Any, dict[str, Any]] | None:
    """(the agent's middleware, its `_Request`, the scope) of the HTTP request a task serves;
    (None, None, scope) when no middleware frame of the agent's is in its chain (the request
    came in before the agent did, or this is a task of a request's own: see `_requests`);
    None for a task serving no HTTP request."""
    obj = task.get_coro()
    first_scope = None
    running: list[FrameType] = []  # a coroutine running now: the frames it called
    for _ in range(MAX_DEPTH):
        frame: FrameType | None
        if running:
            frame, nxt = running.pop(0), None
        else:
            frame, nxt = _awaitable_frame(obj)
            if frame is None:
                break
            if nxt is None:
                running = _running_below(frame)[1]
        local = frame.f_locals
        scope = local.get("scope")
        if isinstance(scope, dict) and scope.get("type") == "http":
            # By class name: the injected copy of this package has its own AgentMiddleware.
            if frame.f_code.co_name == "__call__" and \
                    type(local.get("self")).__name__ == "AgentMiddleware" and \
                    hasattr(local.get("request"), "called"):
                return local["self"], local["request"], scope
            if first_scope is None:
                first_scope = scope
        obj = nxt
    return (None, None, first_scope) if first_scope is not None else None


class _Served:
    """One request in flight: the task the server runs it in, the agent's middleware and
    `_Request` when the agent timed it, its scope, and the tasks of its own (`_requests`)."""

    __slots__ = ("helpers", "middleware", "request", "scope", "task")

    def __init__(self, task: Any, middleware: Any, request: Any, scope: dict[str, Any],
                 helpers: list[Any]) -> None:
        self.task, self.middleware, self.request = task, middleware, request
        self.scope, self.helpers = scope, helpers


def _requests(loop: asyncio.AbstractEventLoop | None,
              tasks: list[Any] | None = None) -> list[_Served]:
    """The HTTP requests a loop's tasks (or `tasks`: trio's) serve, each once.

    A request's work may go on in a task of its own that the request's task only waits for
    (Starlette's `BaseHTTPMiddleware`, which FastAPI's `@app.middleware("http")` is, runs the
    app behind it so, as do task groups). Such a task holds the same scope, so tasks are
    grouped by scope. The request's own task is the one the agent's middleware times. For a
    request that came in before the agent it cannot be told apart for sure (a task records no
    parent), and what the request waits for is taken to be at the end of the deepest chain,
    as it is for the others (`_continued`): the shortest chain is taken for the request's."""
    groups: dict[int, list[tuple[Any, tuple[Any, Any, dict[str, Any]]]]] = {}
    for task in asyncio.all_tasks(loop) if tasks is None else tasks:
        found = _request_of(task)
        if found is not None:
            groups.setdefault(id(found[2]), []).append((task, found))
    served = []
    for members in groups.values():
        timed = [m for m in members if m[1][0] is not None]
        if timed or len(members) == 1:
            task, (middleware, request, scope) = (timed or members)[0]
        else:  # the chains are walked only here, where they decide
            task, (middleware, request, scope) = min(
                members, key=lambda m: len(await_chain(m[0])[0]))
        served.append(_Served(task, middleware, request, scope,
                              [t for t, _ in members if t is not task]))
    return served


def _continued(row: dict[str, Any], served: _Served, loop_thread: int | None,
               frames: dict[int, FrameType]) -> dict[str, Any]:
    """A request's row whose chain goes on in the deepest of its own tasks, when it has any:
    what that task awaits is what the request waits for."""
    inner = [_request_row("", "", "", None, helper, loop_thread, frames)
             for helper in served.helpers]
    if inner:
        deepest = max(inner, key=lambda r: len(r["await_chain"]))
        row["await_chain"] = row["await_chain"] + deepest["await_chain"]
        row["awaiting"], row["thread"] = deepest["awaiting"], deepest["thread"]
        row["running"] = deepest["running"]
    return row


class _TrioTask:
    """A trio task as the walk reads an asyncio one: its coroutine, and no asyncio future it
    waits on (what it waits for is trio's, at the end of its chain)."""

    __slots__ = ("coro",)
    _fut_waiter = None

    def __init__(self, coro: Any) -> None:
        self.coro = coro

    def get_coro(self) -> Any:
        return self.coro


def _loops_and_trio_tasks() -> tuple[list[asyncio.AbstractEventLoop], list[Any]]:
    """The open asyncio loops, and the live tasks of trio (hypercorn's trio worker serves
    Starlette and FastAPI apps through anyio, with no asyncio loop), in one look at the heap."""
    trio_run = sys.modules.get("trio._core._run")
    trio_task = getattr(trio_run, "Task", None) if trio_run is not None else None
    loops, tasks = [], []
    loop_class = asyncio.AbstractEventLoop
    # Each object by its type, never `isinstance`: that asks the object's `__class__`, which
    # a lazy object of the app (Django's SimpleLazyObject: the admin site, a request's user)
    # answers by evaluating itself, running app code, even queries, from this thread.
    for o in gc.get_objects():
        if issubclass(type(o), loop_class):
            if not o.is_closed():
                loops.append(o)
        elif trio_task is not None and type(o) is trio_task:
            coro = getattr(o, "coro", None)
            if coro is not None:
                tasks.append(_TrioTask(coro))
    return loops, tasks


def _in_flight(frames: dict[int, FrameType], now: float) -> list[dict[str, Any]]:
    rows = []
    loops, trio_tasks = _loops_and_trio_tasks()
    # trio runs its tasks in the thread that called `trio.run`: not known from here.
    served_by: list[tuple[Any, list[Any] | None, int | None]] = [
        (loop, None, getattr(loop, "_thread_id", None)) for loop in loops]
    if trio_tasks:
        served_by.append((None, trio_tasks, None))
    for loop, tasks, thread in served_by:
        for served in _requests(loop, tasks):
            scope = served.scope
            method, path = str(scope.get("method", "")), str(scope.get("path", ""))
            if served.middleware is None:
                row = _request_row(path, method, path, None, served.task, thread, frames)
                row["before_agent"] = True
            else:
                row = _request_row(route_now(served.middleware, scope), method, path,
                                   # a request come in since `now` was read: just arrived
                                   max(0.0, now - served.request.called), served.task, thread,
                                   frames)
            rows.append(_continued(row, served, thread, frames))
    return rows


MAX_UNFINISHED = 100  # requests an `unfinished` answer lists (the oldest)
CHAIN_KEPT = 40  # innermost frames of a chain (or a thread's stack) an `unfinished` row keeps


def unfinished(loops: list[asyncio.AbstractEventLoop], older_than: float,
               clock: Callable[[], float] = time.perf_counter) -> list[dict[str, Any]]:
    """The requests the agent timed that have run `older_than` seconds or more without
    starting their response (a stream that has begun is answering: it is not listed), the
    oldest first: route, method, elapsed seconds, what the coroutine awaits, the innermost
    frames of its await chain, and the stack of the thread running it when that is a worker
    thread (a sync handler) or the loop thread running it now.

    A request's work may go on in tasks of its own (see `_requests`): the deepest one's chain
    continues the request's. Only the loops the agent met are walked (no search of the heap,
    unlike a dump): this runs once, as a collection ends, on a server that is serving."""
    frames = sys._current_frames()
    now = clock()
    rows: list[dict[str, Any]] = []
    for loop in loops:
        if loop.is_closed():
            continue
        loop_thread = getattr(loop, "_thread_id", None)
        for served in _requests(loop):
            request = served.request
            if request is None:
                continue  # came in before the agent: not timed
            elapsed = now - request.called
            if elapsed < older_than or request.head is not None:
                continue
            row = _request_row(route_now(served.middleware, served.scope),
                               str(served.scope.get("method", "")), "", elapsed, served.task,
                               loop_thread, frames)
            row = _continued(row, served, loop_thread, frames)
            thread = row.pop("thread")
            frame = frames.get(thread) if thread is not None else None
            row["thread_stack"] = thread_stack(frame)[-CHAIN_KEPT:] if frame else []
            row["await_chain"] = row["await_chain"][-CHAIN_KEPT:]
            del row["path"], row["running"]  # a raw path may carry ids and tokens
            rows.append(row)
    rows.sort(key=lambda r: -r["elapsed_s"])
    return rows[:MAX_UNFINISHED]


def dump_state(clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """The dump answer: requests in flight (longest first) and every thread's stack."""
    frames = sys._current_frames()
    names = _threads()
    requests: list[dict[str, Any]] = []
    unread = None
    try:
        requests = _in_flight(frames, clock())
    except Exception as exc:  # loops and tasks read from another thread: best effort only
        unread = f"{type(exc).__name__}: {exc}"
    requests.sort(key=lambda r: -1.0 if r["elapsed_s"] is None else -r["elapsed_s"])
    threads = []
    for ident, frame in frames.items():
        name, native = names.get(ident, ("", 0))
        if name.startswith(OWN_THREADS):
            continue
        threads.append({"ident": ident, "native_id": native, "name": name,
                        "frames": thread_stack(frame)})
    answer = {"pid": os.getpid(), "ts": time.time(), "python": sys.version.split()[0],
              "requests": requests, "threads": threads}
    if unread is not None:  # said, so that "0 requests in flight" is not taken for the truth
        answer["requests_unread"] = unread[:300]
    return answer
