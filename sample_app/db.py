"""The database: ORM tables, and an async engine with a connection pool."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, ForeignKey, String, Table, event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


item_tags = Table(
    "item_tags",
    Base.metadata,
    Column("item_id", ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True),
)


class Tag(Base):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30), unique=True)


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    description: Mapped[str] = mapped_column(String(2000), default="")
    price_cents: Mapped[int]
    # lazy="raise": in async code an implicit lazy load would fail at run time, so every
    # query must say what it loads (selectinload), which is also what keeps queries visible.
    tags: Mapped[list[Tag]] = relationship(secondary=item_tags, lazy="raise")


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))
    placed_at: Mapped[datetime] = mapped_column(DateTime())
    lines: Mapped[list[OrderLine]] = relationship(lazy="raise", order_by="OrderLine.id")


class OrderLine(Base):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    quantity: Mapped[int]
    unit_price_cents: Mapped[int]


def sqlite_url(directory: str) -> str:
    return f"sqlite+aiosqlite:///{directory}/items.sqlite"


# Advisory lock keys: gunicorn workers start together against one PostgreSQL database.
SCHEMA_LOCK = 7340
SEED_LOCK = 7341


def async_url(url: str) -> str:
    """`postgresql://` and `postgres://` URLs (as hosting platforms hand them out) name no
    driver, and SQLAlchemy's default for them is the synchronous psycopg2: use asyncpg."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+asyncpg://" + url[len(scheme):]
    return url


def make_engine(url: str, pool_size: int) -> AsyncEngine:
    """An engine with a bounded pool; SQLite gets WAL so readers never wait for the writer."""
    engine = create_async_engine(async_url(url), pool_size=pool_size, max_overflow=pool_size)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # A small page cache per connection: the OS caches the file anyway, and ten connections
    # warming 2 MB caches each would look like a memory ramp for the first minute.
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000",
                   "foreign_keys=ON", "cache_size=-512"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects stay readable after commit without another round trip.
    return async_sessionmaker(engine, expire_on_commit=False)


async def create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Two workers creating the tables at once both find them missing and one fails on
            # the catalog's unique index: the second waits here, then finds them all.
            await conn.execute(text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})"))
        await conn.run_sync(Base.metadata.create_all)
