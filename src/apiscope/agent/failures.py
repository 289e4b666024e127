"""The exception behind a 5xx that a framework answered itself.

Starlette and FastAPI let an unhandled exception out of the app once their 500 is sent: the
middleware catches it on its way and records its type and the app's line that raised it. An
exception one of their exception handlers answers for (an `HTTPException(503)` a dependency
raises to shed load, a handler the app registered for its own exception class) never leaves
the app, and Starlette drops its traceback once the response is sent. The agent wraps
Starlette's lookup of those handlers (`starlette._exception_handler`, Starlette 0.28 and later):
an exception a handler is found for is kept, with its traceback, in the scope of the request it
serves (`SERVING`, which also reaches the tasks `BaseHTTPMiddleware` runs the app in); and the
middleware keeps the exception any code is handling as a 5xx's head goes out (a handler
answering from its `except` block), both at no cost to a request that does not fail.
Django, Litestar, Quart and Falcon catch it and answer the 500 inside, so the middleware would
see a status and nothing else, and an error spike would be flagged nowhere in the app. Each of
them tells its own listeners of the exception, with the request:

- Django: the `got_request_exception` signal (the exception is the one being handled, also in
  the thread asgiref runs the handling in);
- Litestar: the app's `after_exception` hooks, called with the exception and the scope;
- Quart: the app's `got_request_exception` signal, sent inside the request's context;
- Falcon: the app's error reporter (`set_error_reporter`, Falcon 4.1 and later), chained in
  front of the app's own.

The agent listens, and leaves the first exception of a request in its scope (`FAILURE_KEY`,
with its traceback), where the middleware takes it when the response was a 5xx (a 404 raised
as an exception is left unread). A listener costs nothing until a request fails. `listen` is
idempotent across copies of the agent; `stop_listening` takes the listeners out on detach.

Standard library only, relative imports only, Python 3.9 compatible (see `watchdog`).
"""

from __future__ import annotations

import sys
from typing import Any

from .frameworks import DJANGO, FALCON, LITESTAR, QUART, STARLETTE
from .loopwatch import SERVING, served_scope

FAILURE_KEY = "apiscope.failure"
_LISTENER = "__apiscope_failures__"  # marks a listener of ours (any copy of the agent)
_DISPATCH_UID = "apiscope.failures"  # Django's signal: one receiver, whichever copy added it


def keep(scope: Any, exc: Any) -> None:
    """Leave `exc` in `scope` for the middleware, unless one is there already (a framework
    may handle the error an error handler raised in turn: the first is the cause). A scope of
    another kind is left alone: the 500 is still recorded, without its cause."""
    if isinstance(scope, dict) and isinstance(exc, BaseException) and FAILURE_KEY not in scope:
        scope[FAILURE_KEY] = (exc, exc.__traceback__)


def listen(framework: str, app: Any) -> bool:
    """Listen for the exceptions `app` answers 500 for itself; False when there is nothing to
    listen to (Starlette's come out of the app), a listener is there already, or the
    framework's hooks are not as this module knows them (the app is served all the same)."""
    try:
        if framework == DJANGO:
            return _listen_django()
        if framework == LITESTAR:
            return _listen_litestar(app)
        if framework == QUART:
            return _listen_quart(app)
        if framework == FALCON:
            return _listen_falcon(app)
        if framework == STARLETTE:
            return _listen_starlette()
    except Exception:
        pass
    return False


def stop_listening(framework: str, app: Any) -> None:
    """Take out the listener `listen` added for `app` (for Django, the process's receiver: one
    process serves one Django project). Never raises: detach goes on to the next app."""
    try:
        _stop_listening(framework, app)
    except Exception:
        pass


def _stop_listening(framework: str, app: Any) -> None:
    if framework == DJANGO:
        signals = sys.modules.get("django.core.signals")
        if signals is not None:
            signals.got_request_exception.disconnect(dispatch_uid=_DISPATCH_UID)
    elif framework == LITESTAR:
        hooks = getattr(app, "after_exception", None)
        if isinstance(hooks, list):
            hooks[:] = [h for h in hooks if not getattr(h, _LISTENER, False)]
    elif framework == QUART:
        receiver = vars(app).pop(_LISTENER, None)
        signal = _quart_signal()
        if receiver is not None and signal is not None:
            signal.disconnect(receiver, sender=app)
    elif framework == FALCON:
        reporter: Any = getattr(app, "_report_error", None)
        if getattr(reporter, _LISTENER, False):  # ours, of any copy of the agent
            app._report_error = reporter.original
    elif framework == STARLETTE:
        module = sys.modules.get("starlette._exception_handler")
        lookup: Any = getattr(module, "_lookup_exception_handler", None)
        if getattr(lookup, _LISTENER, False):
            module._lookup_exception_handler = lookup.original  # type: ignore[union-attr]


