from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiscope.dashboard import DashboardHandle, create_app, start_server_thread
from tests.dashboard.browser import chromium
from tests.dashboard.synthetic import write_session
from tests.support import free_port


@pytest.fixture(scope="session")
def session_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished synthetic session (60 s, two workers, half-second windows)."""
    return write_session(tmp_path_factory.mktemp("session") / "s.sqlite", window_s=0.5)


@pytest.fixture(scope="session")
def replay(session_file: Path) -> Iterator[DashboardHandle]:
    handle = start_server_thread(create_app(session_file, live=False), "127.0.0.1", free_port())
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory, downloads: Path) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("profile"), downloads) as driver:
        yield driver
