"""`apiscope dump`: what it says when the agent could not read the requests in flight, and the
age of a request that came in while it read."""

from __future__ import annotations

import asyncio
import threading

import pytest

from apiscope.agent import inflight
from apiscope.agent.middleware import AgentMiddleware
from apiscope.agent.recorder import Recorder
from apiscope.cli.dump import render_text


def test_requests_that_could_not_be_read_are_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(*args: object) -> list[dict[str, object]]:
        raise RuntimeError("a loop closed while it was read")

    # The failure is forced: a heap read racing the loop's thread is not reproducible.
    monkeypatch.setattr(inflight, "_in_flight", unreadable)
    dump = inflight.dump_state()
    assert dump["requests"] == [] and dump["threads"]
    assert dump["requests_unread"] == "RuntimeError: a loop closed while it was read"
    text = render_text(dump)
    assert "0 request(s) in flight" in text.splitlines()[0]
    assert "the requests in flight could not be read (RuntimeError: a loop closed" in text


def test_a_readable_dump_has_no_such_note() -> None:
    dump = inflight.dump_state()
    assert "requests_unread" not in dump
    assert "could not be read" not in render_text(dump)


def test_a_request_come_in_while_the_dump_reads_has_no_negative_age() -> None:
    # The dump reads its clock before it walks the loops, while the loop serves on: a request
    # that arrives meanwhile is just arriving (it read "-0.08 s" before).
    started, release = threading.Event(), None

    async def app(scope: dict, receive: object, send: object) -> None:
        started.set()
        await release.wait()

    loop = asyncio.new_event_loop()

    async def serve() -> None:
        nonlocal release
        release = asyncio.Event()
        middleware = AgentMiddleware(app, Recorder())

        async def receive() -> dict:
            return {"type": "http.request", "body": b""}

        async def send(message: dict) -> None:
            pass

        await middleware({"type": "http", "method": "GET", "path": "/slow", "headers": []},
                         receive, send)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert started.wait(5)
        dump = inflight.dump_state(clock=lambda: 0.0)  # read "before" the request came in
        [row] = [r for r in dump["requests"] if r["method"] == "GET"]
        assert row["elapsed_s"] == 0.0
    finally:
        loop.call_soon_threadsafe(lambda: release.set())
        thread.join(5)
        loop.close()


def test_a_request_on_a_pool_thread_names_the_thread_by_its_tid_too() -> None:
    """Pool threads share one name ("AnyIO worker thread"): the tid tells which stack below
    is the request's."""
    frames = [{"function": "search", "file": "/srv/app/views.py", "line": 12}]
    threads = [{"ident": 1, "native_id": 101, "name": "AnyIO worker thread", "frames": frames},
               {"ident": 2, "native_id": 102, "name": "AnyIO worker thread", "frames": frames}]
    request = {"method": "POST", "route": "/runs/search", "elapsed_s": 0.4, "thread": 2,
               "awaiting": True, "await_chain": []}
    text = render_text({"pid": 7, "requests": [request], "threads": threads})
    assert "POST /runs/search  waiting for thread AnyIO worker thread (tid 102)" in text
    assert "Thread AnyIO worker thread (tid 102), running POST /runs/search:" in text
