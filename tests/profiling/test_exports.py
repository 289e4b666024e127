"""One request's profile as pyinstrument's HTML page and as a speedscope file."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from apiscope.exporters.profile import (
    frame_records,
    profile_filename,
    pyinstrument_session,
    render_profile_html,
    render_profile_speedscope,
)
from tests.analysis.builder import T0
from tests.profiling.trees import awaiting_profile

PROFILE = awaiting_profile("GET /orders/{order_id}", 300.0, 240.0, T0)


def test_frame_records_add_up_to_the_tree() -> None:
    assert PROFILE.tree is not None
    records = frame_records(PROFILE.tree)
    assert abs(sum(seconds for _, seconds in records) - 0.300) < 1e-9
    awaited = [path for path, _ in records if path[-1] == "[await]"]
    assert len(awaited) == 2  # greenlet_spawn's 240 ms and the root's own 58 ms
    session = pyinstrument_session(PROFILE)
    root = session.root_frame()
    assert root.function == "GET /orders/{order_id}" and abs(root.time - 0.3) < 1e-9


def test_html_is_pyinstruments_page_with_the_functions() -> None:
    html = render_profile_html(PROFILE)
    assert html.lstrip().lower().startswith("<!doctype html>")
    for name in ("list_orders", "render_orders", "AsyncSession.execute", "GET /orders"):
        assert name in html


def test_speedscope_file_is_valid_and_balanced() -> None:
    doc = json.loads(render_profile_speedscope(PROFILE))
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert "list_orders" in names and "AsyncSession.execute" in names
    [profile] = doc["profiles"]
    assert profile["type"] == "evented" and profile["unit"] == "seconds"
    depth, last = 0, 0.0
    for event in profile["events"]:
        assert event["at"] >= last and 0 <= event["frame"] < len(names)
        last = event["at"]
        depth += 1 if event["type"] == "O" else -1
        assert depth >= 0
    assert depth == 0 and abs(profile["endValue"] - 0.3) < 1e-6


def test_download_names_are_safe() -> None:
    name = profile_filename(PROFILE, ".html")
    assert name == f"GET-orders-order_id-4242-{int(T0 * 1000)}.html"


def test_a_profile_without_a_tree_is_refused() -> None:
    with pytest.raises(ValueError, match="no call tree"):
        render_profile_html(replace(PROFILE, tree=None))
