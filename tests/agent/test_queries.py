from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from apiscope.agent.middleware import AgentMiddleware
from apiscope.agent.queries import (
    QueryHooks,
    connection_label,
    install_query_hooks,
    is_connection,
    normalize,
    uninstall_query_hooks,
)
from apiscope.agent.recorder import Recorder, RequestEntry
from tests.services import PostgresServer

from .helpers import get_all

HERE = Path(__file__).read_text().splitlines()


def line_of(marker: str) -> int:
    return next(i for i, text in enumerate(HERE, 1) if text.endswith(f"# {marker}"))


@pytest.mark.parametrize(("raw", "expected"), [
    ("SELECT *  FROM t\n WHERE id = 42", "SELECT * FROM t WHERE id = ?"),
    ("select name from t where name = 'O''Brien' and x > -1.5e3",
     "select name from t where name = ? and x > ?"),
    ("SELECT a FROM t1 WHERE b IN (1, 2, 3)", "SELECT a FROM t1 WHERE b IN (?)"),
    ("SELECT a FROM t WHERE b in ($1, $2) AND c = %s AND d = %(d)s",
     "SELECT a FROM t WHERE b IN (?) AND c = ? AND d = ?"),
    ("SELECT col2 FROM t WHERE id = ?", "SELECT col2 FROM t WHERE id = ?"),
])
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def run_app(app: Starlette, path: str) -> RequestEntry:
    recorder = Recorder()
    wrapped = AgentMiddleware(app, recorder, query_hooks=install_query_hooks())
    assert [r.status_code for r in get_all(wrapped, [path])] == [200]
    (record,) = recorder.drain()
    return record


