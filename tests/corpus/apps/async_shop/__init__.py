"""An async-first shop API (SQLAlchemy asyncio on asyncpg, Redis, an HTTP pricing service)."""
