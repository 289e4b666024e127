"""Advice in the API of the framework actually serving the route.

The framework is read off the stacks that ran the route (the package its frames come from), so
a fix names `run_in_threadpool` for Starlette and FastAPI, `sync_to_async` for Django,
`sync_to_thread` for Litestar, `run_sync` for Quart, `falcon.util.sync_to_async` for Falcon, and
`asyncio.to_thread` for anything else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from apiscope.model import Frame

_PACKAGES = (
    ("django", re.compile(r"[/\\](django|asgiref|rest_framework)[/\\]")),
    ("litestar", re.compile(r"[/\\]litestar[/\\]")),
    ("starlette", re.compile(r"[/\\](starlette|fastapi)[/\\]")),
    ("quart", re.compile(r"[/\\]quart[/\\]")),
    ("falcon", re.compile(r"[/\\]falcon[/\\]")),
)

OFFLOAD = {
    "starlette": "await run_in_threadpool(...) (from starlette.concurrency)",
    "django": "await sync_to_async(...)(...) (from asgiref.sync)",
    "litestar": "await sync_to_thread(...) (from litestar.concurrency)",
    "quart": "await run_sync(...)(...) (from quart.utils)",
    "falcon": "await falcon.util.sync_to_async(...)",
    None: "await asyncio.to_thread(...)",
}


def framework_of(stacks: Iterable[Sequence[Frame]]) -> str | None:
    """"starlette" (FastAPI too), "django", "litestar", "quart", "falcon", or None when no
    stack shows one.

    Read from the leaf: the framework frame nearest the handler is the one that dispatched it
    (a Django app mounted in Starlette, or behind Starlette middleware, is Django's)."""
    for frames in stacks:
        for frame in reversed(frames):
            for name, pattern in _PACKAGES:
                if pattern.search(frame.file):
                    return name
    return None


def offload(framework: str | None) -> str:
    """How to run a blocking call in a thread, in that framework's API."""
    return OFFLOAD.get(framework, OFFLOAD[None])


def blocking_advice(framework: str | None) -> str:
    return ("replace the blocking call with its async form (await asyncio.sleep, an async client"
            f" or driver) or run it in a thread: {offload(framework)}")


def cpu_advice(framework: str | None) -> str:
    return ("move the CPU-bound work off the event loop: "
            f"{offload(framework)} for short work, a ProcessPoolExecutor for heavy work")


def native_advice(framework: str | None) -> str:
    return ("move the call off the event loop: in a thread, C code that releases the GIL runs"
            f" in parallel with the loop: {offload(framework)}")


SYNC_ON_LOOP = {
    "litestar": ("this handler is a plain def that Litestar runs on the event loop"
                 " (sync_to_thread=False): declare it with sync_to_thread=True to run it in a"
                 " thread, or make it async with the call in its async form"),
}


def sync_handler_advice(framework: str | None) -> str | None:
    """Advice for a sync handler that blocked the loop: only a framework that runs sync
    handlers on the loop when asked to (Litestar's `sync_to_thread=False`) has one."""
    return SYNC_ON_LOOP.get(framework) if framework is not None else None
