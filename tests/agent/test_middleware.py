from __future__ import annotations

import asyncio
import gc
import json
import weakref
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, Router

from apiscope.agent.loopwatch import SERVING, served_scope
from apiscope.agent.middleware import AgentMiddleware
from apiscope.agent.recorder import Recorder, RequestEntry

from .helpers import FakeClock, get_all, record_requests

HERE = Path(__file__).read_text().splitlines()


def line_of(marker: str) -> int:
    """The 1-based line of this file that ends with `# <marker>`."""
    return next(i for i, text in enumerate(HERE, 1) if text.endswith(f"# {marker}"))


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


def test_route_templates_not_raw_paths() -> None:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.post("/items")
    def create_item() -> dict[str, str]:
        return {}

    records = record_requests(app, ["/items/1", "/items/42", "/items/abc", "/nowhere",
                                    "/openapi.json", "/docs"])
    assert [(r.method, r.route, r.status) for r in records] == [
        ("GET", "/items/{item_id}", 200),
        ("GET", "/items/{item_id}", 200),
        ("GET", "/items/{item_id}", 422),
        ("GET", "<unmatched>", 404),
        ("GET", "/openapi.json", 200),  # FastAPI serves these two without scope["route"]
        ("GET", "/docs", 200),
    ]
    (posted,) = record_requests(app, ["/items"], method="POST")
    assert (posted.method, posted.route, posted.status) == ("POST", "/items", 200)
    (wrong_method,) = record_requests(app, ["/items"], method="DELETE")
    assert (wrong_method.route, wrong_method.status) == ("/items", 405)


def test_fastapi_docs_as_the_first_request() -> None:
    (record,) = record_requests(FastAPI(), ["/openapi.json"])
    assert (record.route, record.status) == ("/openapi.json", 200)


def test_converters_are_stripped_from_templates() -> None:
    app = Starlette(routes=[Route("/users/{user_id:int}", ok)])
    (record,) = record_requests(app, ["/users/7"])
    assert record.route == "/users/{user_id}"


def test_mounts_prefix_their_routes() -> None:
    inner = Router(routes=[Route("/", ok), Route("/orders/{order_id}", ok)])
    sub_app = Starlette(routes=[Route("/health", ok)])
    app = Starlette(routes=[
        Mount("/tenants/{tenant}", app=inner),
        Mount("/admin", app=sub_app),
    ])
    records = record_requests(app, ["/tenants/acme/orders/9", "/tenants/x/", "/admin/health",
                                    "/tenants/acme/nothing", "/admin/nothing"])
    assert [(r.route, r.status) for r in records] == [
        ("/tenants/{tenant}/orders/{order_id}", 200),
        ("/tenants/{tenant}/", 200),
        ("/admin/health", 200),
        ("<unmatched>", 404),
        ("<unmatched>", 404),
    ]


def test_exact_durations_with_injected_clock() -> None:
    clock = FakeClock()

    async def slow(request: Request) -> Response:
        clock.advance(0.25)
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/slow", slow)])
    (record,) = record_requests(app, ["/slow"], clock=clock)
    assert record.duration_ms == pytest.approx(250.0, abs=1e-9)
    assert record.start == pytest.approx(1000.0 - 1000.0, abs=1e-9)  # wall clock 0 at start


def test_duration_runs_from_the_call_to_the_last_body() -> None:
    clock = FakeClock(start=10.0)

    async def raw_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        clock.advance(1.0)
        await receive()
        clock.advance(0.2)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        clock.advance(0.3)
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        clock.advance(0.4)
        await send({"type": "http.response.body", "body": b"b"})
        clock.advance(5.0)  # after the last body (cleanup): not part of the request's time

    recorder = Recorder()
    app = AgentMiddleware(raw_app, recorder, clock=clock, wall_clock=lambda: 5000.0)
    get_all(app, ["/anything"])
    (record,) = recorder.drain()
    assert record.duration_ms == pytest.approx(1900.0)
    assert record.first_byte_ms == pytest.approx(1200.0)  # a body in two messages: a stream
    assert record.start == pytest.approx(5000.0)  # epoch seconds of the call
    assert (record.status, record.route) == (201, "/anything")  # a bare app: its path, grouped


def test_streaming_response_lasts_until_the_last_chunk() -> None:
    clock = FakeClock()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            clock.advance(0.1)
            yield b"chunk"

    async def stream(request: Request) -> Response:
        clock.advance(0.05)  # the handler's own time, before the disconnect listener's receive
        task = BackgroundTask(clock.advance, 10.0)  # runs after the body: excluded
        return StreamingResponse(chunks(), background=task)

    app = Starlette(routes=[Route("/stream", stream)])
    responses = get_all(AgentMiddleware(app, recorder := Recorder(), clock=clock), ["/stream"])
    assert responses[0].content == b"chunk" * 3
    (record,) = recorder.drain()
    assert record.duration_ms == pytest.approx(350.0)
    assert record.first_byte_ms == pytest.approx(50.0)  # the head goes out before the chunks
    assert (record.route, record.status) == ("/stream", 200)


