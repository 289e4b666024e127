"""The engine and session factory, created at ASGI lifespan startup (one per worker process)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from .config import Settings


def make_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(settings.async_dsn, pool_size=settings.pool_size,
                               max_overflow=settings.max_overflow, pool_recycle=1800)


class Database:
    """Holds the process's engine; resources get a session through the request context."""

    def __init__(self) -> None:
        self.engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    def connect(self, settings: Settings) -> None:
        self.engine = make_engine(settings)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def dispose(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    def session(self) -> AsyncSession:
        if self._sessions is None:
            raise RuntimeError("database not started (lifespan startup did not run)")
        return self._sessions()
