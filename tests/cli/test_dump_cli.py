"""`apiscope dump`'s text: what it says when the agent could not read the requests in flight."""

from __future__ import annotations

import pytest

from apiscope.agent import inflight
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
