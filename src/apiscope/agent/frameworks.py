"""Which web framework an ASGI callable is, found by class names (no framework is imported).

The agent wraps whatever callable the server calls; the framework app is somewhere inside,
behind the server's own middleware (`.app` attributes) or, in a Django Channels project, a
`ProtocolTypeRouter` (its "http" entry) and Channels middleware (`.inner`). Knowing it lets
the agent read the framework's route table and, for Django, keep the request whose resolver
match names the route.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

STARLETTE = "starlette"
DJANGO = "django"
LITESTAR = "litestar"
QUART = "quart"
FALCON = "falcon"
FLASK = "flask"  # a WSGI app, met behind an ASGI adapter (Starlette's or uvicorn's WSGIMiddleware)
MAX_DEPTH = 16  # ASGI middleware chains outside an app are a handful deep

# (module prefix, class name) of each framework's application class, subclasses included.
_APP_CLASSES = (
    ("starlette.", "Starlette", STARLETTE),
    ("starlette.", "Router", STARLETTE),
    ("django.", "ASGIHandler", DJANGO),
    ("litestar.", "Litestar", LITESTAR),
    ("quart.", "Quart", QUART),
    ("falcon.asgi.", "App", FALCON),
    ("flask.", "Flask", FLASK),
)


def framework_of(obj: Any) -> str | None:
    """"starlette", "django", "litestar", "quart", "falcon" or "flask" when `obj` is that
    framework's app."""
    for cls in type(obj).__mro__:
        module = cls.__module__ or ""
        for prefix, name, framework in _APP_CLASSES:
            if cls.__name__ == name and module.startswith(prefix):
                return framework
    return None


def inner_app(obj: Any) -> Any:
    """The ASGI app `obj` hands its requests to, when it is a wrapper: `.app` (ASGI middleware,
    the servers' own, WSGI adapters), the "http" entry of a Channels `ProtocolTypeRouter`, a
    Channels middleware's `.inner`, asgiref's `WsgiToAsgi`'s `.wsgi_application`; else None."""
    app = getattr(obj, "app", None)
    if app is not None:
        return app
    wsgi = getattr(obj, "wsgi_application", None)
    if wsgi is not None:
        return wsgi
    mapping = getattr(obj, "application_mapping", None)
    if isinstance(mapping, dict):
        return mapping.get("http")
    inner = getattr(obj, "inner", None)
    return inner if callable(inner) else None


def wrapper_chain(outer: Any) -> Iterator[Any]:
    """`outer`, then each app the one before hands its requests to (`inner_app`), down to the
    last; at most `MAX_DEPTH` of them, each once."""
    seen: set[int] = set()
    current = outer
    for _ in range(MAX_DEPTH):
        if current is None or id(current) in seen:
            return
        seen.add(id(current))
        yield current
        current = inner_app(current)


def apps_inside(outer: Any) -> list[tuple[str, Any]]:
    """(framework, app) of every framework app on the chain of wrappers from `outer` down."""
    found: list[tuple[str, Any]] = []
    for current in wrapper_chain(outer):
        framework = framework_of(current)
        if framework is not None:
            found.append((framework, current))
    return found


def describe(outer: Any) -> str:
    """`module.Class` of the innermost framework app inside `outer`, else of `outer`."""
    found = apps_inside(outer)
    target = found[-1][1] if found else outer
    cls = type(target)
    return f"{cls.__module__}.{cls.__qualname__}"
