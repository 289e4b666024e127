"""The report as one standalone HTML page: the exporters' page with the report's tables and an
interactive flamegraph of the session's active samples (threads waiting for work left out, so
the graph shows where time went rather than the idle selector)."""

from __future__ import annotations

from typing import Any

from apiscope.analysis.attribution import app_roots
from apiscope.analysis.context import SessionData
from apiscope.exporters.html import render_page
from apiscope.exporters.tree import build_tree
from apiscope.model import SampleState, StackSample


def active_stacks(data: SessionData) -> list[StackSample]:
    return [s for _, s in data.samples if s.state is not SampleState.WAITING]


def render_html(report: dict[str, Any], data: SessionData, title: str | None = None) -> str:
    title = title or f"apiscope report: {report['target'].get('command') or 'session'}"
    return render_page(build_tree(active_stacks(data)), report, title, app_roots(data.routes))
