"""Route templates without a server: path grouping, Django's route strings, Litestar's scope,
and which framework an ASGI callable is."""

from __future__ import annotations

import pytest

from apiscope.agent.django_routes import django_template, regex_template
from apiscope.agent.frameworks import apps_inside, framework_of
from apiscope.agent.litestar_routes import litestar_rows
from apiscope.agent.middleware import AgentMiddleware
from apiscope.agent.pathgroups import PathGrouper, normalise_path
from apiscope.agent.recorder import Recorder
from apiscope.agent.routes import RouteRegistry
from tests.agent.helpers import get_all
from tests.frameworks import litestar_app


@pytest.mark.parametrize(("path", "grouped"), [
    ("/items/42", "/items/{int}"),
    ("/users/4f9a2b4e-8c1d-4e2f-9a3b-0c1d2e3f4a5b/orders", "/users/{uuid}/orders"),
    ("/blobs/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b", "/blobs/{hex}"),
    ("/about/cafe", "/about/cafe"),  # short hex-looking words are names
    ("/v2/items/", "/v2/items/"),
    ("/", "/"),
])
def test_ids_in_paths_become_placeholders(path: str, grouped: str) -> None:
    assert normalise_path(path) == grouped
    assert PathGrouper(limit=1)(path) == grouped


@pytest.mark.parametrize(("route", "template"), [
    ("api/items/<int:pk>/", "/api/items/<int:pk>/"),  # path(): Django's notation, included
    ("^archive/(?P<year>[0-9]{4})/$", "/archive/{year}/"),
    ("api/^v(?P<version>\\d+)/(?:json|xml)/$", "/api/v{version}/json|xml/"),
    ("^files/(.+)\\.txt$", "/files/{}.txt"),
    ("^page/(?P<n>\\d+)?$", "/page/{n}"),
    # Wagtail's own routes: a page's path, an image's rendition
    (r"^((?:[\w\-]+/)*)$", "/{}"),
    (r"^images/([^/]*)/(\d*)/([^/]*)/[^/]*$", "/images/{}/{}/{}/{}"),
    (r"^tags/\d+/.*$", "/tags/{}/{}"),  # classes, escapes and dots match many texts
    (r"^x/[]a]{2,3}?/y$", "/x/{}/y"),  # a `]` first in a class is one of its characters
    (r"^v(?:\d\.)+/(?:json|xml)$", "/v{}/json|xml"),  # a group repeated is a placeholder
    ("^api/?$", "/api/"),  # an optional literal shown as if present
    ("", "/"),
])
def test_django_routes_as_templates(route: str, template: str) -> None:
    assert django_template(route) == template


def test_regex_classes_and_escapes_do_not_end_a_group() -> None:
    assert regex_template(r"^a/(?P<x>[)(]\))/b$") == "a/{x}/b"


def test_litestar_templates_come_from_its_scope() -> None:
    recorder, routes = Recorder(), RouteRegistry()
    wrapped = AgentMiddleware(litestar_app.app, recorder, routes=routes)
    get_all(wrapped, ["/items/3", "/users/bob/orders", "/nope"])
    get_all(wrapped, ["/items"], method="POST")
    assert [(e.method, e.route, e.status) for e in recorder.drain()] == [
        ("GET", "/items/{item_id}", 200), ("GET", "/users/{name}/orders", 200),
        ("GET", "<unmatched>", 404), ("POST", "/items", 201)]
    assert routes.routing() == {"source": "framework", "frameworks": ["litestar"]}


def test_starlette_templates_and_the_routing_source() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def item(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    recorder, routes = Recorder(), RouteRegistry()
    wrapped = AgentMiddleware(Starlette(routes=[Route("/items/{item_id:int}", item)]), recorder,
                              routes=routes)
    get_all(wrapped, ["/items/3", "/items/4"])
    assert routes.routing() == {"source": "framework", "frameworks": ["starlette"]}
    get_all(wrapped, ["/nope"])
    assert [(e.route, e.status) for e in recorder.drain()] == [
        ("/items/{item_id}", 200), ("/items/{item_id}", 200), ("<unmatched>", 404)]


def test_litestar_route_table_names_sync_and_async_handlers() -> None:
    rows = {(r["method"], r["template"]): r for r in litestar_rows(litestar_app.app)}
    sync = rows[("GET", "/items/{item_id}")]  # run in a thread: unwrapped to the function
    assert sync["handler"] == "tests.frameworks.litestar_app:read_item"
    assert (sync["file"], sync["line"], sync["is_async"]) == (
        litestar_app.__file__, litestar_app.read_item.fn.__code__.co_firstlineno, False)
    assert rows[("GET", "/users/{name}/orders")]["is_async"] is True
    assert ("OPTIONS", "/items") not in rows  # Litestar's own


def test_frameworks_are_found_behind_server_middleware() -> None:
    class Outer:  # as uvicorn's ProxyHeadersMiddleware holds the app
        def __init__(self, app: object) -> None:
            self.app = app

    assert framework_of(litestar_app.app) == "litestar"
    assert apps_inside(Outer(litestar_app.app)) == [("litestar", litestar_app.app)]
    assert apps_inside(Outer(None)) == []


def test_frameworks_are_found_inside_a_channels_router_and_its_middleware() -> None:
    from channels.middleware import BaseMiddleware
    from channels.routing import ProtocolTypeRouter, URLRouter

    class Outer:  # as uvicorn's ProxyHeadersMiddleware holds the app
        def __init__(self, app: object) -> None:
            self.app = app

    app = litestar_app.app
    router = ProtocolTypeRouter({"http": BaseMiddleware(app), "websocket": URLRouter([])})
    assert apps_inside(Outer(router)) == [("litestar", app)]
    assert apps_inside(ProtocolTypeRouter({"websocket": URLRouter([])})) == []
