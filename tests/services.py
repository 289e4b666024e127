"""Real PostgreSQL and Redis servers for tests: apiscope's own (`apiscope.services`), as fixtures.

The servers are the ones `apiscope demo --db postgres --cache redis` starts, so there is one
implementation. Here a missing binary becomes a skip outside CI and a failure in CI (where
`make test` installs them). `postgres` and `redis_service` are session-wide fixtures: import
them into a conftest (`from tests.services import postgres, redis_service`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from apiscope.services import (
    APP_DATABASE,
    APP_PASSWORD,
    APP_USER,
    PostgresServer,
    RedisServer,
    ServiceFailed,
    ServiceUnavailable,
    free_port,
    postgres_server,
    redis_server,
)

IN_CI = os.environ.get("CI", "").lower() == "true"

__all__ = ["APP_DATABASE", "APP_PASSWORD", "APP_USER", "IN_CI", "PostgresServer", "RedisServer",
           "ServiceFailed", "ServiceUnavailable", "free_port", "postgres", "postgres_server",
           "redis_server", "redis_service", "unavailable"]


def unavailable(exc: ServiceUnavailable) -> None:
    if IN_CI:
        pytest.fail(f"{exc.message}: in CI, make test installs it")
    pytest.skip(exc.message)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        with postgres_server() as server:
            yield server
    except ServiceUnavailable as exc:
        unavailable(exc)


@pytest.fixture(scope="session")
def redis_service() -> Iterator[RedisServer]:
    try:
        with redis_server() as server:
            yield server
    except ServiceUnavailable as exc:
        unavailable(exc)
