"""Quart and Falcon apps under uvicorn, measured through `apiscope run` and `apiscope attach`:
their routers leave no match in the scope, so each request's template is matched by the
framework's own router when the collector pulls."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.frameworks.served import Mode, line_of, serve_plan, under_attach, under_run
from tests.support import free_port, require_program, require_ptrace, uvicorn_argv

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
PROBE = "/health"

# app, [(method, path, template, status)], [(method, template, handler, line text, is_async)]
APPS = {
    "quart": ("tests.frameworks.quart_app:app", [
        ("GET", "/items/1", "/items/<int:item_id>", 200),
        ("GET", "/items/2", "/items/<int:item_id>", 200),
        ("GET", "/users/ann/orders", "/users/<name>/orders", 200),
        ("POST", "/items/", "/items/", 201),
        ("GET", "/items/3/refund", "/items/<int:item_id>/refund", 500),
        ("GET", "/nowhere", "<unmatched>", 404),
    ], [
        ("GET", "/items/<int:item_id>", "read_item", '@items.get("/<int:item_id>")', True),
        ("POST", "/items/", "create_item", '@items.post("/")', False),
        ("GET", "/users/<name>/orders", "Orders.get", "async def get(self, name", True),
    ]),
    "falcon": ("tests.frameworks.falcon_app:app", [
        ("GET", "/items/1", "/items/{item_id:int}", 200),
        ("GET", "/items/2", "/items/{item_id:int}", 200),
        ("GET", "/users/ann/orders", "/users/{name}/orders", 200),
        ("POST", "/items", "/items", 201),
        ("GET", "/items/3/refund", "/items/{item_id:int}/refund", 500),
        ("GET", "/nowhere", "<unmatched>", 404),
    ], [
        ("GET", "/items/{item_id:int}", "Items.on_get", "async def on_get(self, req", True),
        ("GET", "/users/{name}/orders", "Users.on_get_orders", "async def on_get_orders", True),
    ]),
}


@pytest.mark.parametrize("framework", sorted(APPS))
@pytest.mark.parametrize("mode", [under_run, under_attach], ids=["run", "attach"])
def test_routes_matched_at_pull_time(mode: Mode, framework: str, tmp_path: Path) -> None:
    if mode is under_attach:
        require_ptrace()
        require_program("gdb")
    app, plan, handlers = APPS[framework]
    source = HERE / f"{framework}_app.py"
    port = free_port()
    routes = serve_plan(mode, uvicorn_argv(app, port), port, tmp_path / "s.sqlite", PROBE, plan,
                        source)
    for method, template, name, text, is_async in handlers:
        route = routes[method, template]
        assert route.handler == f"tests.frameworks.{framework}_app:{name}"
        assert (route.file, route.line, route.is_async) == (
            str(source), line_of(source, text), is_async)
