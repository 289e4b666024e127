"""A Django app under uvicorn, gunicorn, daphne and granian, measured through `apiscope run` and
`attach`."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from apiscope.model import ThreadSpan
from apiscope.store import SessionReader
from tests.frameworks.served import (
    call,
    line_of,
    raised,
    stored,
    under_attach,
    under_run,
    wait_stored,
)
from tests.support import (
    free_port,
    require_program,
    require_ptrace,
    uvicorn_argv,
    wait_until,
)

pytestmark = pytest.mark.integration
APP = "tests.frameworks.djshop.asgi:application"
VIEWS = Path(__file__).parent / "djshop" / "views.py"
PROBE = "/health/"
PLAN = [  # (method, path, template, status)
    ("GET", "/api/items/", "/api/items/", 200),
    ("POST", "/api/items/", "/api/items/", 201),
    ("GET", "/api/items/1/", "/api/items/<int:pk>/", 200),
    ("GET", "/api/items/2/", "/api/items/<int:pk>/", 200),
    ("GET", "/api/stats/", "/api/stats/", 200),
    ("GET", "/archive/2024/", "/archive/{year}/", 200),
    ("GET", "/orders/", "/orders/", 200),
    ("GET", "/orders/3/refund/", "/orders/<int:pk>/refund/", 500),
    ("GET", "/missing/", "<unmatched>", 404),
]
EXPECTED = Counter((m, t, s) for m, _, t, s in PLAN)


def drive(base: str) -> None:
    for method, path, _, status in PLAN:
        assert call(base, path, method) == status, path


def check(session: Path) -> None:
    requests = wait_stored(session, PROBE, len(PLAN))
    assert Counter((r.method, r.route, r.status) for r in requests) == EXPECTED
    (orders,) = [r for r in requests if r.route == "/orders/"]
    (n_plus_one,) = [q for q in orders.queries if q.count == 5]  # one per order
    assert (n_plus_one.file, n_plus_one.line) == (
        str(VIEWS), line_of(VIEWS, "order.item.name"))
    # The exception Django answered 500 for, at the view's line that raised it.
    assert raised(requests) == {("LookupError", str(VIEWS), line_of(VIEWS, "raise LookupError"))}
    with SessionReader(session) as reader:  # the report can say where routes came from
        assert reader.meta().routing == {"source": "framework", "frameworks": ["django"]}
    # Django runs each request's sync code in a thread of its own: the agent says which, so
    # that samples showing only its middleware are charged to its route.
    sync_views = {"GET /api/items/<int:pk>/", "GET /archive/{year}/", "GET /orders/"}

    def spans() -> list[ThreadSpan] | None:
        with SessionReader(session) as reader:
            found = reader.thread_spans()
        return found if sync_views <= {s.endpoint for s in found} else None

    found = wait_until(spans, timeout=10, what="the threads of the sync views' requests")
    items = [s for s in found if s.endpoint == "GET /api/items/<int:pk>/"]
    assert sum(s.requests for s in items) == 2 and all(s.tid > 0 for s in items)
    routes = {(r.method, r.template): r for r in stored(session, PROBE)[1]}
    checks = {("GET", "/api/items/<int:pk>/"): ("item_detail", "def item_detail", False),
              ("POST", "/api/items/"): ("ItemList.post", "def post", False),
              ("GET", "/api/stats/"): ("Stats.get", "async def get", True),
              ("GET", "/archive/{year}/"): ("archive", "def archive", False)}
    for key, (qualname, source, is_async) in checks.items():
        route = routes[key]
        assert route.handler == f"tests.frameworks.djshop.views:{qualname}"
        assert (route.file, route.line, route.is_async) == (
            str(VIEWS), line_of(VIEWS, source), is_async)


def _server_argv(server: str, port: int) -> list[str]:
    if server == "daphne":  # Django Channels' server, serving a Channels project (its router)
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                "tests.frameworks.djshop.channels_asgi:application"]
    if server == "granian":  # one worker process, whose Rust core calls the app in a closure
        return [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                "--port", str(port), "--log-level", "warning", APP]
    return uvicorn_argv(APP, port)


@pytest.mark.parametrize("server", ["uvicorn", "daphne", "granian"])
@pytest.mark.parametrize("mode", [under_run, under_attach], ids=["run", "attach"])
def test_django_under_each_server(mode: Callable[..., AbstractContextManager[str]],
                                  server: str, tmp_path: Path) -> None:
    if mode is under_attach:
        require_ptrace()
        require_program("gdb")
    port, session = free_port(), tmp_path / "s.sqlite"
    env = {"DJSHOP_DB": str(tmp_path / "db.sqlite3")}
    with mode(_server_argv(server, port), port, session, PROBE, env) as base:
        drive(base)
        check(session)


def test_django_under_gunicorn_with_two_workers(tmp_path: Path) -> None:
    port, session = free_port(), tmp_path / "s.sqlite"
    argv = [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", APP]
    env = {"DJSHOP_DB": str(tmp_path / "db.sqlite3")}
    with under_run(argv, port, session, PROBE, env) as base:
        for _ in range(3):
            drive(base)
        requests = wait_stored(session, PROBE, 3 * len(PLAN))
    assert Counter((r.method, r.route, r.status) for r in requests) == Counter(
        {key: 3 * n for key, n in EXPECTED.items()})

