"""A Litestar app under uvicorn, measured through `apiscope run` and `apiscope attach`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.frameworks.served import Mode, line_of, serve_plan, under_attach, under_run
from tests.support import free_port, require_program, require_ptrace, uvicorn_argv

pytestmark = pytest.mark.integration
APP = "tests.frameworks.litestar_app:app"
SOURCE = Path(__file__).parent / "litestar_app.py"
PROBE = "/health"
PLAN = [  # (method, path, template, status)
    ("GET", "/items/1", "/items/{item_id}", 200),
    ("GET", "/items/2", "/items/{item_id}", 200),
    ("GET", "/users/ann/orders", "/users/{name}/orders", 200),
    ("POST", "/items", "/items", 201),
    ("GET", "/orders/3/refund", "/orders/{order_id}/refund", 500),
    ("GET", "/nowhere", "<unmatched>", 404),
]


@pytest.mark.parametrize("mode", [under_run, under_attach], ids=["run", "attach"])
def test_litestar_under_uvicorn(mode: Mode, tmp_path: Path) -> None:
    if mode is under_attach:
        require_ptrace()
        require_program("gdb")
    port = free_port()
    routes = serve_plan(mode, uvicorn_argv(APP, port), port, tmp_path / "s.sqlite", PROBE, PLAN,
                        SOURCE)
    for key, name, is_async in [(("GET", "/items/{item_id}"), "read_item", False),
                                (("GET", "/users/{name}/orders"), "user_orders", True)]:
        route = routes[key]
        assert route.handler == f"tests.frameworks.litestar_app:{name}"
        assert (route.file, route.line, route.is_async) == (
            str(SOURCE), line_of(SOURCE, f"def {name}(") - 1, is_async)  # the decorator line
