"""What injection runs inside a live server: put the agent in front of its apps, or take it out.

`apiscope.inject` schedules this module to run on the target's main thread, between two
bytecodes, with the GIL held: the event loop is not running any callback at that moment, so
swapping an attribute is atomic as far as every request is concerned.

Finding the apps: the servers keep the ASGI callable they call on objects we can reach through
`gc` without knowing how the process was started (see `servers`): uvicorn (alone or as a
gunicorn `UvicornWorker`) on `Config.loaded_app` and on each connection's protocol, hypercorn
on `ASGIWrapper.app`, daphne on `Server.application`, granian in its runner's closure. The
agent takes that place, outside every framework, so any ASGI app is timed: Starlette, FastAPI,
Django, Litestar or a bare callable. The framework inside is found by following the wrappers'
`.app` attributes (and Channels' routers and middleware), for its route table. The wrapper
keeps the original as its `.app`, so that `detach` can restore it and a second `attach` can see
it is already there.

Standard library only, relative imports only: the target may not have apiscope installed.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from typing import Any

from .django_routes import remove_request_hook
from .failures import stop_listening
from .frameworks import DJANGO, apps_inside, wrapper_chain
from .offload import uninstall_pool_timing
from .orphan import OrphanWatch, forget_modules
from .queries import uninstall_query_hooks
from .runtime import Agent, current_agent, shutdown_agent
from .servers import ServedApp, is_agent, served_apps, unwrap, wrap

# The contract with `apiscope.inject.payload`: `run(action, directory, result, token, started)`.
# A process keeps the agent of the apiscope that first injected it; the payload of a newer or
# older apiscope checks this number before calling in.
API_VERSION = 1

Status = dict[str, Any]


def attach(directory: str | None = None) -> Status:
    """Wrap every app a server here calls, once, register its routes and start the agent.

    A process that serves no ASGI app is not an error: the status says so and nothing is
    started, so an idle interpreter gets no socket and no thread.
    """
    live = find_apps()
    status = _base_status("attach")
    status["apps"] = []
    if not live:
        status["note"] = _no_app_note()
        return status
    agent = current_agent(directory)
    injected_here = not agent.running  # not an agent the app added itself
    for item in live:
        state = wrap(agent, item)
        status["apps"].append({"server": item.server, "app": item.describe(), "state": state})
    agent.start()
    if injected_here and agent.orphan is None:
        # Gone with its collector (kill -9): see `orphan`.
        agent.orphan = OrphanWatch(lambda: _detach_orphan(agent))
        agent.orphan.start()
    status["wrapped"] = sum(1 for a in status["apps"] if a["state"] == "wrapped")
    # The agent's own path: an agent that `instrument(app)` started keeps its directory.
    status["socket"] = agent.socket_path
    return status


def detach() -> Status:
    """Give every server its own app back and stop the agent, its query hooks and its pool
    timing."""
    status = _base_status("detach")
    status["apps"] = []
    for item in find_apps():
        inner = item.app.app if is_agent(item.app) else None
        state = unwrap(item)
        if state == "restored":
            _release(inner)
        status["apps"].append({"server": item.server, "app": item.describe(), "state": state})
    status["restored"] = sum(1 for a in status["apps"] if a["state"] == "restored")
    shutdown_agent()
    uninstall_query_hooks()  # no-op when the agent already removed them
    uninstall_pool_timing()
    return status


def _detach_orphan(agent: Agent) -> None:
    """No collector pulled for too long: take the agent out as `apiscope detach` would."""
    agent.recorder.reset()  # free the buffer at once, whatever still holds the recorder
    detach()
    if __package__ and __package__ != "apiscope.agent":
        forget_modules(__package__)  # injected: the next attach loads a fresh agent


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


def find_apps() -> list[ServedApp]:
    """The apps served by uvicorn, gunicorn's UvicornWorker, hypercorn, daphne or granian
    here."""
    found: dict[int, ServedApp] = {}
    for item in served_apps():
        key = id(item.holder)
        if key not in found:
            found[key] = item
    return list(found.values())


def _release(app: Any) -> None:
    """Take the request hook out of a Django handler we no longer wrap, and the failure
    listeners out of each framework app, unless an agent added in code (`instrument`) still
    sits in front of it and reads them."""
    for framework, inner in apps_inside(app):
        if any(is_agent(a) for a in _chain_above(app, inner)):
            continue
        if framework == DJANGO:
            remove_request_hook(inner)
        stop_listening(framework, inner)


def _chain_above(outer: Any, target: Any) -> list[Any]:
    chain: list[Any] = []
    for current in wrapper_chain(outer):
        if current is target:
            break
        chain.append(current)
    return chain


def _base_status(action: str) -> Status:
    return {
        "action": action,
        "pid": os.getpid(),
        "python": platform.python_version(),
        "executable": sys.executable,
    }


def _no_app_note() -> str:
    if not any(m in sys.modules for m in ("uvicorn", "hypercorn", "anycorn", "daphne",
                                          "granian")):
        return ("no ASGI app found: this process runs no uvicorn, hypercorn, anycorn, daphne or"
                " granian server")
    return ("no ASGI app found: no uvicorn, gunicorn (UvicornWorker), hypercorn, anycorn,"
            " daphne or granian (ASGI interface) server in this process has loaded an app yet")
