"""Settings read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    dsn: str  # postgresql://user:password@host:port/database
    pool_size: int = 10
    max_overflow: int = 5
    page_max: int = 200
    planted: bool = False  # CORPUS_PLANTED=1: the bottlenecks the accuracy corpus plants

    @property
    def async_dsn(self) -> str:
        return self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)

    @property
    def sync_dsn(self) -> str:
        return self.dsn.replace("postgresql+asyncpg://", "postgresql://", 1)


def load() -> Settings:
    return Settings(
        dsn=os.environ.get("DATABASE_URL", "postgresql://app:app-password@127.0.0.1:5432/app"),
        planted=os.environ.get("CORPUS_PLANTED", "").lower() in {"1", "true", "yes"},
    )


settings = load()
