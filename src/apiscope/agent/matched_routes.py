"""Frameworks that route a request without leaving the match in the scope: Quart and Flask
(werkzeug's `Map`; Flask is a WSGI app, served behind an ASGI adapter, often mounted inside a
FastAPI app) and Falcon's ASGI `App` (its compiled router).

Their templates are matched again from each request's method and path, by the framework's own
router, when the collector pulls: the request path only records the raw path behind
`DEFERRED` (one string concatenation), and `RouteRegistry.resolve` names it off the request
path, with a bounded cache (most paths repeat). Templates keep the framework's notation:
Quart's `/items/<int:item_id>`, Falcon's `/items/{item_id:int}`. No framework is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .handlers import RouteRow, handler_row, unwrap

DEFERRED = "\x00"  # before a raw path: the route is matched at pull time
UNMATCHED = "<unmatched>"

Matcher = Callable[[str, str], str]  # (method, path) -> template, or UNMATCHED


def werkzeug_rows(app: Any) -> list[RouteRow]:
    """One row per method of each HTTP rule; HEAD only where it is a rule's own, OPTIONS (which
    werkzeug adds to every rule) never. A `MethodView`'s rows name its methods."""
    rows: list[RouteRow] = []
    views = getattr(app, "view_functions", None) or {}
    for rule in app.url_map.iter_rules():
        view = views.get(rule.endpoint)
        if view is None or getattr(rule, "websocket", False):
            continue
        methods = set(rule.methods or ())
        view_class = getattr(view, "view_class", None)
        for method in sorted(m for m in methods
                             if m != "OPTIONS" and not (m == "HEAD" and "GET" in methods)):
            own = getattr(view_class, method.lower(), None) if view_class is not None else None
            rows.append(handler_row(method, str(rule.rule), own, view_class)
                        if callable(own) else handler_row(method, str(rule.rule), view))
    return rows


def werkzeug_matcher(app: Any) -> Matcher:
    """The rule werkzeug's map matches for a method and path (its template)."""
    adapter = app.url_map.bind("localhost")  # re-reads the map when rules are added

    def match(method: str, path: str) -> str:
        try:
            rule, _ = adapter.match(path, method=method, return_rule=True)
        except Exception as exc:
            if _http_exception(exc):  # NotFound, MethodNotAllowed, a slash redirect
                return UNMATCHED
            raise
        return str(rule.rule)

    return match


def _http_exception(exc: BaseException) -> bool:
    return any(cls.__name__ == "HTTPException" and cls.__module__.startswith("werkzeug")
               for cls in type(exc).__mro__)


def falcon_rows(app: Any) -> list[RouteRow]:
    """One row per responder the resource defines (Falcon fills the other methods of a route
    with its own responders: they are left out), suffixed responders under their route."""
    rows: list[RouteRow] = []
    nodes = list(getattr(app._router, "_roots", ()))
    while nodes:
        node = nodes.pop()
        nodes.extend(getattr(node, "children", None) or ())
        method_map = getattr(node, "method_map", None)
        resource = getattr(node, "resource", None)
        if not method_map or resource is None:
            continue
        template = str(node.uri_template)
        for method, responder in sorted(method_map.items()):
            module = getattr(unwrap(responder), "__module__", None) or ""
            if module == "falcon" or module.startswith("falcon."):
                continue
            rows.append(handler_row(method, template, responder, type(resource)))
    rows.sort(key=lambda row: (row["template"], row["method"]))
    return rows


def falcon_matcher(app: Any) -> Matcher:
    """The template of the route Falcon's router finds for a path (any method: a method the
    resource lacks is answered by Falcon on that route all the same)."""
    router = app._router

    def match(method: str, path: str) -> str:
        found = router.find(path)
        return UNMATCHED if found is None or not found[3] else str(found[3])

    return match


def mounted(prefix: str, match: Matcher) -> Matcher:
    """`match` for an app mounted at `prefix` (a Starlette `Mount`): it is asked the path
    below the prefix, and its template is given back under it."""
    if not prefix:
        return match

    def match_below(method: str, path: str) -> str:
        if path != prefix and not path.startswith(prefix + "/"):
            return UNMATCHED
        found = match(method, path[len(prefix):] or "/")
        return found if found == UNMATCHED else prefix + found

    return match_below
