"""A Litestar app under uvicorn, measured through `apiscope run` and `apiscope attach`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.frameworks.served import call, line_of, stored, under_attach, under_run, wait_stored
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
    ("GET", "/nowhere", "<unmatched>", 404),
]


@pytest.mark.parametrize("mode", [under_run, under_attach], ids=["run", "attach"])
def test_litestar_under_uvicorn(mode: Callable[..., AbstractContextManager[str]],
                                tmp_path: Path) -> None:
    if mode is under_attach:
        require_ptrace()
        require_program("gdb")
    port, session = free_port(), tmp_path / "s.sqlite"
    with mode(uvicorn_argv(APP, port), port, session, PROBE, {}) as base:
        for method, path, _, status in PLAN:
            assert call(base, path, method) == status, path
        requests = wait_stored(session, PROBE, len(PLAN))
    assert Counter((r.method, r.route, r.status) for r in requests) == Counter(
        (m, t, s) for m, _, t, s in PLAN)
    routes = {(r.method, r.template): r for r in stored(session, PROBE)[1]}
    for key, name, is_async in [(("GET", "/items/{item_id}"), "read_item", False),
                                (("GET", "/users/{name}/orders"), "user_orders", True)]:
        route = routes[key]
        assert route.handler == f"tests.frameworks.litestar_app:{name}"
        assert (route.file, route.line, route.is_async) == (
            str(SOURCE), line_of(SOURCE, f"def {name}(") - 1, is_async)  # the decorator line
