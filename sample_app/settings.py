"""Settings read once from the environment, so tests can build an app from plain values."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_ITEMS = 5000
DEFAULT_SEED = 42
# A small thread pool makes the sync-handler bottleneck visible with modest load (see README).
DEFAULT_THREAD_TOKENS = 8
DEFAULT_POOL_SIZE = 10


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment."""

    fixed: bool = False
    items: int = DEFAULT_ITEMS
    seed: int = DEFAULT_SEED
    database_url: str | None = None
    redis_url: str | None = None
    thread_tokens: int = DEFAULT_THREAD_TOKENS
    pool_size: int = DEFAULT_POOL_SIZE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            fixed=_flag(env.get("SAMPLE_APP_FIXED", "")),
            items=_int(env, "SAMPLE_APP_ITEMS", DEFAULT_ITEMS, minimum=20),
            seed=_int(env, "SAMPLE_APP_SEED", DEFAULT_SEED, minimum=0),
            database_url=env.get("DATABASE_URL") or None,
            redis_url=env.get("REDIS_URL") or None,
            thread_tokens=_int(env, "SAMPLE_APP_THREAD_TOKENS", DEFAULT_THREAD_TOKENS, minimum=0),
            pool_size=_int(env, "SAMPLE_APP_POOL_SIZE", DEFAULT_POOL_SIZE, minimum=1),
        )


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} is below the minimum of {minimum}")
    return value
