"""Loaded at interpreter start-up in processes started by `apiscope run`.

`apiscope run` puts this directory first on PYTHONPATH. When the server imports Starlette, the
agent is wired into `Starlette.__call__`, where the app builds its middleware stack on its first
call, so every app (and every gunicorn worker, each building its own stack) is measured from the
first request, with no injection. The agent is loaded from apiscope's own files under the name
`apiscope_agent`, so the server's environment needs nothing installed. Any failure here leaves
the server untouched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

_TARGET_MODULE = "starlette.applications"


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


def _patch_starlette(module: ModuleType) -> None:
    # Starlette.__call__ builds the middleware stack on the first call (lifespan or request).
    # FastAPI overrides build_middleware_stack but calls Starlette.__call__, so this is the
    # one place that sees every app. Only the first app called is wrapped: mounted sub-apps
    # run inside it and are measured already.
    starlette_cls: Any = module.Starlette
    original_call = starlette_cls.__call__
    outermost: list[int] = []

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if self.middleware_stack is None and (not outermost or outermost[0] == id(self)):
            outermost[:] = [id(self)]
            stack = self.build_middleware_stack()
            try:
                agent = _load_agent().current_agent()
                agent.add_routes(self)
                agent.start()
                stack = agent.middleware(stack)
            except Exception as exc:  # never break the server for the sake of measuring it
                print(f"apiscope: agent not installed: {exc!r}", file=sys.stderr)
            self.middleware_stack = stack
        await original_call(self, scope, receive, send)

    starlette_cls.__call__ = __call__


class _PatchAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds starlette.applications with the normal finders and patches it once executed."""

    def __init__(self) -> None:
        self._loader: Any = None

    def find_spec(self, fullname: str, path: Any = None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        created: ModuleType | None = self._loader.create_module(spec)
        return created

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        try:
            _patch_starlette(module)
        except Exception as exc:
            print(f"apiscope: agent not installed: {exc!r}", file=sys.stderr)


if os.environ.get("APISCOPE_AGENT_INIT") and _TARGET_MODULE not in sys.modules:
    sys.meta_path.insert(0, _PatchAfterImport())
