from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

from apiscope.agent.queries import uninstall_query_hooks
from apiscope.agent.runtime import shutdown_agent


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A private socket directory with a short path (Unix socket paths max out at 107 bytes)."""
    path = tempfile.mkdtemp(prefix="apiscope-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_leftover_agent() -> Iterator[None]:
    """Each test starts without the process-wide agent or query hooks and leaves none behind."""
    yield
    shutdown_agent()
    uninstall_query_hooks()
