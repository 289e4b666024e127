"""The exception behind a 500 that a framework answered itself.

Starlette and FastAPI let an unhandled exception out of the app once their 500 is sent: the
middleware catches it on its way and records its type and the app's line that raised it.
Django, Litestar, Quart and Falcon catch it and answer the 500 inside, so the middleware would
see a status and nothing else, and an error spike would be flagged nowhere in the app. Each of
them tells its own listeners of the exception, with the request:

- Django: the `got_request_exception` signal (the exception is the one being handled, also in
  the thread asgiref runs the handling in);
- Litestar: the app's `after_exception` hooks, called with the exception and the scope;
- Quart: the app's `got_request_exception` signal, sent inside the request's context;
- Falcon: the app's error reporter (`set_error_reporter`, Falcon 4.1 and later), chained in
  front of the app's own.

The agent listens, and leaves the first exception of a request in its scope (`FAILURE_KEY`),
where the middleware takes it when the response was a 5xx (a 404 raised as an exception is
left unread). A listener costs nothing until a request fails. `listen` is idempotent across
copies of the agent; `stop_listening` takes the listeners out on detach.

Standard library only, relative imports only, Python 3.9 compatible (see `watchdog`).
"""

from __future__ import annotations

import sys
from typing import Any

from .frameworks import DJANGO, FALCON, LITESTAR, QUART

FAILURE_KEY = "apiscope.failure"
_LISTENER = "__apiscope_failures__"  # marks a listener of ours (any copy of the agent)
_DISPATCH_UID = "apiscope.failures"  # Django's signal: one receiver, whichever copy added it


def keep(scope: Any, exc: Any) -> None:
    """Leave `exc` in `scope` for the middleware, unless one is there already (a framework
    may handle the error an error handler raised in turn: the first is the cause). A scope of
    another kind is left alone: the 500 is still recorded, without its cause."""
    if isinstance(scope, dict) and isinstance(exc, BaseException) and FAILURE_KEY not in scope:
        scope[FAILURE_KEY] = exc


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