def test_a_response_in_one_body_message_has_no_first_byte_time() -> None:
    clock = FakeClock()

    async def slow(request: Request) -> Response:
        clock.advance(0.25)
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/slow", slow)])
    get_all(AgentMiddleware(app, recorder := Recorder(), clock=clock), ["/slow"])
    (record,) = recorder.drain()
    assert record.duration_ms == pytest.approx(250.0)
    assert record.first_byte_ms is None


def fail_deep() -> None:
    raise LookupError("no such thing")  # raise-in-helper


async def broken(request: Request) -> Response:
    fail_deep()  # calls-helper
    return PlainTextResponse("unreachable")


async def broken_in_library(request: Request) -> Response:
    json.loads("{not json")  # calls-library
    return PlainTextResponse("unreachable")


def test_exception_is_recorded_with_user_line_and_still_propagates() -> None:
    recorder = Recorder()
    app = AgentMiddleware(Starlette(routes=[Route("/broken", broken)]), recorder)
    with pytest.raises(LookupError):
        get_all(app, ["/broken"])
    (record,) = recorder.drain()
    assert (record.route, record.status, record.exc_type) == ("/broken", 500, "LookupError")
    assert (record.exc_file, record.exc_line) == (__file__, line_of("raise-in-helper"))


def test_exception_in_library_points_at_the_calling_user_line() -> None:
    recorder = Recorder()
    app = AgentMiddleware(Starlette(routes=[Route("/lib", broken_in_library)]), recorder)
    responses = get_all(app, ["/lib"], raise_app_exceptions=False)
    assert responses[0].status_code == 500  # the server's own error handling is unchanged
    (record,) = recorder.drain()
    assert record.exc_type == "JSONDecodeError"
    assert (record.exc_file, record.exc_line) == (__file__, line_of("calls-library"))


def test_handled_error_status_is_recorded_without_exception() -> None:
    async def unavailable(request: Request) -> Response:
        return PlainTextResponse("later", status_code=503)

    (record,) = record_requests(Starlette(routes=[Route("/u", unavailable)]), ["/u"])
    assert (record.status, record.exc_type) == (503, None)


@pytest.mark.parametrize(("status", "recorded"), [(404, (404, None)),
                                                  (503, (503, "LookupError"))])
def test_an_exception_raised_again_after_its_handlers_answer_keeps_that_answer(
        status: int, recorded: tuple[int, str | None]) -> None:
    # An app's handler for every Exception is Starlette's ServerErrorMiddleware's: it sends
    # the handler's answer, then raises the exception again for the server to log.
    async def missing(request: Request) -> Response:
        raise LookupError("no such feature")

    async def answer(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(str(exc), status_code=status)

    app = Starlette(routes=[Route("/f", missing)], exception_handlers={Exception: answer})
    recorder = Recorder()
    with pytest.raises(LookupError):
        get_all(AgentMiddleware(app, recorder), ["/f"])
    (record,) = recorder.drain()
    assert (record.status, record.exc_type) == recorded


class ExplodingRecorder(Recorder):
    def record(self, entry: RequestEntry) -> None:
        raise RuntimeError("recorder broke")


def test_agent_failure_never_fails_the_request() -> None:
    recorder = ExplodingRecorder()
    app = AgentMiddleware(Starlette(routes=[Route("/ok", ok)]), recorder)
    responses = get_all(app, ["/ok", "/ok"])
    assert [r.status_code for r in responses] == [200, 200]
    assert [r.text for r in responses] == ["ok", "ok"]
    assert recorder.errors == 2


def test_non_http_scopes_pass_through_untouched() -> None:
    seen: list[MutableMapping[str, Any]] = []

    async def raw_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    recorder = Recorder()
    app = AgentMiddleware(raw_app, recorder)

    async def noop() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "lifespan"}
    asyncio.run(app(scope, noop, send))
    assert seen == [{"type": "lifespan"}] and seen[0] is scope
    assert recorder.recorded == 0


class _Marker:
    """Something of the request's, weakly referenced to see when it is freed."""


