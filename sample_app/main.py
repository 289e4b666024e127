"""The sample item API: `uvicorn sample_app.main:app`.

Environment: SAMPLE_APP_FIXED=1 serves the fixed version of every bottleneck at the same
paths; SAMPLE_APP_ITEMS (default 5000) and SAMPLE_APP_SEED size and seed the demo data;
DATABASE_URL (e.g. postgresql+asyncpg://...) replaces the temporary SQLite file; REDIS_URL
moves the cache to Redis; SAMPLE_APP_THREAD_TOKENS sizes the thread pool (0: anyio's 40).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from sample_app import items
from sample_app.bottlenecks import ROUTER_BUILDERS
from sample_app.cache import make_cache
from sample_app.db import create_schema, make_engine, make_sessions, sqlite_url
from sample_app.deps import Resources
from sample_app.seed import seed_if_empty
from sample_app.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Resources]]:
        async with _resources(settings) as resources:
            yield {"resources": resources}

    app = FastAPI(title="Sample item API", version="1.0.0", lifespan=lifespan)
    for build_router in ROUTER_BUILDERS:
        app.include_router(build_router(settings.fixed))
    app.include_router(items.router)
    return app


@asynccontextmanager
async def _resources(settings: Settings) -> AsyncIterator[Resources]:
    tmpdir = None if settings.database_url else tempfile.mkdtemp(prefix="sample-app-")
    engine = make_engine(settings.database_url or sqlite_url(str(tmpdir)), settings.pool_size)
    cache = make_cache(settings.redis_url)
    try:
        await create_schema(engine)
        sessions = make_sessions(engine)
        seeded = await seed_if_empty(sessions, settings.items, settings.seed)
        if settings.thread_tokens:
            # Every sync handler shares this one limiter (40 tokens by default). Keeping a pool
            # saturated takes tokens / call-time requests per second: with 40 tokens that is
            # hundreds per second, which would drown a 2-core demo machine. With a small pool,
            # a handful of concurrent requests shows the same queueing.
            limiter = anyio.to_thread.current_default_thread_limiter()
            limiter.total_tokens = settings.thread_tokens
        yield Resources(settings=settings, sessions=sessions, cache=cache, seeded=seeded,
                        extras={})
    finally:
        await cache.close()
        await engine.dispose()
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)


app = create_app()
