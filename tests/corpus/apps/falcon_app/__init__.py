"""An order-management API on Falcon's ASGI app, async SQLAlchemy on asyncpg and pydantic."""

__version__ = "1.4.2"
