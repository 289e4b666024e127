"""The route table of a Starlette/FastAPI app, read by duck typing (no Starlette import).

Besides the table itself, `RouteRegistry` remembers the full template of every route object:
inside a Mount, `scope["route"]` is the inner route, whose template lacks the mount's prefix.
"""

from __future__ import annotations

import functools
import inspect
import re
import time
from typing import Any

RouteRow = dict[str, Any]  # method, template, handler, file, line, is_async

_CONVERTER = re.compile(r"\{(\w+):[^}]*\}")
_HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")


def template_of(route: Any) -> str:
    """The route's template with converters stripped (`/items/{id}`, not `{id:int}`)."""
    return str(getattr(route, "path_format", None) or getattr(route, "path", ""))


def unwrap(func: Any) -> Any:
    """The function a handler really runs: through functools.partial and `__wrapped__`."""
    for _ in range(100):  # a bound on pathological wrapper chains
        if isinstance(func, functools.partial):
            func = func.func
        elif getattr(func, "__wrapped__", None) is not None:
            func = func.__wrapped__
        else:
            break
    return func


def handler_row(method: str, template: str, handler: Any) -> RouteRow:
    func = unwrap(handler)
    code = getattr(func, "__code__", None)
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return {
        "method": method,
        "template": template,
        "handler": f"{module}:{qualname}",
        "file": code.co_filename if code is not None else _safe_sourcefile(func),
        "line": code.co_firstlineno if code is not None else 0,
        "is_async": inspect.iscoroutinefunction(func),
    }


def _safe_sourcefile(func: Any) -> str:
    try:
        return inspect.getsourcefile(func) or ""
    except TypeError:
        return ""


def _route_rows(route: Any, template: str) -> list[RouteRow]:
    endpoint = getattr(route, "endpoint", None)
    methods = getattr(route, "methods", None)
    if endpoint is None:
        return []
    if inspect.isclass(endpoint):  # an HTTPEndpoint: one handler per method it defines
        return [handler_row(m, template, getattr(endpoint, m.lower()))
                for m in _HTTP_METHODS if callable(getattr(endpoint, m.lower(), None))]
    if not methods:  # a route without methods (WebSocketRoute, a raw ASGI endpoint)
        kind = "WEBSOCKET" if type(route).__name__ == "WebSocketRoute" else "*"
        return [handler_row(kind, template, endpoint)]
    # Starlette adds HEAD to every GET route: list it only when it is the route's own.
    listed = sorted(m for m in methods if not (m == "HEAD" and "GET" in methods))
    return [handler_row(m, template, endpoint) for m in listed]


class RouteRegistry:
    """The route tables of the apps the agent serves, and each route object's full template.

    `refresh()` re-reads every app (routes may be added after `instrument(app)`); it builds new
    containers and swaps them in, so the middleware's lookups never see a half-built table.
    """

    def __init__(self) -> None:
        self.rows: list[RouteRow] = []
        # id(route) -> (route, template); the route is kept so that its id is never reused.
        self._templates: dict[int, tuple[Any, str]] = {}
        self._apps: list[Any] = []
        self._refreshed = 0.0

    def add_app(self, app: Any) -> None:
        """Read `app.routes` (recursing into Mounts).

        An app already known (a Starlette app and its router share one route list) is re-read
        instead, at most once a second: it may have gained routes since.
        """
        routes = getattr(app, "routes", None)
        if routes is None:
            return
        if any(known.routes is routes for known in self._apps):
            if time.monotonic() - self._refreshed < 1.0:
                return
        else:
            self._apps.append(app)
        self.refresh()

    def refresh(self) -> None:
        self._refreshed = time.monotonic()
        rows: list[RouteRow] = []
        templates: dict[int, tuple[Any, str]] = {}
        for app in self._apps:
            _walk(app.routes, "", rows, templates)
        self.rows, self._templates = rows, templates

    def template(self, route: Any) -> str | None:
        """The full template of a route object (or FastAPI route context, or endpoint)."""
        found = self._templates.get(id(route))
        return found[1] or None if found is not None and found[0] is route else None


def _add_endpoint(templates: dict[int, tuple[Any, str]], endpoint: Any, template: str) -> None:
    # FastAPI serves /docs and /openapi.json as low-priority routes that leave no
    # scope["route"], only scope["endpoint"]: an endpoint of exactly one route names it.
    known = templates.get(id(endpoint))
    if known is None:
        templates[id(endpoint)] = (endpoint, template)
    elif known[1] != template:
        templates[id(endpoint)] = (endpoint, "")  # shared by several routes: ambiguous


def _walk(routes: Any, prefix: str, rows: list[RouteRow],
          templates: dict[int, tuple[Any, str]]) -> None:
    for route in routes:
        if hasattr(route, "effective_route_contexts"):
            _walk_included(route, prefix, rows, templates)
            continue
        sub_routes = getattr(route, "routes", None)
        path = getattr(route, "path", None)
        if path is None:  # Host(): routes without a path prefix of their own
            if sub_routes is not None:
                _walk(sub_routes, prefix, rows, templates)
            continue
        template = prefix + template_of(route)
        templates[id(route)] = (route, template)
        if sub_routes is not None and not hasattr(route, "endpoint"):  # a Mount
            _walk(sub_routes, prefix + _CONVERTER.sub(r"{\1}", str(path)), rows, templates)
        else:
            rows.extend(_route_rows(route, template))
            if getattr(route, "endpoint", None) is not None:
                _add_endpoint(templates, route.endpoint, template)


def _walk_included(included: Any, prefix: str, rows: list[RouteRow],
                   templates: dict[int, tuple[Any, str]]) -> None:
    """A router FastAPI includes lazily: its routes keep their own path (one route object can
    be included under several prefixes), and each inclusion gets an effective route context
    holding the prefixed path. Requests carry that context in `scope["fastapi"]`."""
    for context in included.effective_route_contexts():
        local = effective_template(context)
        template = prefix + local
        templates[id(context)] = (context, template)
        original = context.original_route
        sub_routes = getattr(original, "routes", None)
        if sub_routes is not None and not hasattr(original, "endpoint"):  # an included Mount
            mount_path = str(getattr(context.starlette_route, "path", ""))
            _walk(sub_routes, prefix + _CONVERTER.sub(r"{\1}", mount_path), rows, templates)
        else:
            rows.extend(_route_rows(original, template))


def effective_template(context: Any) -> str:
    """The prefixed template of a FastAPI effective route context."""
    return str(getattr(context.starlette_route, "path_format", None)
               or getattr(context, "path_format", ""))
