"""Whose request a pool thread works for, when nothing of the app is on its stack.

An async handler that hands C code to a thread (`await asyncio.to_thread(hashlib.scrypt,
...)`, Starlette's `run_in_threadpool`, Quart's `run_sync`, asgiref's `sync_to_async`) leaves
in that thread a stack of the pool's own frames and nothing else: py-spy sees the thread busy
and no handler, so the CPU would be nobody's (or the server's). Every one of these runs the
call inside a copy of the awaiting task's context, and the middleware puts the request into
`queries.CURRENT`: the context, found in the pool worker's frame, names the request.

Two measures say whose such work is. `PoolTiming` hooks the pools' entries and runs each call
a request hands over, when its callee is neither the app's nor a framework's, timed by its
thread's CPU clock for that request (`pool_cpu`). `request_of(frame)` is read by the thread
looks (`threadlooks`, once a second, with the GIL held) for threads found busy; each look
counts on the request (`offloaded`). The middleware adds a finished request's both to its
route's (`OffloadCounts`), which each pull hands over. The collector shares out the CPU of the
pool threads' offloaded stacks (`is_offloaded`, the same test on py-spy's frames) by the timed
CPU, or by the looks where nothing was timed.

Only work of no framework's and of no app frame's counts: a sync handler in a pool thread is
found by its own frame, and a framework's middleware run in a thread (Django's) is the server's
work, on both sides. The middleware sets `CURRENT` for every request only once a call handed
to a pool or a look has seen no request there (`OFFLOAD.wanted`) or a database library is
hooked (a set and a reset of a context variable: about 120 ns a request).

Which threads ran each request's handed calls is noted as well (`TimedCall`, timing or not:
the thread's id on the request), and the middleware adds a finished request's threads to its
route's (`ThreadSpans`: per thread and route, the first start and last end of the requests it
served between two pulls). Django's ASGI handler runs each request's sync code (its
middleware, its view, the template rendered after it) in a thread of its own, born and gone
with the request: sampled a few times in its life, most of its samples show middleware and no
view, yet the thread served one request, and the spans say whose. A pool thread serving
several routes within a window names none.

Standard library only, relative imports only, Python 3.9 compatible (see `watchdog`).
"""

from __future__ import annotations

import concurrent.futures.thread
import functools
import sys
import threading
import time
import types
from collections.abc import Callable
from contextvars import Context
from threading import get_native_id
from typing import Any

from .patching import replace
from .queries import CURRENT

# The frame a pool worker runs its work item in: (file name's ending, code name).
WORKER_RUNS = (
    ("concurrent/futures/thread.py", "run"),  # asyncio's default executor, asgiref, Quart
    ("anyio/_backends/_asyncio.py", "run"),  # Starlette's, FastAPI's, Litestar's pool
)
# Packages of servers and frameworks: their frames above a worker's are a request being
# served in the thread (Django's sync middleware chain), not work handed to it.
FRAMEWORKS = ("django", "starlette", "fastapi", "litestar", "quart", "falcon", "flask",
              "werkzeug", "uvicorn", "gunicorn", "hypercorn", "anycorn", "daphne", "twisted",
              "rest_framework", "ninja", "channels", "sanic", "blacksheep")
# What a worker calls of its own, outside the work (the file's ending): waiting for the next
# item on its queue (anyio's worker keeps the last item's context meanwhile), handing a result
# back to the loop, settling the future.
WORKER_OWN = ("/queue.py", "/threading.py", "asyncio/base_events.py",
              "concurrent/futures/_base.py")
MAX_FRAMES = 64  # frames walked up from a thread's leaf to its worker's frame
MAX_ROUTES = 512  # routes counted between two pulls; further new ones are dropped
MAX_SPANS = 4096  # (thread, route) spans between two pulls; further new ones are dropped
MAX_THREADS = 8  # threads noted on one request; a request handing work to more is rare
_SEARCH_DEPTH = 4  # work item -> partial -> closure -> context (asgiref's, the deepest)