# -- Django --------------------------------------------------------------------------------

def _django_receiver(sender: Any, request: Any = None, **kwargs: Any) -> None:
    try:
        scope = getattr(request, "scope", None)
    except Exception:  # a request object of another making
        return
    keep(scope, sys.exc_info()[1])


def _listen_django() -> bool:
    signals = sys.modules.get("django.core.signals")
    if signals is None:
        return False
    signal = signals.got_request_exception
    if any(entry[0][0] == _DISPATCH_UID for entry in signal.receivers):
        return False  # a copy of the agent (injected before) listens already
    signal.connect(_django_receiver, weak=False, dispatch_uid=_DISPATCH_UID)
    return True


# -- Litestar ------------------------------------------------------------------------------

async def _after_exception(exc: Any, scope: Any) -> None:
    keep(scope, exc)


setattr(_after_exception, _LISTENER, True)


def _listen_litestar(app: Any) -> bool:
    hooks = getattr(app, "after_exception", None)
    if not isinstance(hooks, list) or any(getattr(h, _LISTENER, False) for h in hooks):
        return False
    hooks.append(_after_exception)  # awaited as is: Litestar made its own hooks async
    return True


# -- Quart ---------------------------------------------------------------------------------

def _quart_signal() -> Any:
    signals = sys.modules.get("quart.signals")
    return getattr(signals, "got_request_exception", None)


async def _quart_receiver(sender: Any, exception: Any = None, **kwargs: Any) -> None:
    # A coroutine function: Quart would run a plain one in a thread.
    globals_ = sys.modules.get("quart.globals")
    request = getattr(globals_, "request", None) if globals_ is not None else None
    try:
        scope = request.scope if request is not None else None
    except Exception:  # outside a request's context (an app-level error)
        return
    keep(scope, exception)


def _listen_quart(app: Any) -> bool:
    signal = _quart_signal()
    if signal is None or _LISTENER in vars(app):
        return False
    signal.connect(_quart_receiver, sender=app, weak=False)
    vars(app)[_LISTENER] = _quart_receiver
    return True


# -- Falcon --------------------------------------------------------------------------------

class _FalconReporter:
    """Falcon's error reporter: keeps the exception, then calls the app's own, if any."""

    __slots__ = ("original",)

    def __init__(self, original: Any) -> None:
        self.original = original

    def __call__(self, req: Any, ex: Any, params: Any, handled: bool) -> None:
        try:
            scope = getattr(req, "scope", None)
        except Exception:
            scope = None
        keep(scope, ex)
        if self.original is not None:
            self.original(req, ex, params, handled)


setattr(_FalconReporter, _LISTENER, True)


def _listen_falcon(app: Any) -> bool:
    if not hasattr(app, "set_error_reporter") or not hasattr(app, "_report_error"):
        return False  # before Falcon 4.1: no reporter to chain
    current = app._report_error
    if getattr(current, _LISTENER, False):
        return False
    app._report_error = _FalconReporter(current)
    return True


# -- Starlette, FastAPI --------------------------------------------------------------------

class _StarletteLookup:
    """Starlette's lookup of an exception's handler: keeps an exception a handler is found for
    in the scope of the request being served (a 4xx `HTTPException` is left alone)."""

    __slots__ = ("original",)

    def __init__(self, original: Any) -> None:
        self.original = original

    def __call__(self, handlers: Any, exc: Any) -> Any:
        handler = self.original(handlers, exc)
        try:
            if handler is not None and getattr(exc, "status_code", 500) >= 500:
                keep(served_scope(SERVING.get(None)), exc)
        except Exception:
            pass
        return handler


setattr(_StarletteLookup, _LISTENER, True)


def _listen_starlette() -> bool:
    module = sys.modules.get("starlette._exception_handler")
    current = getattr(module, "_lookup_exception_handler", None)
    if current is None or getattr(current, _LISTENER, False):
        return False  # an older Starlette, or a copy of the agent listens already
    module._lookup_exception_handler = _StarletteLookup(current)  # type: ignore[union-attr]
    return True
