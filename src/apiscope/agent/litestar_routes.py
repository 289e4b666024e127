"""Litestar's route table. Request templates need no table: Litestar's router writes the
matched route's template into `scope["path_template"]` (converters stripped, `/items/{id}`)."""

from __future__ import annotations

from typing import Any

from .handlers import RouteRow, handler_row


def litestar_rows(app: Any) -> list[RouteRow]:
    """One row per HTTP method of each route, without the OPTIONS handlers Litestar adds."""
    rows: list[RouteRow] = []
    for route in getattr(app, "routes", ()):
        handlers = getattr(route, "route_handler_map", None)
        template = str(getattr(route, "path_format", None) or getattr(route, "path", ""))
        if not isinstance(handlers, dict):
            continue  # websocket and raw ASGI routes
        for method, entry in sorted(handlers.items()):
            handler = entry[0] if isinstance(entry, tuple) else entry
            fn = getattr(handler, "fn", None)
            if type(fn).__name__ == "AsyncCallable":  # a sync handler run in a thread
                fn = getattr(fn, "func", fn)
            if fn is None or "create_options_handler" in getattr(fn, "__qualname__", ""):
                continue
            rows.append(handler_row(str(method), template, fn))
    return rows