def package_of(file: str) -> str:
    """The top-level package of an installed file ("" for any other)."""
    for marker in ("/site-packages/", "/dist-packages/"):
        at = file.rfind(marker)
        if at >= 0:
            return file[at + len(marker):].split("/", 1)[0].removesuffix(".py")
    return ""


def is_worker_run(file: str, function: str) -> bool:
    name = function.rsplit(".", 1)[-1]  # py-spy may name it by its qualified name
    return any(name == run and file.replace("\\", "/").endswith(ending)
               for ending, run in WORKER_RUNS)


def _workers_own(file: str) -> bool:
    return file.replace("\\", "/").endswith(WORKER_OWN)


def is_offloaded(frames: list[tuple[str, str]], is_app: Callable[[str, str], bool]) -> bool:
    """Whether a stack (root first, (file, function) each) is work handed to a pool: a
    worker's frame with nothing above it of the app's (`is_app(file, function)`) or of a
    framework's, nor the worker's own waiting and reporting (`WORKER_OWN`)."""
    for index in range(len(frames) - 1, -1, -1):
        file, function = frames[index]
        if is_worker_run(file, function):
            return index + 1 == len(frames) or not _workers_own(frames[index + 1][0])
        if is_app(file, function) or package_of(file.replace("\\", "/")) in FRAMEWORKS:
            return False
    return False


class Offload:
    """Whether the middleware should put each request in `CURRENT` for the looks to find."""

    wanted = False


OFFLOAD = Offload()


def request_of(frame: types.FrameType | None, is_app: Callable[[str, str], bool]) -> Any:
    """The request (the middleware's, from `CURRENT`) whose work the thread with this leaf
    frame runs, when that work is offloaded (see `is_offloaded`); None otherwise. Seeing such
    work with no request in its context sets `OFFLOAD.wanted`."""
    child = None
    for _ in range(MAX_FRAMES):
        if frame is None:
            return None
        code = frame.f_code
        if is_worker_run(code.co_filename, code.co_name):
            break
        if is_app(code.co_filename, code.co_name) or \
                package_of(code.co_filename.replace("\\", "/")) in FRAMEWORKS:
            return None
        child, frame = code, frame.f_back
    else:
        return None
    if frame is None or (child is not None and _workers_own(child.co_filename)):
        return None
    context = None
    for value in frame.f_locals.values():
        context = _context_in(value, _SEARCH_DEPTH)
        if context is not None:
            break
    request = context.get(CURRENT) if context is not None else None
    if request is None:
        OFFLOAD.wanted = True
    return request


def _context_in(value: Any, depth: int) -> Context | None:
    """The `contextvars.Context` a pool's work item runs in: the context itself (anyio's
    worker keeps it in a local), the `run` method of one (`copy_context().run`), or inside a
    work item, a partial or a closure holding one."""
    if isinstance(value, Context):
        return value
    if depth <= 0:
        return None
    inner: tuple[Any, ...] = ()
    if isinstance(value, types.BuiltinMethodType):
        inner = (value.__self__,)
    elif isinstance(value, functools.partial):
        inner = (value.func, *value.args)
    elif isinstance(value, concurrent.futures.thread._WorkItem):
        inner = (value.fn, *value.args)
    elif isinstance(value, types.FunctionType):
        inner = tuple(_cell(cell) for cell in value.__closure__ or ())
    elif isinstance(value, TimedCall):
        inner = (value.call,)
    for item in inner:
        found = _context_in(item, depth - 1)
        if found is not None:
            return found
    return None


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


