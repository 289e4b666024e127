"""Django ORM queries, through Django's own hook: `connection.execute_wrappers`.

Django keeps one `DatabaseWrapper` per alias per thread (sync views run in asgiref's threads),
so a wrapper has to reach every one of them: those that exist now are found on the heap, and
each one opened later announces itself with the `connection_created` signal, which fires before
its first query. The wrapper reads the request from the contextvar the middleware set; asgiref
copies the context into the thread of a sync view, so sync and async views count alike.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

from .queries import CURRENT
from .servers import instances

_DISPATCH_UID = "apiscope-django-queries"
_BASE = "django.db.backends.base.base"


class QueryCounter(Protocol):
    """What the wrapper needs of `QueryHooks`."""

    clock: Callable[[], float]

    def add(self, queries: Any, statement: str, seconds: float) -> None: ...


class DjangoQueryWrapper:
    """The execute wrapper: times each statement and counts it for the current request."""

    def __init__(self, hooks: QueryCounter) -> None:
        self.hooks = hooks

    def __call__(self, execute: Callable[..., Any], sql: Any, params: Any, many: bool,
                 context: Any) -> Any:
        queries = CURRENT.get()
        if queries is None or queries.in_orm:
            return execute(sql, params, many, context)
        hooks = self.hooks
        queries.in_orm += 1  # the driver's own hook (psycopg) stands back: counted once
        started = hooks.clock()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.in_orm -= 1
            hooks.add(queries, str(sql), hooks.clock() - started)

    def attach(self, connection: Any) -> None:
        wrappers = getattr(connection, "execute_wrappers", None)
        if isinstance(wrappers, list) and not any(_is_ours(w) for w in wrappers):
            wrappers.insert(0, self)  # outermost-first list: first runs last, nearest the DB

    def on_connection_created(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        self.attach(connection)


def _is_ours(wrapper: Any) -> bool:
    # By name: a previous injection's copy of this module has its own class.
    return type(wrapper).__name__ == "DjangoQueryWrapper"


def install_django(hooks: QueryCounter) -> Callable[[], None] | None:
    """Put the wrapper on every Django connection, now and later; returns the undo."""
    try:
        signals: Any = importlib.import_module("django.db.backends.signals")
    except ImportError:
        return None
    wrapper = DjangoQueryWrapper(hooks)
    for connection in instances(_BASE, "BaseDatabaseWrapper"):
        wrapper.attach(connection)
    signals.connection_created.connect(wrapper.on_connection_created, weak=False,
                                       dispatch_uid=_DISPATCH_UID)

    def undo() -> None:
        signals.connection_created.disconnect(dispatch_uid=_DISPATCH_UID)
        for connection in instances(_BASE, "BaseDatabaseWrapper"):
            wrappers = getattr(connection, "execute_wrappers", None)
            if isinstance(wrappers, list):
                wrappers[:] = [w for w in wrappers if not _is_ours(w)]

    return undo


