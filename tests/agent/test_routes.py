from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, Router

from apiscope.agent.handlers import handler_row
from apiscope.agent.inflight import route_now
from apiscope.agent.matched_routes import DEFERRED
from apiscope.agent.middleware import AgentMiddleware
from apiscope.agent.recorder import Recorder, RequestEntry
from apiscope.agent.routes import RouteRegistry
from apiscope.collectors.agent_client import _route
from tests.agent.helpers import get_all
from tests.frameworks import falcon_app, quart_app

Handler = Callable[..., Awaitable[Any]]


def logged(func: Handler) -> Handler:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    return wrapper


async def list_orders(request: Request) -> Response:
    return PlainTextResponse("orders")


async def tagged(tag: str, request: Request) -> Response:
    return PlainTextResponse(tag)


class Things(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return PlainTextResponse("things")

    def put(self, request: Request) -> Response:
        return PlainTextResponse("put")


def table(app: Any) -> dict[tuple[str, str], dict[str, Any]]:
    registry = RouteRegistry()
    registry.add_app(app)
    return {(row["method"], row["template"]): row for row in registry.rows}


def test_fastapi_routes_with_handlers_and_kinds() -> None:
    app = FastAPI()
    router = APIRouter(prefix="/v1")

    @app.get("/items/{item_id}")
    @logged
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @router.post("/reports")
    def build_report() -> dict[str, str]:
        return {}

    app.include_router(router)
    app.include_router(router, prefix="/v2")
    app.mount("/shop/{shop_id}", sub := FastAPI())
    sub.include_router(router, prefix="/s")
    rows = table(app)
    assert {"/v1/reports", "/v2/v1/reports", "/shop/{shop_id}/s/v1/reports"} <= {
        template for method, template in rows if method == "POST"}
    item = rows[("GET", "/items/{item_id}")]
    assert item["handler"] == f"{__name__}:test_fastapi_routes_with_handlers_and_kinds" \
        ".<locals>.read_item"
    assert item["file"] == __file__
    assert item["line"] == read_item.__wrapped__.__code__.co_firstlineno  # type: ignore[attr-defined]
    assert item["is_async"] is True
    report = rows[("POST", "/v1/reports")]
    assert report["is_async"] is False
    assert report["handler"].endswith(":test_fastapi_routes_with_handlers_and_kinds"
                                      ".<locals>.build_report")
    assert ("HEAD", "/items/{item_id}") not in rows  # Starlette's implicit HEAD is not listed


def test_reading_the_routes_builds_no_route_context_fastapi_has_not() -> None:
    # FastAPI (0.16x) builds an inclusion's route contexts, analysing each route's
    # dependencies, when a request first goes through it: a second of the event loop on an
    # app of a few hundred routes, were the agent to build them all as it starts.
    router = APIRouter()

    @router.get("/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        return {"thing_id": thing_id}

    outer = APIRouter(prefix="/outer")
    outer.include_router(router, prefix="/t/{tenant:int}")
    app = FastAPI()
    app.include_router(outer, prefix="/v1")
    included = [r for r in app.router.routes if hasattr(r, "effective_route_contexts")]
    if not included:
        pytest.skip("this FastAPI includes routers eagerly")
    before = table(app)
    assert all(r._effective_candidates_version is None for r in included)
    assert ("GET", "/v1/outer/t/{tenant}/things/{thing_id}") in before
    # Its requests are named, also while in flight (as the loop watchdog asks), from the
    # context FastAPI builds as the first one comes in.
    recorder = Recorder()
    in_flight: list[str | None] = []

    @app.middleware("http")
    async def ask(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        in_flight.append(middleware.served_route(request.scope))
        return response

    middleware = AgentMiddleware(app, recorder)  # the table read before any request
    assert all(r._effective_candidates_version is None for r in included)
    answers = get_all(middleware, ["/v1/outer/t/7/things/1", "/v1/outer/t/8/things/2"])
    assert [a.status_code for a in answers] == [200, 200]
    template = "/v1/outer/t/{tenant}/things/{thing_id}"
    assert [e.route for e in recorder.drain()] == [template, template]
    assert in_flight == [f"GET {template}"] * 2
    for inclusion in included:  # built now, by the requests
        list(inclusion.effective_route_contexts())
    assert table(app) == before  # read from the contexts now, the same table


def test_starlette_mounts_partials_and_endpoint_classes() -> None:
    inner = Router(routes=[Route("/orders", list_orders),
                           Route("/tag", functools.partial(tagged, "x"))])
    app = Starlette(routes=[
        Mount("/shops/{shop:int}", routes=[Mount("/api", app=inner)]),
        Route("/things", Things),
        Route("/head-only", list_orders, methods=["HEAD"]),
    ])
    rows = table(app)
    assert set(rows) == {
        ("GET", "/shops/{shop}/api/orders"),
        ("GET", "/shops/{shop}/api/tag"),
        ("GET", "/things"),
        ("PUT", "/things"),
        ("HEAD", "/head-only"),
    }
    assert rows[("GET", "/shops/{shop}/api/tag")]["handler"] == f"{__name__}:tagged"
    assert rows[("GET", "/things")]["handler"] == f"{__name__}:Things.get"
    assert rows[("PUT", "/things")]["is_async"] is False
    assert rows[("GET", "/shops/{shop}/api/orders")]["line"] == \
        list_orders.__code__.co_firstlineno


def test_routes_added_later_appear_on_refresh() -> None:
    app = Starlette(routes=[Route("/a", list_orders)])
    registry = RouteRegistry()
    registry.add_app(app)
    registry.add_app(app.router)  # same route list: not listed twice
    app.add_route("/b", list_orders)
    registry.refresh()
    assert sorted(row["template"] for row in registry.rows) == ["/a", "/b"]


class Listing:
    """A class-based view whose `get` comes from a library's generic view (here a stand-in
    from the standard library: any method defined in another module)."""

    get = staticmethod(functools.reduce)


class Nested:
    class Inner:
        pass


class OwnListing(Listing):
    def get(self) -> None:  # type: ignore[override]
        return None


def test_a_handler_inherited_from_a_library_names_the_apps_class() -> None:
    row = handler_row("GET", "/listing", OwnListing.get, OwnListing)
    assert "view" not in row  # its own method: the handler is where to look
    row = handler_row("GET", "/listing", Listing.get, Listing)
    assert row["view"] == f"{__name__}:Listing"
    assert row["view_file"] == __file__
    # The agent reads no source (Listing has no method of its own: no line before 3.13); the
    # collector finds the class line in it.
    with open(__file__) as f:
        lines = f.read().splitlines()
    route = _route(row)
    assert lines[route.view_line - 1].startswith("class Listing:")
    assert lines[_route({**row, "view": f"{__name__}:Nested.Inner"}).view_line - 1] \
        .startswith("    class Inner:")


def test_quart_routes_are_read_and_matched_at_pull_time() -> None:
    registry = RouteRegistry()
    registry.add_app(quart_app.app)
    rows = {(r["method"], r["template"]): r for r in registry.rows}
    assert set(rows) == {("GET", "/items/<int:item_id>"), ("POST", "/items/"),
                         ("GET", "/items/<int:item_id>/refund"),
                         ("GET", "/users/<name>/orders"), ("GET", "/health"),
                         ("GET", "/static/<path:filename>")}
    assert rows["GET", "/items/<int:item_id>"]["handler"] == \
        "tests.frameworks.quart_app:read_item"
    assert rows["POST", "/items/"]["is_async"] is False  # Quart runs it in a thread
    assert rows["GET", "/users/<name>/orders"]["handler"] == \
        "tests.frameworks.quart_app:Orders.get"  # a MethodView's own method
    assert registry.resolve("GET", "/items/7") == "/items/<int:item_id>"
    assert registry.resolve("GET", "/items/x") == "<unmatched>"  # the converter refuses it
    assert registry.resolve("DELETE", "/items/7") == "<unmatched>"  # 405
    assert registry.resolve("POST", "/items") == "<unmatched>"  # a slash redirect
    assert registry.routing() == {"source": "framework", "frameworks": ["quart"]}


def test_falcon_routes_are_read_and_matched_at_pull_time() -> None:
    registry = RouteRegistry()
    registry.add_app(falcon_app.app)
    assert [(r["method"], r["template"], r["handler"].split(":")[1]) for r in registry.rows] == [
        ("GET", "/health", "Health.on_get"),
        ("POST", "/items", "ItemCollection.on_post"),
        ("GET", "/items/{item_id:int}", "Items.on_get"),
        ("GET", "/items/{item_id:int}/refund", "Refund.on_get"),
        ("GET", "/users/{name}/orders", "Users.on_get_orders")]  # Falcon's own responders: none
    assert registry.resolve("GET", "/items/7") == "/items/{item_id:int}"
    assert registry.resolve("GET", "/users/ann/orders") == "/users/{name}/orders"
    assert registry.resolve("GET", "/nowhere") == "<unmatched>"


def test_deferred_routes_are_named_when_drained_and_a_failing_router_groups_the_path(
        ) -> None:
    app = quart_app.app
    registry = RouteRegistry()
    registry.add_app(app)
    entries = [RequestEntry(0.0, 1.0, "GET", DEFERRED + "/items/3", 200, None, None, None, ()),
               RequestEntry(0.0, 1.0, "GET", "/already", 200, None, None, None, ())]
    assert [e.route for e in registry.resolve_entries(entries)] == [
        "/items/<int:item_id>", "/already"]

    def broken(method: str, path: str) -> str:
        raise RuntimeError("a router we misread")

    registry._matched[0] = ("quart", app, broken, None)
    registry._resolved.clear()
    assert registry.resolve("GET", "/items/12") == "/items/{int}"
    assert registry.errors == 1


def test_a_route_table_version_changes_with_the_table_only() -> None:
    app = Starlette(routes=[Route("/a", list_orders)])
    registry = RouteRegistry()
    registry.add_app(app)
    version = registry.version
    registry.refresh()
    assert registry.version == version
    app.router.routes.append(Route("/b", list_orders))
    registry.refresh()
    assert registry.version != version


def test_the_table_is_read_again_less_often_while_it_stays_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from apiscope.agent import routes as module

    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    app = Starlette(routes=[Route("/a", list_orders)])
    registry = RouteRegistry()
    registry.add_app(app)
    reads: list[float] = []
    real_refresh = registry.refresh

    def counted() -> bool:
        reads.append(now[0])
        return real_refresh()

    registry.refresh = counted  # type: ignore[method-assign]
    for _ in range(80):  # a pull a second, the table unchanged
        now[0] += 1.0
        registry.refresh_if_due()
    gaps = [round(b - a) for a, b in zip(reads, reads[1:], strict=False)]
    assert gaps[:5] == [2, 4, 8, 16, 30] and set(gaps[5:]) <= {30}
    # A route added: found at the next re-read, and the next ones come soon again.
    app.router.routes.append(Route("/b", list_orders))
    while len(registry.rows) == 1:
        now[0] += 1.0
        registry.refresh_if_due()
    found = now[0]
    assert found - reads[-2] <= module.REFRESH_MOST + 1
    now[0] += 1.0
    registry.refresh_if_due()
    assert reads[-1] == found + 1.0


def test_a_request_in_flight_is_named_by_the_quart_router_too() -> None:
    middleware = AgentMiddleware(quart_app.app, Recorder())
    assert route_now(middleware, {"method": "GET", "path": "/items/3"}) == "/items/<int:item_id>"
    assert route_now(middleware, {"method": "GET", "path": "/nope"}) == "<unmatched>"


def flask_app() -> Any:
    from flask import Flask

    app = Flask("legacy")

    @app.route("/runs/<run_id>")
    def get_run(run_id: str) -> str:
        return run_id

    @app.route("/runs/search", methods=["POST"])
    def search_runs() -> str:
        return "[]"

    return app


def test_a_flask_app_mounted_through_wsgi_middleware_is_matched_at_pull_time() -> None:
    """A FastAPI app that keeps its older Flask API behind Starlette's WSGIMiddleware (as
    MLflow's server does): the Flask requests leave only the mounted adapter in the scope."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Starlette deprecates it; MLflow keeps a copy of it
        from starlette.middleware.wsgi import WSGIMiddleware

    api = FastAPI()

    @api.get("/health")
    def health() -> str:
        return "ok"

    api.mount("/v1", WSGIMiddleware(flask_app()))
    api.mount("/", WSGIMiddleware(flask_app()))  # a catch-all mount, last
    recorder = Recorder()
    middleware = AgentMiddleware(api, recorder)
    answers = get_all(middleware, ["/health", "/runs/7", "/v1/runs/8", "/v1/nothing",
                                   "/nothing"]) + get_all(middleware, ["/runs/search"], "POST")
    assert [a.status_code for a in answers] == [200, 200, 200, 404, 404, 200]
    routes = [(e.method, e.route) for e in middleware.routes.resolve_entries(recorder.drain())]
    assert routes == [("GET", "/health"), ("GET", "/runs/<run_id>"),
                      ("GET", "/v1/runs/<run_id>"),
                      # Starlette sends /v1/... to the /v1 mount, whose app has no such rule:
                      # not matched against the catch-all's rules.
                      ("GET", "<unmatched>"), ("GET", "<unmatched>"),
                      ("POST", "/runs/search")]
    rows = {(r["method"], r["template"]): r["handler"] for r in middleware.routes.rows}
    assert rows["GET", "/v1/runs/<run_id>"].endswith("flask_app.<locals>.get_run")
    assert rows["POST", "/runs/search"].endswith("flask_app.<locals>.search_runs")
    assert middleware.routes.routing()["frameworks"] == ["flask", "starlette"]
    # A request in flight is named by Flask's router too (`apiscope dump`).
    scope = {"method": "GET", "path": "/runs/3", "endpoint": api.routes[-1].app,
             "router": api.router}
    assert route_now(middleware, scope) == "/runs/<run_id>"


class Gate:
    """ASGI middleware in front of a mounted app (an admin panel's auth check, a login's
    rate limit): it answers some requests itself and hands the others on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"].endswith("/denied"):
            await PlainTextResponse("no", status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Login(HTTPEndpoint):
    async def post(self, request: Request) -> Response:
        return PlainTextResponse("in")


async def raw_status(scope: Any, receive: Any, send: Any) -> None:
    await PlainTextResponse("up")(scope, receive, send)


def test_apps_mounted_behind_middleware_have_their_routes_and_name_their_requests() -> None:
    """An admin panel's layout: its API router behind an auth middleware, a login endpoint
    behind a rate limit, each mounted whole (`Mount.routes` is empty for both)."""
    api = FastAPI()

    @api.get("/tables/{name}/")
    async def table_rows(name: str) -> dict[str, str]:
        return {"name": name}

    public = FastAPI()
    public.mount("/login/", Gate(Login))
    app = FastAPI()
    app.mount("/api", Gate(api))
    app.mount("/public", public)
    app.mount("/status", raw_status)
    recorder = Recorder()
    middleware = AgentMiddleware(app, recorder)
    answers = get_all(middleware, ["/api/tables/movie/", "/status/", "/api/denied"]) + \
        get_all(middleware, ["/public/login/"], "POST")
    assert [a.status_code for a in answers] == [200, 200, 401, 200]
    assert [(e.method, e.route) for e in recorder.drain()] == [
        ("GET", "/api/tables/{name}/"), ("GET", "/status/{path}"),
        ("GET", "<unmatched>"),  # turned away before the API's router ran
        ("POST", "/public/login/{path}")]
    rows = {(r["method"], r["template"]): r for r in middleware.routes.rows}
    assert rows["GET", "/api/tables/{name}/"]["handler"].endswith(".<locals>.table_rows")
    assert rows["POST", "/public/login/{path}"]["handler"] == f"{__name__}:Login.post"
    assert rows["*", "/status/{path}"]["handler"] == f"{__name__}:raw_status"
    # A request in flight at the login endpoint is named (the loop watchdog asks so).
    scope = {"method": "POST", "path": "/public/login/", "endpoint": public.routes[-1].app}
    assert middleware.served_route(scope) == "POST /public/login/{path}"
