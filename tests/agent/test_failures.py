"""The exception behind a 500 a framework answered itself (Litestar, Quart, Falcon), recorded at
the app's line that raised it, in-process through the agent's middleware. Django's signal is
checked in a served app (`tests/frameworks/test_django.py`), where its settings are loaded."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from apiscope.agent.failures import FAILURE_KEY, listen, stop_listening
from apiscope.agent.frameworks import DJANGO, FALCON, LITESTAR, QUART, STARLETTE
from tests.agent.helpers import get_all, record_requests
from tests.frameworks.served import line_of

# module of tests.frameworks, its framework, the path that fails, a path its router misses
APPS = {
    "litestar_app": (LITESTAR, "/orders/3/refund", "/nowhere"),
    "quart_app": (QUART, "/items/3/refund", "/nowhere"),
    "falcon_app": (FALCON, "/items/3/refund", "/nowhere"),
}


def fresh_app(module: str) -> tuple[Any, Path]:
    """A new copy of the framework app (no listener of an earlier test), and its source."""
    mod = importlib.reload(importlib.import_module(f"tests.frameworks.{module}"))
    return mod.app, Path(mod.__file__ or "")


@pytest.mark.parametrize("module", sorted(APPS))
def test_the_exception_a_framework_answered_500_for_is_recorded_at_its_line(
        module: str) -> None:
    framework, failing, missing = APPS[module]
    app, source = fresh_app(module)
    failed, unmatched, served = record_requests(app, [failing, missing, "/health"])
    assert (failed.status, failed.exc_type, failed.exc_file, failed.exc_line) == (
        500, "LookupError", str(source), line_of(source, "raise LookupError"))
    # A 404 its router raised as an exception is no failure; a request that succeeded has none.
    assert (unmatched.status, unmatched.exc_type) == (404, None)
    assert (served.status, served.exc_type) == (200, None)


@pytest.mark.parametrize("module", sorted(APPS))
def test_listening_is_once_and_detach_takes_the_listener_out(module: str) -> None:
    framework, failing, _ = APPS[module]
    app, _ = fresh_app(module)
    assert listen(framework, app) is True
    assert listen(framework, app) is False  # injected again: no second listener
    stop_listening(framework, app)
    # Served without the middleware now: nothing of ours is left in the scope.
    scopes: list[dict[str, Any]] = []

    async def keep_scope(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await app(scope, receive, send)

    assert [r.status_code for r in get_all(keep_scope, [failing], raise_app_exceptions=False)
            ] == [500]
    assert FAILURE_KEY not in scopes[0]
    assert listen(framework, app) is True  # and it can listen again


def test_falcons_own_error_reporter_is_still_called_and_is_put_back() -> None:
    app, _ = fresh_app("falcon_app")
    reported: list[tuple[str, bool]] = []

    def own(req: Any, ex: Exception, params: Any, handled: bool) -> None:
        reported.append((type(ex).__name__, handled))

    app.set_error_reporter(own)
    [failed] = record_requests(app, ["/items/3/refund"])
    assert failed.exc_type == "LookupError"
    assert reported == [("LookupError", True)]
    stop_listening(FALCON, app)
    assert app._report_error is own


def test_djangos_receiver_is_added_once_and_taken_out_on_detach() -> None:
    signals = pytest.importorskip("django.core.signals")
    signal = signals.got_request_exception
    before = len(signal.receivers)
    assert listen(DJANGO, object()) is True
    assert listen(DJANGO, object()) is False  # injected again: no second receiver
    assert len(signal.receivers) == before + 1
    stop_listening(DJANGO, object())
    assert len(signal.receivers) == before


def test_hooks_not_as_expected_are_left_alone_and_nothing_raises() -> None:
    # A Litestar-like app whose hooks are a tuple, a Falcon-like one without a reporter slot.
    odd = type("Odd", (), {"after_exception": (), "set_error_reporter": None})()
    assert listen(LITESTAR, odd) is False and listen(FALCON, odd) is False
    broken = type("Broken", (), {"after_exception": property(lambda self: 1 / 0)})()
    assert listen(LITESTAR, broken) is False
    stop_listening(LITESTAR, broken)  # does not raise either


@pytest.mark.parametrize("middleware", [False, True], ids=["plain", "http-middleware"])
def test_an_exception_the_apps_own_handlers_answered_5xx_for_is_recorded_at_its_line(
        middleware: bool) -> None:
    """Starlette's and FastAPI's handlers answer for an exception that never leaves the app,
    and drop its traceback once sent; behind `@app.middleware("http")` the response is sent
    from another task than the one that handled it."""
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import JSONResponse

    class QuotaExceeded(Exception):
        pass

    def not_at_capacity() -> None:
        raise HTTPException(status_code=503, detail="at capacity")  # line: shed

    app = FastAPI()

    @app.exception_handler(QuotaExceeded)
    async def quota(request: Any, exc: QuotaExceeded) -> JSONResponse:
        return JSONResponse({"detail": "quota"}, status_code=500)

    if middleware:
        @app.middleware("http")
        async def timing(request: Any, call_next: Any) -> Any:
            return await call_next(request)

    @app.get("/ingest", dependencies=[Depends(not_at_capacity)])
    async def ingest() -> dict[str, str]:
        return {}

    @app.get("/quota")
    async def over() -> dict[str, str]:
        raise QuotaExceeded()  # line: quota

    @app.get("/down")
    async def down() -> JSONResponse:
        return JSONResponse({"detail": "maintenance"}, status_code=503)

    @app.get("/missing")
    async def missing() -> dict[str, str]:
        raise HTTPException(status_code=404)

    shed, quota_hit, plain, gone = record_requests(app, ["/ingest", "/quota", "/down",
                                                         "/missing"])
    source = Path(__file__)
    assert (shed.status, shed.exc_type, shed.exc_file, shed.exc_line) == (
        503, "HTTPException", str(source), line_of(source, "# line: shed"))
    assert (quota_hit.status, quota_hit.exc_type, quota_hit.exc_line) == (
        500, "QuotaExceeded", line_of(source, "# line: quota"))
    # A 5xx answered with no exception has no cause; a 4xx's exception is not read.
    assert (plain.status, plain.exc_type) == (503, None)
    assert (gone.status, gone.exc_type) == (404, None)


def test_starlettes_handler_lookup_is_wrapped_once_and_put_back() -> None:
    import starlette._exception_handler as handling
    from fastapi import FastAPI

    stop_listening(STARLETTE, FastAPI())  # no listener of an earlier test
    original = handling._lookup_exception_handler
    assert listen(STARLETTE, FastAPI()) is True
    assert handling._lookup_exception_handler is not original
    assert listen(STARLETTE, FastAPI()) is False  # injected again: no second wrapper
    stop_listening(STARLETTE, FastAPI())
    assert handling._lookup_exception_handler is original
