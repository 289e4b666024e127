"""Session-wide PostgreSQL and Redis servers for the corpus (and any test that asks for them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import (
    IN_CI,
    PostgresServer,
    RedisServer,
    ServiceUnavailable,
    postgres_server,
    redis_server,
)


def _unavailable(exc: ServiceUnavailable) -> None:
    if IN_CI:
        pytest.fail(f"{exc}: in CI, make test installs it")
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        with postgres_server() as server:
            yield server
    except ServiceUnavailable as exc:
        _unavailable(exc)


@pytest.fixture(scope="session")
def redis_service() -> Iterator[RedisServer]:
    try:
        with redis_server() as server:
            yield server
    except ServiceUnavailable as exc:
        _unavailable(exc)