class OffloadCounts:
    """Per (method, route) of finished requests, until drained: the looks at their offloaded
    work, and the CPU seconds their timed calls used (`PoolTiming`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], list[Any]] = {}

    def add(self, method: str, route: str, looks: int, cpu: float = 0.0) -> None:
        key = (method, route)
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                if len(self._counts) >= MAX_ROUTES:
                    return
                counts = self._counts[key] = [0, 0.0]
            counts[0] += looks
            counts[1] += cpu

    def drain(self) -> list[tuple[str, str, int, float]]:
        with self._lock:
            counts, self._counts = self._counts, {}
        return [(method, route, looks, cpu) for (method, route), (looks, cpu) in counts.items()]

    def reset(self) -> None:
        """Start empty (in a forked child, where no other thread runs)."""
        self._lock = threading.Lock()
        self._counts = {}


# -- measured: the CPU of each call a request hands to a pool ---------------------------------

class ThreadSpans:
    """Per (thread id, method, route), until drained: the first start and the last end (epoch
    seconds) of the finished requests whose handed calls that thread ran, and how many."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: dict[tuple[int, str, str], list[Any]] = {}

    def add(self, threads: list[int], method: str, route: str, start: float,
            end: float) -> None:
        with self._lock:
            spans = self._spans
            for tid in threads:
                key = (tid, method, route)
                span = spans.get(key)
                if span is None:
                    if len(spans) < MAX_SPANS:
                        spans[key] = [start, end, 1]
                    continue
                if start < span[0]:
                    span[0] = start
                if end > span[1]:
                    span[1] = end
                span[2] += 1

    def drain(self) -> list[tuple[int, str, str, float, float, int]]:
        with self._lock:
            spans, self._spans = self._spans, {}
        return [(tid, method, route, start, end, count)
                for (tid, method, route), (start, end, count) in spans.items()]

    def reset(self) -> None:
        """Start empty (in a forked child, where no other thread runs)."""
        self._lock = threading.Lock()
        self._spans = {}


class TimedCall:
    """A call a request hands to a pool: the thread that runs it is noted on the request (its
    `threads`, see `ThreadSpans`), and, when `timed`, the call is timed by the thread's CPU
    clock (the kernel's, `time.thread_time`) for that request (its `pool_cpu`). Its frame is
    the one it adds to the worker's stack: the collector leaves it out of py-spy's stacks and
    the looks step over it (`past_timing`), so the work reads as before."""

    __slots__ = ("call", "request", "timed")

    def __init__(self, call: Callable[..., Any], request: Any, timed: bool = True) -> None:
        self.call = call
        self.request = request
        self.timed = timed

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            tid = get_native_id()
            threads = self.request.threads
            if threads is None:
                self.request.threads = [tid]
            elif tid not in threads and len(threads) < MAX_THREADS:
                threads.append(tid)
        except AttributeError:  # a request object of another agent's making
            pass
        if not self.timed:
            return self.call(*args, **kwargs)
        started = time.thread_time()
        try:
            return self.call(*args, **kwargs)
        finally:
            try:
                self.request.pool_cpu += time.thread_time() - started
            except AttributeError:  # a request object of another agent's making
                pass


TIMED_CODE = TimedCall.__call__.__code__


def past_timing(frame: types.FrameType | None) -> types.FrameType | None:
    """The frame, or its caller when it is `TimedCall`'s own."""
    if frame is not None and frame.f_code is TIMED_CODE:
        return frame.f_back
    return frame


def _is_context_run(fn: Any) -> bool:
    return isinstance(fn, types.BuiltinMethodType) and isinstance(
        getattr(fn, "__self__", None), Context)


def callee(fn: Any, args: tuple[Any, ...] = ()) -> Any:
    """What a call handed to a pool (`fn(*args)`) comes down to: through partials, a context's
    `run` (`asyncio.to_thread`, Quart's `run_sync`), asgiref's `thread_handler` (its
    `SyncToAsync.func`), bound methods."""
    for _ in range(2 * _SEARCH_DEPTH):
        if _is_context_run(fn):
            if not args:
                return fn
            fn, args = args[0], args[1:]
        elif isinstance(fn, functools.partial):
            fn, args = fn.func, fn.args
        elif isinstance(fn, TimedCall):
            fn = fn.call
        elif isinstance(fn, types.MethodType):
            owner: Any = fn.__self__
            if fn.__name__ == "thread_handler" and callable(getattr(owner, "func", None)):
                fn, args = owner.func, ()  # asgiref: partial(self.thread_handler, ..., child)
            else:
                fn = fn.__func__
        else:
            return fn
    return fn


