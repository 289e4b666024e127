from __future__ import annotations

import re
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

from apiscope.exporters.html import render_page
from apiscope.exporters.tree import build_tree
from apiscope.model import StackSample
from apiscope.report import Report
from tests.exporters.sessions import IDLE_STACK, ITEMS_STACK

REPORT = Report.from_json({
    "apiscope_report": 1,
    "target": {"pids": [1234], "command": "uvicorn shop:app", "server": "uvicorn",
               "python": "3.11.7"},
    "window": {"start": "2026-11-26T03:00:00Z", "end": "2026-11-26T03:00:30Z", "seconds": 30.0},
    "samples": {"total": 6000, "rate_hz": 100, "errors": 0},
    "endpoints": [
        {"route": "GET /items/{item_id}", "handler": "shop:read_item", "count": 1200,
         "rps": 40.0, "p50_ms": 1.2, "p95_ms": 3.4, "p99_ms": 8.0, "max_ms": 12.0,
         "error_rate": 0.0, "cpu_share": 0.05}],
    "processes": [],
    "flags": [
        {"kind": "event_loop_blocked", "severity": "high", "route": "GET /reports/<summary>",
         "location": {"file": "/srv/main.py", "line": 87, "function": "summary"},
         "evidence": "the event loop spent 41% of the window inside summary() & co",
         "metric": {"blocked_fraction": 0.41},
         "suggestion": "await asyncio.sleep(...) or use run_in_threadpool"}],
})


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Collector:
    c = Collector()
    c.feed(page)
    c.close()
    return c


def tree() -> Any:
    return build_tree([StackSample(1, 1, "", ITEMS_STACK, 3), StackSample(1, 1, "", IDLE_STACK, 1)])


def test_page_has_report_sections_and_flamegraph() -> None:
    page = render_page(tree(), REPORT, "shop <session>")
    parsed = parse(page)
    text = " ".join(parsed.text)
    assert "GET /items/{item_id}" in text
    assert "3.4" in text and "5.0%" in text  # p95 and cpu share
    assert "event_loop_blocked" in text and "GET /reports/<summary>" in text
    assert "summary() & co" in text and "run_in_threadpool" in text
    assert "summary at /srv/main.py:87" in text
    assert "<title>shop &lt;session&gt;</title>" in page
    assert sum(1 for tag, attrs in parsed.tags if tag == "g" and attrs.get("class") == "frame") == 5
    assert "<?xml" not in page  # the SVG is inlined, not a nested document


def test_page_is_standalone() -> None:
    page = render_page(tree(), REPORT, "t")
    for tag, attrs in parse(page).tags:
        assert "src" not in attrs, tag
        assert tag != "link"
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}  # a namespace name, never fetched


def test_page_without_report_shows_only_the_flamegraph() -> None:
    page = render_page(tree(), None, "t")
    assert "Endpoints" not in page and "Flamegraph" in page


def test_empty_report_sections_say_so() -> None:
    page = render_page(tree(), replace(REPORT, flags=(), endpoints=()), "t")
    assert "No bottleneck was flagged." in page and "No endpoints were recorded." in page
