from __future__ import annotations

import os
from dataclasses import dataclass, field


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes"}


@dataclass(frozen=True)
class Settings:
    PROJECT_NAME: str = "Corpus Items"
    API_V1_STR: str = "/api/v1"
    DATABASE_URL: str = field(default_factory=lambda: os.environ.get(
        "DATABASE_URL", "postgresql+psycopg://app:app-password@127.0.0.1:5432/app"))
    REDIS_URL: str | None = field(default_factory=lambda: os.environ.get("REDIS_URL"))
    SECRET_KEY: str = field(default_factory=lambda: os.environ.get("SECRET_KEY", "changethis"))
    ACCESS_TOKEN_EXPIRE_MINUTES: int = 60 * 24 * 8
    FIRST_SUPERUSER: str = "admin@example.com"
    FIRST_SUPERUSER_PASSWORD: str = "changethis"
    # The bottlenecks the accuracy corpus plants; never mounted unless asked for.
    PLANTED: bool = field(default_factory=lambda: _flag("CORPUS_PLANTED"))


settings = Settings()
