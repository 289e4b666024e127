"""What injection runs inside a live server: put the agent in front of its apps, or take it out.

`apiscope.inject` schedules this module to run on the target's main thread, between two
bytecodes, with the GIL held: the event loop is not running any callback at that moment, so
swapping an attribute is atomic as far as every request is concerned.

Finding the apps: the servers keep them on objects we can reach through `gc` without knowing
how the process was started. uvicorn (alone or as a gunicorn `UvicornWorker`) keeps the app it
serves on `Config.loaded_app`, wrapped in its own middleware (`ProxyHeadersMiddleware`,
`MessageLoggerMiddleware`...); hypercorn keeps it on `ASGIWrapper.app`. We follow `.app`
attributes from there down to the Starlette (or FastAPI) application.

Wrapping: Starlette calls `self.middleware_stack` on every request, so replacing that attribute
takes effect for the next request on every connection, including keep-alive connections that
already hold a reference to the outer app. The original stack is kept on the app itself so that
`detach` can restore it and a second `attach` can see that the app is already wrapped.

Standard library only, relative imports only: the target may not have apiscope installed.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from .queries import uninstall_query_hooks
from .runtime import current_agent, shutdown_agent

# The contract with `apiscope.inject.payload`: `run(action, directory, result, token, started)`.
# A process keeps the agent of the apiscope that first injected it; the payload of a newer or
# older apiscope checks this number before calling in.
API_VERSION = 1
ORIGINAL_ATTR = "_apiscope_original_stack"
WRAPPER_ATTR = "_apiscope_wrapper"
INSTRUMENTED_ATTR = "_apiscope_agent"  # set by `instrument(app)`, which may not have built yet
MAX_WRAPPER_DEPTH = 16  # ASGI middleware chains outside the app are a handful deep

Status = dict[str, Any]


@dataclass(frozen=True)
class LiveApp:
    """A Starlette application that a server in this process is serving."""

    server: str  # "uvicorn", "gunicorn" or "hypercorn"
    app: Any

    def describe(self) -> str:
        cls = type(self.app)
        return f"{cls.__module__}.{cls.__qualname__}"


def attach(directory: str | None = None) -> Status:
    """Wrap every live Starlette app once, register its routes and start the agent.

    A process that serves no Starlette app is not an error: the status says so and nothing is
    started, so an idle interpreter gets no socket and no thread.
    """
    live = find_apps()
    status = _base_status("attach")
    status["apps"] = []
    if not live:
        status["note"] = _no_app_note()
        return status
    agent = current_agent(directory)
    for item in live:
        state = wrap_app(agent, item.app)
        status["apps"].append({"server": item.server, "app": item.describe(), "state": state})
    agent.start()
    status["wrapped"] = sum(1 for a in status["apps"] if a["state"] == "wrapped")
    # The agent's own path: an agent that `instrument(app)` started keeps its directory.
    status["socket"] = agent.socket_path
    return status


def detach() -> Status:
    """Restore every app's own middleware stack and stop the agent and its query hooks."""
    status = _base_status("detach")
    status["apps"] = []
    for item in find_apps():
        state = unwrap_app(item.app)
        status["apps"].append({"server": item.server, "app": item.describe(), "state": state})
    status["restored"] = sum(1 for a in status["apps"] if a["state"] == "restored")
    shutdown_agent()
    uninstall_query_hooks()  # no-op when the agent already removed them
    return status


