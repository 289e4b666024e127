"""Whose request a pool thread works for, when nothing of the app is on its stack.

An async handler that hands C code to a thread (`await asyncio.to_thread(hashlib.scrypt,
...)`, Starlette's `run_in_threadpool`, Quart's `run_sync`, asgiref's `sync_to_async`) leaves
in that thread a stack of the pool's own frames and nothing else: py-spy sees the thread busy
and no handler, so the CPU would be nobody's (or the server's). Every one of these runs the
call inside a copy of the awaiting task's context, and the middleware puts the request into
`queries.CURRENT`: the context, found in the pool worker's frame, names the request.

`request_of(frame)` is read by the thread looks (`threadlooks`, once a second, with the GIL
held) for threads found busy; each look counts on the request (`offloaded`), and the middleware
adds a finished request's count to its route's (`OffloadCounts`), which each pull hands over.
The collector shares out the CPU of the pool threads' offloaded stacks (`is_offloaded`, the
same test on py-spy's frames) by these counts.

Only work of no framework's and of no app frame's counts: a sync handler in a pool thread is
found by its own frame, and a framework's middleware run in a thread (Django's) is the server's
work, on both sides. The middleware sets `CURRENT` for every request only once a look has seen
offloaded work (`OFFLOAD.wanted`) or a database library is hooked: setting a context variable
is a sixth of the middleware's cost on a bare endpoint.

Standard library only, relative imports only, Python 3.9 compatible (see `watchdog`).
"""

from __future__ import annotations

import concurrent.futures.thread
import functools
import threading
import types
from collections.abc import Callable
from contextvars import Context
from typing import Any

from .queries import CURRENT

# The frame a pool worker runs its work item in: (file name's ending, code name).
WORKER_RUNS = (
    ("concurrent/futures/thread.py", "run"),  # asyncio's default executor, asgiref, Quart
    ("anyio/_backends/_asyncio.py", "run"),  # Starlette's, FastAPI's, Litestar's pool
)
# Packages of servers and frameworks: their frames above a worker's are a request being
# served in the thread (Django's sync middleware chain), not work handed to it.
FRAMEWORKS = ("django", "starlette", "fastapi", "litestar", "quart", "falcon", "flask",
              "werkzeug", "uvicorn", "gunicorn", "hypercorn", "daphne", "twisted",
              "rest_framework", "ninja", "channels", "sanic", "blacksheep")
# What a worker calls of its own, outside the work (the file's ending): waiting for the next
# item on its queue (anyio's worker keeps the last item's context meanwhile), handing a result
# back to the loop, settling the future.
WORKER_OWN = ("/queue.py", "/threading.py", "asyncio/base_events.py",
              "concurrent/futures/_base.py")
MAX_FRAMES = 64  # frames walked up from a thread's leaf to its worker's frame
MAX_ROUTES = 512  # routes counted between two pulls; further new ones are dropped
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
    """Looks at offloaded work per (method, route) of finished requests, until drained."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, method: str, route: str, looks: int) -> None:
        key = (method, route)
        with self._lock:
            if key in self._counts or len(self._counts) < MAX_ROUTES:
                self._counts[key] = self._counts.get(key, 0) + looks

    def drain(self) -> list[tuple[str, str, int]]:
        with self._lock:
            counts, self._counts = self._counts, {}
        return [(method, route, looks) for (method, route), looks in counts.items()]

    def reset(self) -> None:
        """Start empty (in a forked child, where no other thread runs)."""
        self._lock = threading.Lock()
        self._counts = {}
