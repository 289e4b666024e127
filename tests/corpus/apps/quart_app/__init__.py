"""A small publishing API on Quart: blueprints, asyncpg, a Redis token cache, Jinja pages."""
