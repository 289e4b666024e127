"""The bootstrap inside one process: a real uvicorn Config, a real FastAPI app, a real agent."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from apiscope.agent import bootstrap, current_agent
from apiscope.agent.api import instrument
from apiscope.agent.servers import unwrap, wrap


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return app


def get(asgi: Any, path: str) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    return asyncio.run(call())


@pytest.fixture
def directory() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="aps-")  # short: Unix socket paths are limited in length
    yield path
    bootstrap.detach()  # whatever a test left wrapped or running
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def served(directory: str) -> Iterator[tuple[FastAPI, uvicorn.Config]]:
    """An app as uvicorn holds it once loaded: inside its ProxyHeadersMiddleware."""
    app = make_app()
    config = uvicorn.Config(app, log_level="warning")
    config.load()
    yield app, config
    del config
    gc.collect()  # so later tests' gc scans do not find this server


def test_finds_the_app_uvicorn_calls(served: tuple[FastAPI, uvicorn.Config]) -> None:
    app, config = served
    assert type(config.loaded_app).__name__ != "FastAPI"  # wrapped by uvicorn
    found = [item for item in bootstrap.find_apps() if item.holder is config]
    assert len(found) == 1
    assert found[0].server == "uvicorn" and found[0].app is config.loaded_app
    assert found[0].describe() == "fastapi.applications.FastAPI"


def test_attach_wraps_once_and_records_each_request_once(
        served: tuple[FastAPI, uvicorn.Config], directory: str) -> None:
    app, config = served
    status = bootstrap.attach(directory)
    mine = [a for a in status["apps"] if a["state"] == "wrapped"]
    assert len(mine) == 1 and status["wrapped"] == 1
    assert os.path.exists(status["socket"])
    wrapper = config.loaded_app
    assert type(wrapper).__name__ == "AgentMiddleware"
    again = bootstrap.attach(directory)
    assert {a["state"] for a in again["apps"]} == {"already"}
    assert config.loaded_app is wrapper
    for item_id in range(3):
        assert get(config.loaded_app, f"/items/{item_id}").status_code == 200
    entries = current_agent().recorder.drain()
    assert [(e.method, e.route, e.status) for e in entries] == [
        ("GET", "/items/{item_id}", 200)] * 3
    assert "/items/{item_id}" in [r["template"] for r in current_agent().routes.rows]


def test_detach_gives_the_server_its_app_back(served: tuple[FastAPI, uvicorn.Config],
                                              directory: str) -> None:
    import starlette._exception_handler as handling

    app, config = served
    original = config.loaded_app
    from apiscope.agent.failures import stop_listening
    from apiscope.agent.frameworks import STARLETTE

    stop_listening(STARLETTE, app)  # not left wrapped by an earlier test's app
    lookup = handling._lookup_exception_handler  # wrapped while attached (`failures`)
    socket = bootstrap.attach(directory)["socket"]
    assert config.loaded_app is not original
    get(config.loaded_app, "/items/1")  # the app is met, and its failures listened to
    assert handling._lookup_exception_handler is not lookup
    status = bootstrap.detach()
    assert status["restored"] == 1
    assert config.loaded_app is original
    assert handling._lookup_exception_handler is lookup
    assert not os.path.exists(socket)
    assert get(config.loaded_app, "/items/2").json() == {"item_id": 2}


def test_an_app_instrumented_in_code_is_not_wrapped_again(directory: str) -> None:
    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = uvicorn.Config(instrument(raw, directory=directory, start=False),
                            log_level="warning", proxy_headers=False)
    config.load()
    (item,) = [i for i in bootstrap.find_apps() if i.holder is config]
    assert wrap(current_agent(directory), item) == "instrumented"
    assert unwrap(item) == "not wrapped"
    del config, item
    gc.collect()


def test_a_starlette_app_instrumented_in_code_is_recorded_once(
        served: tuple[FastAPI, uvicorn.Config], directory: str) -> None:
    app, config = served
    instrument(app, directory=directory, start=False)
    bootstrap.attach(directory)  # outermost: the agent inside stands back
    get(config.loaded_app, "/items/7")
    assert [e.route for e in current_agent().recorder.drain()] == ["/items/{item_id}"]


def test_no_served_app_means_nothing_started(directory: str) -> None:
    gc.collect()  # servers of earlier tests are gone
    make_app()  # an app no server serves is not a target
    config = uvicorn.Config("nowhere:app")  # a --reload supervisor's config: never loaded
    status = bootstrap.attach(directory)
    assert status["apps"] == [] and "no ASGI app" in status["note"]
    assert "socket" not in status
    assert os.listdir(directory) == []
    del config
