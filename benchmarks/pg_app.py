"""The busy-host benchmark's app: FastAPI on a real PostgreSQL, sync and async routes.

`DATABASE_URL` names the database (filled by `bench_attach.fill`). Sync routes use psycopg 3
from the thread pool, one connection per pool thread; async routes use an asyncpg pool, the way
the two kinds of FastAPI backends are usually written.
"""

from __future__ import annotations

import os
import threading
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import psycopg
from fastapi import FastAPI, HTTPException

DSN = os.environ.get("DATABASE_URL", "")
_local = threading.local()


def _sync_conn() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(DSN, autocommit=True)
        _local.conn = conn
    return conn


@asynccontextmanager
async def lifespan(app: FastAPI) -> Any:
    app.state.pool = await asyncpg.create_pool(DSN, min_size=4, max_size=8)
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/users/{user_id}")
def read_user(user_id: int) -> dict[str, Any]:
    row = _sync_conn().execute("SELECT id, email, full_name FROM users WHERE id = %s",
                               (user_id,)).fetchone()
    if row is None:
        raise HTTPException(status_code=404)
    return {"id": row[0], "email": row[1], "full_name": row[2]}


@app.get("/users/{user_id}/items")
async def user_items(user_id: int, limit: int = 20) -> list[dict[str, Any]]:
    rows = await app.state.pool.fetch(
        "SELECT id, title, price FROM items WHERE owner_id = $1 ORDER BY id LIMIT $2",
        user_id, limit)
    return [dict(r) for r in rows]


@app.get("/stats")
async def stats() -> dict[str, Any]:
    row = await app.state.pool.fetchrow(
        "SELECT count(*) AS n, avg(price)::float AS mean FROM items WHERE owner_id < 20")
    return dict(row)
