from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import stop_collectors


@pytest.fixture(autouse=True)
def _no_collector_outlives_its_test() -> Iterator[None]:
    """A test that fails half-way leaves its apiscope running: stop it there, so that it is
    neither blamed on the next test (a ResourceWarning) nor left holding the target."""
    yield
    stop_collectors()