def test_a_context_copied_during_a_request_keeps_nothing_of_it_once_it_ended() -> None:
    # uvicorn sets its keep-alive timer as a response ends, in the request's context; the
    # connection's next request cancels it, and the cancelled handle stays in the loop's heap
    # with that context for seconds. The request's objects must be freed when it ends (by their
    # counts alone: a bare server under load never runs the garbage collector), and tasks the
    # request starts must still find its scope while it is served.
    seen: dict[str, Any] = {}

    async def served() -> int:
        return id(served_scope(SERVING.get()))

    async def raw_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        scope["marker"] = marker = _Marker()
        seen["marker"] = weakref.ref(marker)
        del marker
        # (the task's result an id: a finished task may stay in a cycle with its coroutine)
        seen["in_task"] = await asyncio.create_task(served()) == id(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        seen["timer"] = asyncio.get_running_loop().call_later(60, lambda: None)

    async def main() -> None:
        recorder = Recorder()
        app = AgentMiddleware(raw_app, recorder)
        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            pass

        await app(scope, receive, send)
        assert recorder.recorded == 1 and seen["in_task"]
        del scope
        timer = seen.pop("timer")
        assert served_scope(timer._context.get(SERVING)) is None
        assert seen["marker"]() is None, "the request's scope outlived it"
        timer.cancel()

    collecting = gc.isenabled()
    gc.disable()
    try:
        asyncio.run(main())
    finally:
        if collecting:
            gc.enable()


def test_a_request_served_inside_another_in_its_task_gives_the_context_back() -> None:
    # An app that serves a request of its own through another agent's app, in its task: once
    # that one ends, the outer request is the task's again (for the watchdog and `failures`).
    # A task that held no request, or an ended one, is left holding this one, ended: it reads
    # as none.
    async def inner_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})

    inner = AgentMiddleware(inner_app, Recorder())
    seen: list[Any] = []

    async def noop() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def discard(message: Any) -> None:
        pass

    async def outer_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await inner({"type": "http", "method": "GET", "path": "/inner", "headers": []}, noop,
                    discard)
        seen.append(served_scope(SERVING.get()) is scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"outer"})

    outer = AgentMiddleware(outer_app, recorder := Recorder())

    async def main() -> None:
        for _ in range(2):
            await outer({"type": "http", "method": "GET", "path": "/", "headers": []}, noop,
                        discard)
            assert served_scope(SERVING.get()) is None

    asyncio.run(main())
    assert seen == [True, True] and recorder.recorded == 2


def test_a_send_after_the_app_returned_reaches_the_server_as_without_the_agent() -> None:
    # ASGI forbids it, but an app may keep `send` and call it once it has returned: the
    # server's send gets the message and answers it as it would without the agent.
    kept: list[Any] = []
    received: list[dict[str, Any]] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        kept.append(send)

    async def noop() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def server_send(message: dict[str, Any]) -> None:
        received.append(message)

    async def main() -> None:
        await AgentMiddleware(app, Recorder())(
            {"type": "http", "method": "GET", "path": "/", "headers": []}, noop, server_send)
        await kept[0]({"type": "http.response.body", "body": b"late"})

    asyncio.run(main())
    assert [m.get("body") for m in received] == [None, b"ok", b"late"]


def test_nested_agents_record_each_request_once() -> None:
    outer_recorder, inner_recorder = Recorder(), Recorder()
    app = Starlette(routes=[Route("/ok", ok)])
    wrapped = AgentMiddleware(AgentMiddleware(app, inner_recorder), outer_recorder)
    get_all(wrapped, ["/ok"])
    assert (outer_recorder.recorded, inner_recorder.recorded) == (1, 0)


def test_fastapi_included_routers_and_mounted_sub_apps() -> None:
    router = APIRouter(prefix="/r")

    @router.get("/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        return {"thing_id": thing_id}

    app = FastAPI()
    app.include_router(router, prefix="/v1")
    app.include_router(router, prefix="/v2")  # one route object, two templates
    sub = FastAPI()
    sub.include_router(router, prefix="/s")
    app.mount("/tenants/{tenant}", sub)
    records = record_requests(app, ["/v1/r/things/1", "/v2/r/things/2",
                                    "/tenants/acme/s/r/things/3"])
    assert [(r.route, r.status) for r in records] == [
        ("/v1/r/things/{thing_id}", 200),
        ("/v2/r/things/{thing_id}", 200),
        ("/tenants/{tenant}/s/r/things/{thing_id}", 200),
    ]


def test_a_whole_body_passed_on_by_a_middleware_is_no_stream() -> None:
    # FastAPI's `@app.middleware("http")` (Starlette's BaseHTTPMiddleware) sends the handler's
    # body in a message saying more follows, then an empty one: the client waits for it whole.
    clock = FakeClock()

    async def slow(request: Request) -> Response:
        clock.advance(0.25)
        return PlainTextResponse("done")

    async def stamp(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        clock.advance(0.04)  # the loop busy elsewhere before the body goes out
        return response

    app = Starlette(routes=[Route("/slow", slow)],
                    middleware=[Middleware(BaseHTTPMiddleware, dispatch=stamp)])
    responses = get_all(AgentMiddleware(app, recorder := Recorder(), clock=clock), ["/slow"])
    assert responses[0].content == b"done"
    (record,) = recorder.drain()
    assert record.duration_ms == pytest.approx(290.0)
    assert record.first_byte_ms is None