def run(action: str, directory: str | None, result_path: str, token: str,
        started: float | None = None) -> Status:
    """Entry point for the injector: do `action` and write the status where it waits for it.

    `started` (a `time.perf_counter()` value) is when the injected code began, so that
    `elapsed_ms` covers loading the agent too. Returns the status it wrote. Never raises: an
    exception escaping a pending call would surface as a SystemError in whatever code the main
    thread was running (the server's event loop).
    """
    started = time.perf_counter() if started is None else started
    try:
        status = attach(directory) if action == "attach" else detach()
        status["ok"] = True
    except Exception as exc:  # reported to the injector, never to the server
        status = _base_status(action)
        status.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    status["token"] = token
    status["elapsed_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
    try:
        write_status(result_path, status)
    except OSError:
        pass  # the injector times out and says so; the server must not see our failure
    return status


def write_status(path: str, status: Status) -> None:
    """Write `status` as JSON, mode 0600, atomically (the injector polls for the file)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".inject-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(status, out, default=str)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# -- finding the apps -----------------------------------------------------------------------


def find_apps() -> list[LiveApp]:
    """The Starlette apps served by uvicorn, gunicorn's UvicornWorker or hypercorn here."""
    starlette = _class("starlette.applications", "Starlette")
    if starlette is None:
        return []
    found: dict[int, LiveApp] = {}
    server = "gunicorn" if "gunicorn.workers.base" in sys.modules else "uvicorn"
    for config in instances("uvicorn.config", "Config"):
        # `loaded_app` appears once uvicorn has imported the app (`Config.load()`); a
        # `--reload` or `--workers` supervisor never loads it and serves nothing itself.
        _add(found, server, getattr(config, "loaded_app", None), starlette)
    for wrapper in instances("hypercorn.app_wrappers", "ASGIWrapper"):
        _add(found, "hypercorn", getattr(wrapper, "app", None), starlette)
    return list(found.values())


def _add(found: dict[int, LiveApp], server: str, outer: Any, starlette: type) -> None:
    app = starlette_inside(outer, starlette)
    if app is not None and id(app) not in found:
        found[id(app)] = LiveApp(server, app)


def starlette_inside(outer: Any, starlette: type) -> Any:
    """Follow `.app` from the server's outermost ASGI callable to a Starlette instance."""
    current = outer
    for _ in range(MAX_WRAPPER_DEPTH):
        if current is None or isinstance(current, starlette):
            return current
        current = getattr(current, "app", None)
    return None


def instances(module_name: str, class_name: str) -> list[Any]:
    """Live instances of a class (and its subclasses) from a module the process imported.

    `gc.get_referrers` walks the heap in C, much faster than `gc.get_objects()` in Python: an
    instance of a Python class refers to its class, which is how we find it. A module that
    was never imported means there is nothing to find, and we never import it ourselves.
    """
    cls = _class(module_name, class_name)
    if cls is None:
        return []
    classes = [cls, *_subclasses(cls)]
    return [obj for obj in gc.get_referrers(*classes) if isinstance(obj, cls)]


def _class(module_name: str, class_name: str) -> type | None:
    module = sys.modules.get(module_name)
    cls = getattr(module, class_name, None) if module is not None else None
    return cls if isinstance(cls, type) else None


def _subclasses(cls: type) -> list[type]:
    found: list[type] = []
    pending: list[type] = list(cls.__subclasses__())
    while pending:
        sub = pending.pop()
        found.append(sub)
        pending.extend(sub.__subclasses__())
    return found


# -- wrapping -------------------------------------------------------------------------------


def wrap_app(agent: Any, app: Any) -> str:
    """Put the agent in front of `app`'s middleware stack once: "wrapped", "already" or
    "instrumented" (the app was given an agent in code with `instrument(app)`)."""
    current = app.middleware_stack
    if current is not None and current is getattr(app, WRAPPER_ATTR, None):
        return "already"
    if vars(app).get(INSTRUMENTED_ATTR) or type(current).__name__ == "AgentMiddleware":
        return "instrumented"
    if current is None:
        # Starlette builds the stack on the first request; build it now so there is
        # something to wrap. Building it is what that first request would have done.
        current = app.build_middleware_stack()
    wrapper = agent.middleware(current)
    agent.add_routes(app)
    setattr(app, ORIGINAL_ATTR, current)
    setattr(app, WRAPPER_ATTR, wrapper)
    app.middleware_stack = wrapper  # last: the next request sees a complete wrapper
    return "wrapped"


def unwrap_app(app: Any) -> str:
    """Restore the stack `wrap_app` replaced: "restored", "not wrapped", or "changed" when
    something replaced our wrapper since (then their stack stays, and so does ours inside)."""
    original = getattr(app, ORIGINAL_ATTR, None)
    if original is None:
        return "not wrapped"
    state = "changed"
    if app.middleware_stack is getattr(app, WRAPPER_ATTR, None):
        app.middleware_stack = original
        state = "restored"
    delattr(app, ORIGINAL_ATTR)
    delattr(app, WRAPPER_ATTR)
    return state


def _base_status(action: str) -> Status:
    return {
        "action": action,
        "pid": os.getpid(),
        "python": platform.python_version(),
        "executable": sys.executable,
    }


def _no_app_note() -> str:
    if "starlette" not in sys.modules:
        return "no ASGI app found: this process has not imported Starlette or FastAPI"
    return ("no ASGI app found: no uvicorn, gunicorn (UvicornWorker) or hypercorn server in"
            " this process is serving a Starlette or FastAPI app")