MAX_VERDICTS = 1024  # callees judged and remembered; the memory is cleared when full


class PoolTiming:
    """Times the calls requests hand to pools whose work will show no frame of the app's nor of
    a framework's (C code such as `bcrypt.checkpw`, a library's function): what the analysis
    shares the pool threads' offloaded CPU by, exactly, where the looks (once a second) may
    never catch a short call. A call of the app's own code is found by its frames, and a
    framework's is the server's work: neither is timed.

    Hooks `ThreadPoolExecutor.submit` (asyncio's `to_thread` and `run_in_executor`, asgiref,
    Quart, Falcon) and `anyio.to_thread.run_sync` (Starlette's and FastAPI's
    `run_in_threadpool`), when imported. A call without a request in `CURRENT` is neither
    timed nor noted, and sets `OFFLOAD.wanted`, so the middleware puts the next requests
    there."""

    def __init__(self, is_app: Callable[[str, str], bool]) -> None:
        self._is_app = is_app
        self._verdicts: dict[types.CodeType, bool] = {}
        self._undo: list[Callable[[], None]] = []
        self._installed: set[str] = set()
        self.errors = 0

    def install(self) -> None:
        """Hook the pools imported so far (call again later: those hooked are skipped)."""
        if "futures" not in self._installed:
            self._installed.add("futures")
            self._hook_submit(concurrent.futures.thread.ThreadPoolExecutor)
        to_thread = sys.modules.get("anyio.to_thread")
        if to_thread is not None and "anyio" not in self._installed:
            self._installed.add("anyio")
            self._hook_run_sync(to_thread)

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()
        self._installed.clear()

    def timed(self, fn: Any, args: tuple[Any, ...] = ()) -> Any:
        """`fn` as a `TimedCall` for the request in `CURRENT`, timed when its work is to be
        (see the class), else `fn` itself when no request is there. Never raises."""
        try:
            request = CURRENT.get()
            if request is None:
                OFFLOAD.wanted = True
                return fn
            return TimedCall(fn, request, self._measures(callee(fn, args)))
        except Exception:
            self.errors += 1
            return fn

    def _measures(self, target: Any) -> bool:
        code = getattr(target, "__code__", None)
        if code is None and not isinstance(target, (types.BuiltinFunctionType,
                                                    types.BuiltinMethodType)):
            method = type(target).__call__ if callable(target) else None  # an instance
            code = getattr(method, "__code__", None)
        if not isinstance(code, types.CodeType):
            return True  # C code: a builtin, a C extension's function
        verdict = self._verdicts.get(code)
        if verdict is None:
            file = code.co_filename
            verdict = not (self._is_app(file, code.co_name)
                           or package_of(file.replace("\\", "/")) in FRAMEWORKS)
            if len(self._verdicts) >= MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[code] = verdict
        return verdict

    def _hook_submit(self, executor: type) -> None:
        timed = self.timed

        def make(original: Any) -> Any:
            @functools.wraps(original)
            def submit(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
                return original(self, timed(fn, args), *args, **kwargs)
            return submit

        replace(executor, "submit", make, self._undo)

    def _hook_run_sync(self, module: Any) -> None:
        timed = self.timed

        def make(original: Any) -> Any:
            # A plain function returning anyio's own coroutine: no frame of ours while it waits.
            @functools.wraps(original)
            def run_sync(func: Any, *args: Any, **kwargs: Any) -> Any:
                return original(timed(func, args), *args, **kwargs)
            return run_sync

        replace(module, "run_sync", make, self._undo)


_TIMING: list[PoolTiming] = []  # the process-wide installation, at most one


def install_pool_timing(is_app: Callable[[str, str], bool]) -> PoolTiming:
    """Install the pool timing once per process; later calls hook pools imported since."""
    if not _TIMING:
        _TIMING.append(PoolTiming(is_app))
    _TIMING[0].install()
    return _TIMING[0]


def uninstall_pool_timing() -> None:
    while _TIMING:
        _TIMING.pop().uninstall()
