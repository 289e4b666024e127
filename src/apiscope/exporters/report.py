"""The report written to a file: the analysis's JSON as it is, or one standalone HTML page.

The page is the exporters' page with the report's tables and an interactive flamegraph of the
session's active samples (threads waiting for work left out, so the graph shows where time went
rather than the idle selector). Rendering lives here, above the analysis, so that the analysis
produces the report and never depends on how it is drawn.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from apiscope.analysis.attribution import app_roots
from apiscope.analysis.context import SessionData
from apiscope.analysis.report import analyse, load_session
from apiscope.errors import UsageError
from apiscope.exporters.html import render_page
from apiscope.exporters.tree import build_tree
from apiscope.model import SampleState, StackSample
from apiscope.report import Report
from apiscope.store.reader import SessionReader


def active_stacks(data: SessionData) -> list[StackSample]:
    return [s for _, s in data.samples if s.state is not SampleState.WAITING]


def render_html(report: Report, data: SessionData, title: str | None = None) -> str:
    title = title or f"apiscope report: {report.target.command or 'session'}"
    roots = app_roots(data.routes, (s.frames for _, s in data.samples))
    return render_page(build_tree(active_stacks(data)), report, title, roots)


def write_report(session: SessionReader | str | os.PathLike[str], path: str | Path,
                 slo_ms: float | None = None) -> Report:
    """Write the report at the end of attach/run/demo: JSON or HTML chosen by the suffix.

    `session` is an open reader or the session file's path. Returns the report.
    """
    check_report_suffix(path)
    if isinstance(session, SessionReader):
        data = load_session(session)
    else:
        with SessionReader(session) as reader:
            data = load_session(reader)
    report = analyse(data, slo_ms=slo_ms)
    save_report(report, data, path)
    return report


def check_report_suffix(path: str | Path) -> None:
    if Path(path).suffix.lower() not in (".json", ".html", ".htm"):
        raise UsageError(f"--report {path}: use a .json or .html file name")


def save_report(report: Report, data: SessionData, path: str | Path) -> None:
    """Write an analysed report as JSON or standalone HTML, by the file's suffix."""
    check_report_suffix(path)
    target = Path(path)
    json_out = target.suffix.lower() == ".json"
    text = json.dumps(report.to_json(), indent=2) + "\n" if json_out else render_html(report, data)
    target.write_text(text, encoding="utf-8")
