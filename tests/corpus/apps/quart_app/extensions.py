"""The shared clients, opened in `before_serving` and closed in `after_serving`: an asyncpg
pool for the async views, Redis, and blocking psycopg connections (one per worker thread) for
the sync views Quart runs in its thread pool."""

from __future__ import annotations

import threading
from typing import Any

import asyncpg
import psycopg
import redis.asyncio as aioredis
from quart import Quart, current_app

_local = threading.local()
_opened: list[psycopg.Connection[tuple[Any, ...]]] = []
_opened_lock = threading.Lock()


async def open_clients(app: Quart) -> None:
    cfg = app.config
    app.extensions["db"] = await asyncpg.create_pool(
        cfg["DSN"], min_size=cfg["DB_POOL_MIN"], max_size=cfg["DB_POOL_MAX"], command_timeout=10)
    app.extensions["redis"] = aioredis.from_url(cfg["REDIS_URL"], decode_responses=True,
                                                max_connections=32)
    await app.extensions["redis"].ping()


async def close_clients(app: Quart) -> None:
    if (pool := app.extensions.pop("db", None)) is not None:
        await pool.close()
    if (client := app.extensions.pop("redis", None)) is not None:
        await client.aclose()
    with _opened_lock:
        for conn in _opened:
            conn.close()
        _opened.clear()


def db() -> asyncpg.Pool:
    pool: asyncpg.Pool = current_app.extensions["db"]
    return pool


def cache() -> aioredis.Redis:
    client: aioredis.Redis = current_app.extensions["redis"]
    return client


def cache_key(*parts: object) -> str:
    return ":".join([current_app.config["CACHE_PREFIX"], *map(str, parts)])


def sync_connection() -> psycopg.Connection[tuple[Any, ...]]:
    """This thread's blocking connection (for sync views only: it blocks while it waits)."""
    conn: psycopg.Connection[tuple[Any, ...]] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(current_app.config["DSN"], autocommit=True)
        _local.conn = conn
        with _opened_lock:
            _opened.append(conn)
    return conn