async def seed(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"))
        for i in range(10):
            await conn.execute(text("INSERT INTO items (id, name) VALUES (:i, :n)"),
                               {"i": i, "n": f"item {i}"})


def test_n_plus_one_with_sqlalchemy_async_on_aiosqlite(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")

    async def listing(request: Request) -> Response:
        await seed(engine)
        async with engine.connect() as conn:
            ids = (await conn.execute(text("SELECT id FROM items ORDER BY id"))).scalars().all()
            names = []
            for item_id in ids:
                result = await conn.execute(text("SELECT name FROM items WHERE id = :id"),  # n+1
                                            {"id": item_id})
                names.append(result.scalar_one())
        await engine.dispose()
        return PlainTextResponse(",".join(names))

    record = run_app(Starlette(routes=[Route("/items", listing)]), "/items")
    stats = {q[0]: q for q in record.queries}
    statement, count, total_ms, file, line = stats["SELECT name FROM items WHERE id = ?"]
    assert count == 10  # not 20: the aiosqlite wrapper stands back while SQLAlchemy runs
    assert total_ms > 0
    assert (file, line) == (__file__, line_of("n+1"))
    assert stats["SELECT id FROM items ORDER BY id"][1:2] == (1,)
    assert stats["SELECT id FROM items ORDER BY id"][3:] == (None, None)  # not repeated
    assert stats["INSERT INTO items (id, name) VALUES (?, ?)"][1] == 10


def test_raw_aiosqlite_queries_with_literals(tmp_path: Path) -> None:
    async def handler(request: Request) -> Response:
        async with aiosqlite.connect(tmp_path / "raw.sqlite") as db:
            await db.execute("CREATE TABLE t (id INTEGER, v TEXT)")
            for i in range(3):
                await db.execute(f"INSERT INTO t VALUES ({i}, 'v{i}')")  # raw-loop
            rows = await db.execute_fetchall("SELECT v FROM t WHERE id IN (0, 1)")
        return PlainTextResponse(str(len(list(rows))))

    record = run_app(Starlette(routes=[Route("/raw", handler)]), "/raw")
    stats = {q[0]: q for q in record.queries}
    assert stats["INSERT INTO t VALUES (?, ?)"][1] == 3
    assert stats["INSERT INTO t VALUES (?, ?)"][3:] == (__file__, line_of("raw-loop"))
    assert stats["SELECT v FROM t WHERE id IN (?)"][1] == 1


def test_aiosqlite_execute_as_a_context_manager_still_works_and_is_counted(
        tmp_path: Path) -> None:
    # `async with conn.execute(...)` needs the object aiosqlite returns, not a coroutine: an
    # agent that broke it failed every request of such a route with a 500.
    async def handler(request: Request) -> Response:
        async with aiosqlite.connect(tmp_path / "cm.sqlite") as db:
            await db.execute("CREATE TABLE t (id INTEGER)")
            await db.execute("INSERT INTO t VALUES (1)")
            for _ in range(3):
                async with db.execute("SELECT id FROM t WHERE id = ?", (1,)) as cur:  # cm-line
                    row = await cur.fetchone()
        return PlainTextResponse(str(row[0]))

    record = run_app(Starlette(routes=[Route("/cm", handler)]), "/cm")
    assert record.status == 200
    stats = {q[0]: q for q in record.queries}
    assert stats["SELECT id FROM t WHERE id = ?"][1] == 3
    assert stats["SELECT id FROM t WHERE id = ?"][3:] == (__file__, line_of("cm-line"))


def test_hooks_are_idempotent_and_removable(tmp_path: Path) -> None:
    first = install_query_hooks()
    assert install_query_hooks() is first
    original = aiosqlite.Connection.execute
    assert hasattr(original, "__apiscope_original__")
    uninstall_query_hooks()
    assert not hasattr(aiosqlite.Connection.execute, "__apiscope_original__")

    async def handler(request: Request) -> Response:
        async with aiosqlite.connect(tmp_path / "x.sqlite") as db:
            await db.execute("SELECT 1")
        return PlainTextResponse("ok")

    recorder = Recorder()
    app = AgentMiddleware(Starlette(routes=[Route("/q", handler)]), recorder)
    get_all(app, ["/q"])
    assert recorder.drain()[0].queries == ()


def test_a_request_gets_its_statements_context_only_once_a_library_is_hooked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting the context variable costs every request: an app with no database library
    hooked (and no work handed to pools seen) does not pay it; one imported later is hooked
    at the next pull."""
    from apiscope.agent.offload import OFFLOAD
    from apiscope.agent.paths import AppFiles
    from apiscope.agent.queries import CURRENT, QueryHooks

    monkeypatch.setattr(OFFLOAD, "wanted", False)  # as another test's agent may have left it
    seen: list[object] = []

    async def handler(request: Request) -> Response:
        seen.append(CURRENT.get())
        return PlainTextResponse("ok")

    hooks = QueryHooks(AppFiles())
    recorder = Recorder()
    app = AgentMiddleware(Starlette(routes=[Route("/q", handler)]), recorder, query_hooks=hooks)
    get_all(app, ["/q"])
    assert not hooks.hooking and seen == [None]
    hooks.install()  # aiosqlite is imported by this module: hooked now
    try:
        assert hooks.hooking
        get_all(app, ["/q"])
        assert seen[1] is not None
    finally:
        hooks.uninstall()
    assert not hooks.hooking


def test_queries_outside_requests_are_ignored(tmp_path: Path) -> None:
    import asyncio

    install_query_hooks()

    async def outside() -> None:
        async with aiosqlite.connect(tmp_path / "o.sqlite") as db:
            await db.execute("SELECT 1")

    asyncio.run(outside())  # no request context: nothing to record, nothing raised


def test_sync_handler_with_sync_engine_in_the_thread_pool() -> None:
    """A sync handler runs in anyio's thread pool; the request's context goes with it."""
    from sqlalchemy import create_engine

    engine = create_engine("sqlite://")

    def handler(request: Request) -> Response:
        with engine.connect() as conn:
            for i in range(5):
                conn.execute(text("SELECT :i + 1"), {"i": i})  # sync-loop
        return PlainTextResponse("ok")

    record = run_app(Starlette(routes=[Route("/sync", handler)]), "/sync")
    engine.dispose()
    ((statement, count, _, file, line),) = record.queries
    assert (statement, count) == ("SELECT ? + ?", 5)
    assert (file, line) == (__file__, line_of("sync-loop"))


def test_sqlalchemy_statements_are_counted_without_turning_on_its_event_dispatch() -> None:
    """One listener on `Engine` makes every connection dispatch every engine event (about
    120 calls a checkout, 4-5% of a SQLAlchemy service's CPU per request): the hooks wrap the
    dialect instead, and leave the event system off."""
    from sqlalchemy import create_engine

    install_query_hooks()
    engine = create_engine("sqlite://")
    seen: list[bool] = []

    def handler(request: Request) -> Response:
        with engine.connect() as conn:
            seen.append(conn._has_events or engine._has_events)
            conn.execute(text("CREATE TABLE t (id INTEGER)"))
            conn.execute(text("INSERT INTO t (id) VALUES (:id)"), [{"id": i} for i in range(4)])
            conn.execute(text("SELECT count(*) FROM t"))
        return PlainTextResponse("ok")

    record = run_app(Starlette(routes=[Route("/many", handler)]), "/many")
    engine.dispose()
    assert seen == [False]
    counts = {q[0]: q[1] for q in record.queries}
    # executemany is one statement, once; the statement without parameters is counted too.
    assert counts == {"CREATE TABLE t (id INTEGER)": 1, "INSERT INTO t (id) VALUES (?)": 1,
                      "SELECT count(*) FROM t": 1}


def test_a_failing_sqlalchemy_statement_is_not_counted_and_the_next_ones_are() -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    from apiscope.agent.queries import CURRENT

    install_query_hooks()
    engine = create_engine("sqlite://")
    standing_back: list[int] = []

    def handler(request: Request) -> Response:
        with engine.connect() as conn:
            with pytest.raises(OperationalError):
                conn.execute(text("SELECT nothing FROM nowhere"))
            conn.rollback()
            conn.execute(text("SELECT 1"))
        queries = CURRENT.get()
        standing_back.append(queries.in_orm if queries is not None else -1)
        return PlainTextResponse("ok")

    record = run_app(Starlette(routes=[Route("/fail", handler)]), "/fail")
    engine.dispose()
    assert standing_back == [0]  # the drivers' hooks count again after the failure
    assert [(q[0], q[1]) for q in record.queries] == [("SELECT ?", 1)]


def test_a_failing_hook_never_fails_the_query(tmp_path: Path) -> None:
    hooks = install_query_hooks()

    def broken(statement: str) -> str:
        raise RuntimeError("normalizer broke")

    hooks.normalizer = broken  # type: ignore[assignment]

    async def handler(request: Request) -> Response:
        async with aiosqlite.connect(tmp_path / "f.sqlite") as db:
            rows = await db.execute_fetchall("SELECT 41 + 1")
        return PlainTextResponse(str(list(rows)[0][0]))

    recorder = Recorder()
    app = AgentMiddleware(Starlette(routes=[Route("/f", handler)]), recorder, query_hooks=hooks)
    assert [r.text for r in get_all(app, ["/f"])] == ["42"]
    assert hooks.errors == 1
    assert recorder.drain()[0].queries == ()


def test_connections_a_request_opens_are_counted_and_timed_as_a_statement_of_their_own(
        postgres: PostgresServer) -> None:
    """An app with no pool (as a Piccolo admin runs by default): each query on a connection of
    its own, opened by `asyncpg.connect` or `psycopg.connect`. Real drivers, a real server."""
    import asyncpg
    import psycopg

    dsn = postgres.dsn()

    async def no_pool(request: Request) -> Response:
        for _ in range(2):
            connection = await asyncpg.connect(dsn)
            try:
                await connection.fetchval("SELECT 1")
            finally:
                await connection.close()
        return PlainTextResponse("ok")

    def sync_no_pool(request: Request) -> Response:
        with psycopg.connect(dsn) as connection:
            connection.execute("SELECT 1")
        return PlainTextResponse("ok")

    async def with_pool(request: Request) -> Response:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)  # one connection opened
        try:
            for _ in range(6):  # six releases: six resets by the pool, none the app's statement
                async with pool.acquire() as connection:
                    await connection.fetchval("SELECT 2")
        finally:
            await pool.close()
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/async", no_pool), Route("/sync", sync_no_pool),
                            Route("/pool", with_pool)])
    hooks = install_query_hooks()
    try:
        assert asyncpg.connect is not asyncpg.connect.__wrapped__  # type: ignore[attr-defined]
        recorded = {e.route: {q[0]: q[1:3] for q in e.queries}
                    for e in (run_app(app, "/async"), run_app(app, "/sync"))}
        asyncpg_opened = recorded["/async"][connection_label("asyncpg")]
        assert asyncpg_opened[0] == 2 and asyncpg_opened[1] > 0
        assert recorded["/async"]["SELECT ?"][0] == 2
        psycopg_opened = recorded["/sync"][connection_label("psycopg")]
        assert psycopg_opened[0] == 1 and psycopg_opened[1] > 0
        assert is_connection(connection_label("psycopg")) and not is_connection("SELECT 1")
        pool_queries = {q[0]: q[1] for q in run_app(app, "/pool").queries}
        assert pool_queries == {"SELECT ?": 6, connection_label("asyncpg"): 1}

        async def outside() -> None:  # no request: nothing is counted, nothing breaks
            connection = await asyncpg.connect(dsn)
            await connection.close()

        asyncio.run(outside())
        assert hooks.errors == 0
        assert asyncpg.Connection.reset.__wrapped__  # type: ignore[attr-defined]
    finally:
        uninstall_query_hooks()
    assert not hasattr(asyncpg.connect, "__wrapped__")
    assert not hasattr(asyncpg.Connection.reset, "__wrapped__")
    assert not hasattr(psycopg.connect, "__apiscope_original__")


def test_a_query_with_no_app_frame_below_the_event_loop_has_no_call_site() -> None:
    """An installed application's console command calls `asyncio.run` from its own package:
    a statement its framework issues with nothing of the app below the loop (a session
    committed as a dependency closes) was located at the command's `run()`."""
    from apiscope.agent.paths import AppFiles

    hooks = QueryHooks(AppFiles())
    library: dict[str, Any] = {}
    exec(compile("async def issue(hooks):\n    return hooks.call_site()\n",
                 "/venv/lib/python3.12/site-packages/library/session.py", "exec"), library)

    def launcher() -> Any:  # the application's code, calling the loop
        return asyncio.run(library["issue"](hooks))

    assert launcher() is None

    async def handler() -> Any:
        return await library["issue"](hooks)  # the call site

    line = handler.__code__.co_firstlineno + 1
    assert asyncio.run(handler()) == (__file__, line)
