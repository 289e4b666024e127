"""Where the ASGI servers in this process keep the application they call, and how the agent
takes its place there.

- uvicorn (alone, or as gunicorn's `UvicornWorker`): `Config.loaded_app`, the app wrapped in
  uvicorn's own middleware, read by each new connection's protocol object, which keeps it as
  `protocol.app` and calls it for every request on that connection. Replacing both (the
  config for new connections, the live protocols for keep-alive ones) takes effect for the
  very next request everywhere.
- hypercorn: `ASGIWrapper.app`, read on every request; anycorn (hypercorn's fork on anyio,
  which Jupyverse serves with) keeps it the same way.
- daphne (Django Channels' server): `Server.application`, read for every request (each HTTP
  request is an application instance of its own, called with keyword arguments).
- granian: its worker hands the app to its Rust core inside a closure (`asgi._callback_wrapper`'s
  `_runner`), which reads the app from its `callback` cell for every request: the cell is
  where the agent goes (a cell's contents can be replaced, `cell_contents`).

Wrapping there, outside every framework, times any ASGI app: Starlette, FastAPI, Django,
Litestar or a bare callable. The wrapper is marked `injected` so that `unwrap` takes out only
what `wrap` put in (an agent added in code with `instrument(app)` stays).
"""

from __future__ import annotations

import gc
import sys
import types
from dataclasses import dataclass
from typing import Any

from .frameworks import describe

# The connection objects of uvicorn's HTTP implementations; each holds the app as `.app`.
_UVICORN_PROTOCOLS = (
    ("uvicorn.protocols.http.h11_impl", "H11Protocol"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol"),
)


# hypercorn and its fork on anyio: the same `app_wrappers.ASGIWrapper`.
HYPERCORNS = ("hypercorn", "anycorn")


@dataclass(frozen=True)
class ServedApp:
    """An ASGI callable a server calls, and the attribute of the object it is kept on."""

    server: str  # "uvicorn", "gunicorn", "hypercorn", "anycorn", "daphne" or "granian"
    holder: Any
    attr: str

    @property
    def app(self) -> Any:
        return getattr(self.holder, self.attr, None)

    def describe(self) -> str:
        app = self.app
        inner = app.app if is_agent(app) else app
        return describe(inner)


def served_apps() -> list[ServedApp]:
    """The apps the uvicorn, gunicorn (UvicornWorker), hypercorn, daphne and granian servers
    here have loaded."""
    found: list[ServedApp] = []
    server = "gunicorn" if "gunicorn.workers.base" in sys.modules else "uvicorn"
    for config in instances("uvicorn.config", "Config"):
        # `loaded_app` appears once uvicorn has imported the app (`Config.load()`); a
        # `--reload` or `--workers` supervisor never loads it and serves nothing itself.
        if getattr(config, "loaded_app", None) is not None:
            found.append(ServedApp(server, config, "loaded_app"))
    for name in HYPERCORNS:
        for wrapper in instances(f"{name}.app_wrappers", "ASGIWrapper"):
            if getattr(wrapper, "app", None) is not None:
                found.append(ServedApp(name, wrapper, "app"))
    for daphne in instances("daphne.server", "Server"):
        if getattr(daphne, "application", None) is not None:
            found.append(ServedApp("daphne", daphne, "application"))
    for cell in _granian_cells():
        found.append(ServedApp("granian", cell, "cell_contents"))
    return found


def _granian_cells() -> list[Any]:
    """The `callback` cells of granian's ASGI runners alive here (one per worker's app)."""
    module = sys.modules.get("granian.asgi")
    wrapper = getattr(module, "_callback_wrapper", None)
    wrapper = getattr(wrapper, "__wrapped__", wrapper)  # as `apiscope run` patched it
    code = getattr(wrapper, "__code__", None)
    if not isinstance(code, types.CodeType):
        return []
    cells = []
    for runner in code.co_consts:
        if not (isinstance(runner, types.CodeType) and runner.co_name == "_runner"
                and "callback" in runner.co_freevars):
            continue
        index = runner.co_freevars.index("callback")
        for function in gc.get_referrers(runner):  # the closures made of that code
            if type(function) is not types.FunctionType:  # by type: see `instances`
                continue
            closure = function.__closure__
            if closure and len(closure) > index:
                cells.append(closure[index])
    return cells


def is_agent(app: Any) -> bool:
    # By name: each copy of the agent (instrument's, injection's) has its own class.
    return type(app).__name__ == "AgentMiddleware"


def wrap(agent: Any, served: ServedApp) -> str:
    """Put the agent in front of the app: "wrapped", "already" (by an earlier attach) or
    "instrumented" (the server calls an agent added in code)."""
    current = served.app
    if is_agent(current):
        return "already" if getattr(current, "injected", False) else "instrumented"
    wrapper = agent.middleware(current)
    wrapper.injected = True
    setattr(served.holder, served.attr, wrapper)
    if served.attr == "loaded_app":
        _swap_protocol_apps(current, wrapper)
    return "wrapped"


def unwrap(served: ServedApp) -> str:
    """Take out the wrapper `wrap` put in: "restored", or "not wrapped"."""
    current = served.app
    if not (is_agent(current) and getattr(current, "injected", False)):
        return "not wrapped"
    setattr(served.holder, served.attr, current.app)
    if served.attr == "loaded_app":
        _swap_protocol_apps(current, current.app)
    return "restored"


def _swap_protocol_apps(old: Any, new: Any) -> None:
    # Keep-alive connections read their own `.app`, not the config's.
    for module, name in _UVICORN_PROTOCOLS:
        for protocol in instances(module, name):
            if getattr(protocol, "app", None) is old:
                protocol.app = new


def instances(module_name: str, class_name: str) -> list[Any]:
    """Live instances of a class (and its subclasses) from a module the process imported.

    `gc.get_referrers` walks the heap in C, much faster than `gc.get_objects()` in Python: an
    instance of a Python class refers to its class, which is how we find it. A module that
    was never imported means there is nothing to find, and we never import it ourselves.
    """
    module = sys.modules.get(module_name)
    cls = getattr(module, class_name, None) if module is not None else None
    if not isinstance(cls, type):
        return []
    classes = [cls, *_subclasses(cls)]
    # By type, not `isinstance`, which asks an object's `__class__`: a lazy object of the app
    # (Django's SimpleLazyObject) would evaluate itself, running app code from our thread.
    return [obj for obj in gc.get_referrers(*classes) if issubclass(type(obj), cls)]


def _subclasses(cls: type) -> list[type]:
    found: list[type] = []
    pending: list[type] = list(cls.__subclasses__())
    while pending:
        sub = pending.pop()
        found.append(sub)
        pending.extend(sub.__subclasses__())
    return found
