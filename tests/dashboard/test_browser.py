"""The dashboard in a real headless Chromium: pages, navigation, filters, downloads, live mode."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from apiscope.dashboard import DashboardHandle, create_app, start_server_thread
from apiscope.model import RequestRecord
from apiscope.store import SessionWriter
from tests.dashboard.browser import console_errors
from tests.dashboard.synthetic import START, make_requests
from tests.support import free_port, wait_until

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def clean_log(browser: Any) -> None:
    """Start each test on a blank page with an empty browser log: a page of an earlier test
    whose server has stopped must not count against this one."""
    browser.get("about:blank")
    console_errors(browser)


PAGES = {"": "#endpoints-table", "flamegraph": "#flame .main-svg",
         "resources": ".js-plotly-plot .scatterlayer .trace",
         "endpoint?route=GET%20%2Freports%2Fsummary": "#slow-table",
         "endpoint": "#endpoint-flame .main-svg", "no/such/page": "#not-found"}


def _find(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, css))


def _text(driver: Any, css: str) -> str:
    """The visible text of the first match, read in the page (no stale element handles)."""
    text = driver.execute_script(
        "const el = document.querySelector(arguments[0]); return el ? el.innerText : '';", css)
    return str(text).strip()


def _texts(driver: Any, css: str) -> list[str]:
    texts = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText);", css)
    return [str(t).strip() for t in texts]


def _click(driver: Any, css: str, text: str | None = None, what: str = "") -> None:
    """Click the first element matching `css` (and showing `text`), retrying while Dash
    re-renders it."""
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt() -> bool:
        try:
            for element in _find(driver, css):
                if text is None or element.text.strip() == text:
                    element.click()
                    return True
        except StaleElementReferenceException:
            pass
        return False

    _wait(attempt, what or f"{css} {text or ''} to click")


def _flame_labels(driver: Any) -> list[str]:
    """The labels of the flamegraph plotly drew (read from the plot's own data)."""
    labels = driver.execute_script(
        "const el = document.querySelector('#flame .js-plotly-plot');"
        " return el && el.data && el.data.length ? el.data[0].labels : null;")
    return list(labels or [])


def _wait(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    return wait_until(condition, timeout=timeout, interval=0.1, what=what)


def _settled(driver: Any) -> bool:
    """Dash is idle: no callback pending (the renderer marks loading components)."""
    return not _find(driver, "[data-dash-is-loading='true']")


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_console_errors(browser: Any, replay: DashboardHandle,
                                                   page: str) -> None:
    browser.get(replay.url + page)
    expected = PAGES[page]
    _wait(lambda: _find(browser, expected), f"{expected} on /{page}")
    _wait(lambda: _settled(browser), "callbacks to finish")
    assert console_errors(browser) == []


def test_clicking_an_endpoint_opens_its_page(browser: Any, replay: DashboardHandle) -> None:
    browser.get(replay.url)
    _click(browser, "#endpoints-table a", "GET /users/{user_id}/orders")
    _wait(lambda: _text(browser, "#endpoint-title") == "GET /users/{user_id}/orders",
          "the endpoint page")
    _wait(lambda: _find(browser, "#slow-table tbody tr"), "the slowest requests")
    assert "SELECT * FROM orders WHERE id = ? ×20" in _text(browser, "#slow-table")
    assert "n_plus_one" in _text(browser, "#endpoint-flags")
    assert console_errors(browser) == []


def test_sorting_the_endpoints_table(browser: Any, replay: DashboardHandle) -> None:
    browser.get(replay.url)
    _wait(lambda: _find(browser, "#endpoints-table"), "the table")
    _click(browser, ".sort-button", "p95 ms")
    _wait(lambda: "p95 ms ▼" in _text(browser, "#endpoints-table thead"), "a sorted header")
    rows = _texts(browser, "#endpoints-table tbody tr")
    assert rows[0].startswith("GET /reports/summary")  # the slowest endpoint first
    assert rows[-1].startswith("GET <unmatched>")


def test_flamegraph_filters_change_what_is_drawn(browser: Any, replay: DashboardHandle) -> None:
    from selenium.webdriver.common.keys import Keys

    browser.get(replay.url + "flamegraph")
    _wait(lambda: "create_item" in _flame_labels(browser), "the full flamegraph")
    active = _text(browser, "#flame-info")
    # idle samples on: the selector wait of the event loop appears
    _click(browser, "#flame-toggles input[value='idle']")
    _wait(lambda: "select" in _flame_labels(browser), "idle frames")
    assert _text(browser, "#flame-info") != active
    # one endpoint: the thread-pool handler disappears
    _click(browser, "#flame-endpoint")
    _click(browser, "[role=option]", "GET /reports/summary")
    _wait(lambda: "create_item" not in _flame_labels(browser) and _flame_labels(browser),
          "the endpoint's flamegraph")
    assert "summary" in _flame_labels(browser)
    box = _find(browser, "#flame-search")[0]
    box.send_keys("compute_totals", Keys.ENTER)
    _wait(lambda: "matches" in _text(browser, "#flame-info"), "search results")
    assert "matches 1 frames" in _text(browser, "#flame-info")
    assert console_errors(browser) == []


def _flame_total(driver: Any) -> int:
    """The samples under the flamegraph's root box, read from the plot's own data."""
    total = driver.execute_script(
        "const el = document.querySelector('#flame .js-plotly-plot');"
        " return el && el.data && el.data.length ? el.data[0].values[0] : 0;")
    return int(total or 0)


def test_flamegraph_opens_on_cpu_and_the_waiting_toggle_adds_blocked_time(
        browser: Any, replay: DashboardHandle) -> None:
    browser.get(replay.url + "flamegraph")
    _wait(lambda: "(on CPU only)" in _text(browser, "#flame-info"), "the on-CPU flamegraph")
    on_cpu = _wait(lambda: _flame_total(browser), "the flamegraph's total")
    assert "waiting: sleep, I/O, locks, GIL, a free CPU" in _text(browser, "#flame-toggles")
    _click(browser, "#flame-toggles input[value='blocked']")
    _wait(lambda: "(on CPU + waiting)" in _text(browser, "#flame-info"), "the waiting samples")
    # summary()'s time.sleep on the loop is back: more samples under the same root
    _wait(lambda: _flame_total(browser) > on_cpu, "a wider flamegraph")
    assert console_errors(browser) == []


def test_export_button_downloads_a_valid_file(browser: Any, replay: DashboardHandle,
                                              downloads: Path) -> None:
    browser.get(replay.url + "flamegraph")
    _wait(lambda: _flame_labels(browser), "the flamegraph")
    _click(browser, "#export-speedscope")
    target = downloads / "apiscope-flamegraph.speedscope.json"
    _wait(target.exists, "the download", timeout=20)
    document = _wait(lambda: _json_or_none(target), "a complete file")
    assert document["$schema"].startswith("https://www.speedscope.app/")
    assert document["profiles"] and document["shared"]["frames"]


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_time_selection_is_shared_by_all_views(browser: Any, replay: DashboardHandle) -> None:
    browser.get(replay.url + "flamegraph")
    _wait(lambda: _flame_labels(browser), "the flamegraph")
    before = _text(browser, "#flame-info")
    # drag across the middle of the timeline, as a user selects a time range
    from selenium.webdriver.common.action_chains import ActionChains

    timeline = _find(browser, ".timeline-chart .nsewdrag")[0]
    width = timeline.size["width"]
    ActionChains(browser).move_to_element_with_offset(timeline, -width // 5, 0).click_and_hold() \
        .move_by_offset(width // 10, 0).move_by_offset(width // 10, 0).release().perform()
    _wait(lambda: "UTC (" in _text(browser, "#range-label"), "the shared range")
    _wait(lambda: _text(browser, "#flame-info") != before, "a narrower flamegraph")
    # the overview keeps the range: rates and counts cover those 10 seconds only
    _click(browser, "a.nav-link[href='/']")
    seconds = float(_text(browser, "#range-label").split("(")[1].split()[0])
    assert 5 < seconds < 20  # a fifth of the 60 s session

    def overview_seconds() -> float:
        text = _text(browser, "#overview-summary")
        return float(text.split(" over ")[1].split()[0]) if " over " in text else -1.0

    _wait(lambda: abs(overview_seconds() - seconds) <= 1, "the overview in range")
    _click(browser, "#range-reset")
    _wait(lambda: _text(browser, "#range-label") == "whole session", "the reset")
    assert console_errors(browser) == []


def test_empty_states_tell_the_user_what_to_do(browser: Any, tmp_path: Path) -> None:
    from apiscope.dashboard.components import NO_REQUESTS, NO_SAMPLES

    path = tmp_path / "empty.sqlite"
    SessionWriter(path).close()
    handle = start_server_thread(create_app(path, live=False), "127.0.0.1", free_port())
    try:
        browser.get(handle.url)
        _wait(lambda: NO_REQUESTS in _text(browser, "#endpoints"), "the no-requests message")
        browser.get(handle.url + "flamegraph")
        _wait(lambda: "no stack samples recorded yet" in _text(browser, "#flame"),
              "the no-samples message")
        assert NO_SAMPLES.startswith("no stack samples recorded yet")
        assert console_errors(browser) == []
    finally:
        browser.get("about:blank")
        handle.stop()


def test_a_gap_in_the_sampling_is_shaded_and_named_on_the_timeline(browser: Any,
                                                                   tmp_path: Path) -> None:
    from tests.dashboard.synthetic import write_session

    path = write_session(tmp_path / "gap.sqlite", seconds=20, window_s=0.5, flags=False)
    with SessionWriter(path) as writer:  # as the collector notes a target stopped for 3 s
        writer.set_meta(gaps=[{"start": START + 8, "end": START + 11,
                               "reason": "target stopped"}])
    handle = start_server_thread(create_app(path, live=False), "127.0.0.1", free_port())
    try:
        browser.get(handle.url + "flamegraph")
        # the label plotly drew on the page, inside the shaded span's shape layer (SVG: its
        # textContent, an SVG element has no innerText)
        label = _wait(lambda: browser.execute_script(
            "const el = document.querySelector('.timeline-chart .shapelayer');"
            " return el ? el.textContent : '';"), "the gap's label")
        assert label == "target stopped (3.0 s)"
        assert _find(browser, ".timeline-chart .shapelayer path")
        assert console_errors(browser) == []
    finally:
        browser.get("about:blank")
        handle.stop()


def test_live_mode_shows_new_requests(browser: Any, tmp_path: Path) -> None:
    path = tmp_path / "live.sqlite"
    with SessionWriter(path) as writer:
        writer.put_requests(make_requests(random.Random(1), START, 5, 10, [4101]))
        writer.flush()
        handle = start_server_thread(create_app(path, live=True, refresh_ms=500),
                                     "127.0.0.1", free_port())
        try:
            browser.get(handle.url)
            _wait(lambda: _find(browser, "#endpoints-table"), "the first requests")
            assert "GET /live/{n}" not in _text(browser, "#endpoints-table")
            now = START + 6
            writer.put_requests([RequestRecord(4101, now + i / 10, 5.0, "GET", "/live/{n}", 200)
                                 for i in range(7)])
            writer.flush()
            row = _wait(lambda: [r for r in _texts(browser, "#endpoints-table tbody tr")
                                 if r.startswith("GET /live/{n}")], "the new endpoint")
            assert row[0].split()[2] == "7"
            assert console_errors(browser) == []
        finally:
            browser.get("about:blank")  # stop polling before the server goes
            handle.stop()


def _endpoint_flame(driver: Any) -> tuple[list[str], list[str]]:
    """The endpoint page flamegraph's labels, and the labels of the root's children."""
    found = driver.execute_script(
        "const el = document.querySelector('#endpoint-flame .js-plotly-plot');"
        " if (!el || !el.data || !el.data.length) return null; const t = el.data[0];"
        " return [t.labels, t.labels.filter((_, i) => t.parents[i] === '0')];")
    return (list(found[0]), list(found[1])) if found else ([], [])


def test_endpoint_flamegraph_starts_at_the_handler(browser: Any, replay: DashboardHandle) -> None:
    browser.get(replay.url + "endpoint?route=GET%20%2Freports%2Fsummary")
    _wait(lambda: _endpoint_flame(browser)[0], "the endpoint's flamegraph")
    labels, top = _endpoint_flame(browser)
    assert top[0] == "summary"  # the handler is the first row under the root
    assert "run_asgi" not in labels and "_run_once" not in labels
    # one click shows the server, event loop and framework frames above the handler
    _click(browser, "#endpoint-flame-frames input[value='framework']")
    _wait(lambda: "run_asgi" in _endpoint_flame(browser)[0], "the framework frames")
    assert _endpoint_flame(browser)[1] == ["<module>"]
    assert console_errors(browser) == []
