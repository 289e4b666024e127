"""Loaded at interpreter start-up in processes started by `apiscope run`.

`apiscope run` puts this directory first on PYTHONPATH. When the server imports its own
modules, the agent is wired into the place where it keeps the application it calls: uvicorn's
`Config.load()` (also what gunicorn's `UvicornWorker` runs in each worker), hypercorn's
`ASGIWrapper`, daphne's `Server` and granian's `asgi._callback_wrapper`. Every request of any
ASGI app (Starlette, FastAPI, Django, Litestar or a bare callable) is then measured from the
first one, with no injection.
The agent is loaded from apiscope's own files under the name `apiscope_agent`, so the
server's environment needs nothing installed. Any failure here leaves the server untouched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any


def _load_agent() -> ModuleType:
    existing = sys.modules.get("apiscope_agent")
    if existing is not None:
        return existing
    init = os.environ["APISCOPE_AGENT_INIT"]
    spec = importlib.util.spec_from_file_location(
        "apiscope_agent", init, submodule_search_locations=[os.path.dirname(init)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the apiscope agent from {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["apiscope_agent"] = module
    spec.loader.exec_module(module)
    return module


def _with_agent(app: Any) -> Any:
    """`app` behind the process's agent, started; `app` itself if anything goes wrong."""
    if type(app).__name__ == "AgentMiddleware":
        return app  # instrument(app) in the app's code: it is measured already
    try:
        agent = _load_agent().current_agent()
        wrapped = agent.middleware(app)
        agent.start()
        return wrapped
    except Exception as exc:  # never break the server for the sake of measuring it
        print(f"apiscope: agent not installed: {exc!r}", file=sys.stderr)
        return app


def _patch_uvicorn(module: ModuleType) -> None:
    config_cls: Any = module.Config
    original_load = config_cls.load

    def load(self: Any) -> None:
        original_load(self)
        self.loaded_app = _with_agent(self.loaded_app)

    config_cls.load = load


def _patch_hypercorn(module: ModuleType) -> None:
    wrapper_cls: Any = module.ASGIWrapper
    original_init = wrapper_cls.__init__

    def __init__(self: Any, app: Any) -> None:
        original_init(self, app)
        self.app = _with_agent(self.app)

    wrapper_cls.__init__ = __init__


def _patch_daphne(module: ModuleType) -> None:
    server_cls: Any = module.Server
    original_init = server_cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.application = _with_agent(self.application)

    server_cls.__init__ = __init__


def _patch_granian(module: ModuleType) -> None:
    original: Any = module._callback_wrapper

    def _callback_wrapper(callback: Any, *args: Any, **kwargs: Any) -> Any:
        return original(_with_agent(callback), *args, **kwargs)

    _callback_wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    module._callback_wrapper = _callback_wrapper  # type: ignore[attr-defined]


_PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "uvicorn.config": _patch_uvicorn,
    "hypercorn.app_wrappers": _patch_hypercorn,
    "anycorn.app_wrappers": _patch_hypercorn,  # hypercorn's fork on anyio
    "daphne.server": _patch_daphne,
    "granian.asgi": _patch_granian,
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds the server modules above with the normal finders and patches each once run."""

    def find_spec(self, fullname: str, path: Any = None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        patch = _PATCHES.get(fullname)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        created: ModuleType | None = self._loader.create_module(spec)
        return created

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            self._patch(module)
        except Exception as exc:
            print(f"apiscope: agent not installed: {exc!r}", file=sys.stderr)


PR_SET_PTRACER = 0x59616D61  # <linux/prctl.h>: "Yama"


def _let_the_collector_trace() -> None:
    """Name the collector (`APISCOPE_COLLECTOR_PID`) as this process's tracer.

    Under Yama's `kernel.yama.ptrace_scope=1` (Ubuntu's default) a process may only trace its
    own descendants. py-spy is the collector's child, a sibling of the server, so it would be
    refused; `PR_SET_PTRACER` lets the collector and its descendants trace us, and nobody else.
    Applied again in every forked child (gunicorn's workers), which does not inherit it.
    Without Yama the call fails with EINVAL and changes nothing.
    """
    collector = os.environ.get("APISCOPE_COLLECTOR_PID", "")
    if not collector.isdigit() or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(int(collector)), 0, 0, 0)
    except (OSError, AttributeError, ValueError):
        pass  # no libc prctl here: tracing stays as the kernel's settings say


if os.environ.get("APISCOPE_AGENT_INIT") and not any(m in sys.modules for m in _PATCHES):
    sys.meta_path.insert(0, _PatchAfterImport())
    _let_the_collector_trace()
    os.register_at_fork(after_in_child=_let_the_collector_trace)
