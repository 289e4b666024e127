"""Settings read from the environment once, when the app is created."""

from __future__ import annotations

import os
from urllib.parse import urlsplit


def database_url() -> str:
    return os.environ.get("DATABASE_URL", "postgresql://app:app-password@127.0.0.1:5432/app")


def from_env() -> dict[str, object]:
    dsn = database_url()
    return {
        "DSN": dsn,
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        # Keys are namespaced by database, so that apps sharing a Redis never read each
        # other's cached articles.
        "CACHE_PREFIX": urlsplit(dsn).path.strip("/") or "newsroom",
        # The bottlenecks the accuracy corpus plants; off unless asked for.
        "PLANTED": os.environ.get("CORPUS_PLANTED", "").lower() in {"1", "true", "yes"},
        "DB_POOL_MIN": 2,
        "DB_POOL_MAX": 10,
        "ARTICLE_CACHE_TTL": 30,
        "SESSION_CACHE_TTL": 300,
        "TOKEN_TTL_HOURS": 24,
        "PAGE_SIZE_MAX": 100,
    }
