"""The stacks the sample app's tests run on: SQLite, and real PostgreSQL (asyncpg) + Redis."""

from __future__ import annotations

import pytest

from tests.sample_app.inprocess import SQLITE, Stack

__all__ = ["stack"]


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest) -> Stack:
    """Every test that takes it runs on both; the servers start only for the second."""
    if request.param == "sqlite":
        return SQLITE
    return Stack("postgres", request.getfixturevalue("postgres"),
                 request.getfixturevalue("redis_service"))
