"""The endpoint page's async-profile section, served by the real dashboard."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from apiscope.analysis.profiles import aggregate
from apiscope.dashboard import start_dashboard_thread
from apiscope.dashboard.profiles import (
    export_profile,
    load_profiles,
    profile_key,
    profiles_view,
    tree_rows,
)
from tests.profiling.trees import ORDERS, awaiting_profile, healthy_with_orders, series
from tests.support import free_port

ROOTS = ("/srv/shop",)
ROUTE = "GET /orders"


@pytest.fixture
def session(tmp_path: Path) -> Path:
    spec = healthy_with_orders()
    spec.profiles = series(awaiting_profile, ROUTE, 5, 300.0, 240.0)
    return spec.write(tmp_path / "profiled.sqlite")


def test_tree_rows_fold_library_frames_but_the_awaited_call() -> None:
    profiles = series(awaiting_profile, ROUTE, 2, 300.0, 240.0)
    route = aggregate(profiles, ROOTS)[ROUTE]
    assert route.tree is not None
    rows = [(r.depth, r.function, r.app) for r in tree_rows(route.tree, route.count, ROOTS)]
    # APIRoute.handle and greenlet_spawn are library frames no application line called;
    # render_orders (2 ms of 300) is under the 1% floor
    assert rows == [(0, ROUTE, False), (1, "list_orders", True),
                    (2, "AsyncSession.execute", False)]
    [execute] = [r for r in tree_rows(route.tree, route.count, ROOTS)
                 if r.function == "AsyncSession.execute"]
    assert (execute.ms, execute.await_ms, execute.where) == (240.0, 240.0, "session.py:461")


def test_view_lists_sites_and_slowest_requests(session: Path) -> None:
    profiles = load_profiles(session, ROUTE)
    assert len(profiles) == 5 and load_profiles(session, "POST /orders") == []
    view = json.dumps(profiles_view(aggregate(profiles, ROOTS).get(ROUTE), ROOTS),
                      default=lambda c: c.to_plotly_json())
    assert "5 profiled requests" in view and "orders.py:41" in view
    assert view.count('"profile-export"') == 10  # two downloads per profiled request


def test_download_is_pyinstruments_page(session: Path) -> None:
    profile = load_profiles(session, ROUTE)[0]
    out = export_profile(profile, "html")
    assert out["filename"].endswith(".html") and "list_orders" in out["content"]
    out = export_profile(profile, "speedscope")
    assert json.loads(out["content"])["$schema"].startswith("https://www.speedscope.app/")


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def test_served_dashboard_answers_the_profile_callbacks(session: Path) -> None:
    handle = start_dashboard_thread(session, "127.0.0.1", free_port(), live=False)
    try:
        url = handle.url + "_dash-update-component"
        answer = post(url, {
            "output": "endpoint-profiles.children",
            "outputs": {"id": "endpoint-profiles", "property": "children"},
            "inputs": [{"id": "endpoint-route", "property": "data", "value": ROUTE},
                       {"id": "version", "property": "data", "value": []}],
            "changedPropIds": ["endpoint-route.data"], "state": []})
        text = json.dumps(answer)
        assert "await-sites-table" in text and ORDERS.rsplit("/", 1)[-1] + ":41" in text
        key = profile_key(load_profiles(session, ROUTE)[0])
        button = {"fmt": "speedscope", "key": key, "type": "profile-export"}
        answer = post(url, {
            "output": "profile-download.data",
            "outputs": {"id": "profile-download", "property": "data"},
            "inputs": [[{"id": button, "property": "n_clicks", "value": 1}]],
            "changedPropIds": [json.dumps(button, separators=(",", ":"), sort_keys=True)
                               + ".n_clicks"],
            "state": [{"id": "endpoint-route", "property": "data", "value": ROUTE}]})
        download = answer["response"]["profile-download"]["data"]
        assert download["filename"].endswith(".speedscope.json")
        assert "list_orders" in download["content"]
    finally:
        handle.stop()
