"""Every view of one session tells the same story: the report, the dashboard's flamegraph, and
the SVG and HTML exports (from the CLI and from the dashboard's download button).

For the same slice of samples they must show the same totals and shares, give every frame the
same kind (application, library, standard library) and the matching colour, and agree with the
report on which frames are the application's: the leaf-most application box of every stack is
the frame the analysis attributes it to, and a flag's location is an application frame
wherever a view draws it.

Two sessions: the dashboard's realistic synthetic one (the rules flag it) and a small one made
of the frames that views used to judge differently (an application installed into
site-packages, module bodies, console scripts, apiscope's own middleware, generated code, short
py-spy file names).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from apiscope.analysis.attribution import app_roots, user_frame
from apiscope.analysis.context import load_session
from apiscope.analysis.report import analyse
from apiscope.cli.export import session_profile
from apiscope.dashboard.callbacks import _flame
from apiscope.dashboard.data import DashboardSession
from apiscope.dashboard.exports import export_slice
from apiscope.dashboard.figures import COLORS
from apiscope.dashboard.samples import SampleSlice
from apiscope.exporters.html import HtmlRenderer
from apiscope.exporters.report import render_html
from apiscope.exporters.slice import SliceSpec, select_samples
from apiscope.exporters.svg import SvgRenderer, fill_for
from apiscope.exporters.tree import ROOT_NAME, frame_label
from apiscope.flag import Flag
from apiscope.frames import KINDS, Kind
from apiscope.model import Frame, RouteInfo, SampleState, StackSample
from apiscope.report import Report
from apiscope.store.reader import SessionReader
from tests.dashboard import synthetic
from tests.exporters import sessions

# -- a session of the frames views used to disagree on -------------------------------------------

SITE = "/opt/venv/lib/python3.11/site-packages/"
API = SITE + "shop/api.py"  # the application, installed into site-packages
ROUTES = [RouteInfo("GET", "/items/{item_id}", "shop.api:read_item", API, 11, True),
          RouteInfo("GET", "/health", "shop.api:health", API, 39, True)]
ENTRY = Frame("<module>", "/opt/venv/bin/uvicorn", 8)  # a console script's module body
MIDDLEWARE = Frame("AgentMiddleware.__call__", "/opt/tools/apiscope/agent/middleware.py", 113)
READ_ITEM = Frame("read_item", API, 12)
LOAD_ROWS = Frame("load_rows", SITE + "shop/db.py", 30)
EXECUTE = Frame("execute", SITE + "sqlalchemy/engine/base.py", 1400)
GENERATED = Frame("__init__", "<attrs generated init shop.db.Row>", 2)
IMPORT = Frame("<module>", SITE + "shop/db.py", 1)
HEALTH = Frame("health", API, 40)
BASE = (ENTRY, sessions.RUN, sessions.LOOP, MIDDLEWARE)  # sessions.LOOP: a short py-spy name
RUNNING, WAITING, BLOCKED = SampleState.RUNNING, SampleState.WAITING, SampleState.BLOCKED
ROWS: list[tuple[float, int, int, tuple[Frame, ...], int, SampleState, bool | None]] = [
    (0, 100, 1, (*BASE, READ_ITEM, LOAD_ROWS, EXECUTE), 40, RUNNING, True),
    (0, 100, 1, (*BASE, READ_ITEM, LOAD_ROWS, GENERATED), 25, RUNNING, True),
    (0, 100, 1, (*BASE, READ_ITEM, LOAD_ROWS, IMPORT), 3, RUNNING, True),
    (0, 100, 1, (*BASE, HEALTH), 6, RUNNING, True),
    (0, 100, 1, (ENTRY, sessions.RUN, sessions.LOOP, sessions.SELECT), 30, WAITING, False),
    (0, 100, 2, sessions.WORKER_STACK, 9, WAITING, False),
    (10, 200, 3, (*BASE, READ_ITEM, LOAD_ROWS, EXECUTE), 12, BLOCKED, None),
    (10, 200, 3, (*BASE, READ_ITEM), 8, RUNNING, True),
]


@pytest.fixture(scope="module", params=["synthetic", "disputed"])
def session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp(request.param)
    if request.param == "synthetic":
        return synthetic.write_session(directory / "s.sqlite", seconds=20)
    return sessions.write_session(directory / "s.sqlite", ROWS, ROUTES)


@dataclass(frozen=True, slots=True)
class Box:
    kind: str  # "app", "library", "stdlib", or "root"/"other" for a box that is no frame
    value: int
    percent: str  # of the view's samples, as the SVG's tooltip prints it


View = dict[tuple[str, ...], Box]


# -- reading each view back -----------------------------------------------------------------------

_SVG_FRAME = re.compile(r'<g class="frame" data-x="[^"]*" data-w="[^"]*" data-d="(\d+)"'
                        r' data-n="([^"]*)"><title>([^<]*)</title><rect [^>]*fill="([^"]*)"')
_TIP = re.compile(r"\n([\d,]+) samples, ([\d.]+)% of all")


def _svg_kind(label: str, fill: str) -> str:
    """The kind whose colour `fill` is (each kind has its own palette, shaded by function)."""
    function = label.rpartition(" (")[0] if label.endswith(")") else label
    kinds: list[Kind | None] = [*KINDS, None]
    found = [k for k in kinds if fill_for(k, function) == fill]
    assert len(found) == 1, (label, fill)
    return found[0] or "root"


def svg_view(text: str) -> View:
    view: View = {}
    path: list[str] = []
    for depth, name, tip, fill in _SVG_FRAME.findall(text):
        label = html.unescape(name)
        path = [*path[:int(depth)], label]
        match = _TIP.search(html.unescape(tip))
        assert match, tip
        view[tuple(path)] = Box(_svg_kind(label, fill), int(match.group(1).replace(",", "")),
                                match.group(2))
    assert view, "no frame in the SVG"
    return view


def dashboard_view(figure: dict[str, Any]) -> View:
    trace = figure["data"][0]
    names = {i: c[0] for i, c in zip(trace["ids"], trace["customdata"], strict=True)}
    paths: dict[str, tuple[str, ...]] = {}
    view: View = {}
    for node_id, parent, value, color, custom in zip(
            trace["ids"], trace["parents"], trace["values"], trace["marker"]["colors"],
            trace["customdata"], strict=True):
        paths[node_id] = (*paths.get(parent, ()), names[node_id])
        kind = custom[1]
        assert color == COLORS[kind], (custom[0], kind, color)
        view[paths[node_id]] = Box(kind, value, f"{100 * custom[3]:.2f}")
    return view


def leaf_most_app(view: View, path: tuple[str, ...]) -> str | None:
    for end in range(len(path), 0, -1):
        if view[path[:end]].kind == "app":
            return path[end - 1]
    return None


# -- the checks -----------------------------------------------------------------------------------


def assert_same_view(dashboard: View, exported: View, what: str) -> None:
    """Every frame box the dashboard draws (it merges small ones into "other") is in the export,
    with the same kind, samples and share; the totals are the same."""
    root = (ROOT_NAME,)
    assert dashboard[root].value == exported[root].value, what
    frames = 0
    for path, box in dashboard.items():
        if box.kind not in KINDS:
            continue
        frames += 1
        assert path in exported, (what, path)
        assert exported[path] == box, (what, path)
    assert frames, what


def assert_attribution(view: View, stacks: list[StackSample], roots: tuple[str, ...],
                       what: str) -> None:
    """The leaf-most application box on each stack's path is the frame the analysis charges."""
    checked = 0
    for sample in stacks:
        path = (ROOT_NAME, *(frame_label(f) for f in sample.frames))
        if path not in view:
            continue  # merged into "other" by the dashboard
        user = user_frame(sample.frames, roots)
        assert leaf_most_app(view, path) == (None if user is None else user.label()), (what, path)
        checked += 1
    assert checked, what


def assert_flag_locations(view: View, flags: Sequence[Flag], what: str) -> int:
    """A flag's location is an application frame in every box that draws it."""
    seen = 0
    for flag in flags:
        where = flag.location
        if not where:
            continue
        label = Frame(where.function, where.file, where.line).label()
        for path, box in view.items():
            if path[-1] == label:
                assert box.kind == "app", (what, flag.kind, path)
                seen += 1
    return seen


def export_svg(reader: SessionReader, spec: SliceSpec) -> tuple[list[StackSample], str]:
    samples = select_samples(reader, spec)
    profile = session_profile(reader, samples, "consistency", None, threads=False)
    return samples, SvgRenderer().render(profile)


def slices(report: Report) -> Iterator[tuple[str, SliceSpec, SampleSlice]]:
    """The same slice as the CLI and the dashboard name it: all samples, on CPU, and each
    endpoint's (on CPU and waiting)."""
    yield "all", SliceSpec(), SampleSlice(include_blocked=True, include_idle=True)
    yield ("on CPU", SliceSpec(idle="exclude", blocked="exclude"), SampleSlice())
    for endpoint in report.endpoints:
        if endpoint.cpu_share > 0:
            route = endpoint.route
            yield (route, SliceSpec(route=route, idle="exclude"),
                   SampleSlice(endpoint=route, include_blocked=True))


def test_report_dashboard_and_exports_agree(session: Path) -> None:
    with SessionReader(session) as reader:
        data = load_session(reader)
        report = analyse(data)
        roots = app_roots(data.routes)
        dashboard = DashboardSession(session)
        try:
            # the report's CPU shares are the dashboard's, endpoint by endpoint
            shares = dashboard.cpu_shares(None)
            assert {e.route: e.cpu_share for e in report.endpoints} == {
                e.route: round(shares.get(e.route, 0.0), 4) for e in report.endpoints}
            flagged = 0
            for what, spec, flt in slices(report):
                figure, _, _, total = _flame(dashboard, flt, "", None)
                drawn = dashboard_view(figure)
                samples, svg = export_svg(reader, spec)
                exported = svg_view(svg)
                assert total == sum(s.count for s in samples) == exported[(ROOT_NAME,)].value
                if what == "all":
                    assert total == report.samples.total
                assert_same_view(drawn, exported, what)
                # the dashboard's download button exports what the dashboard shows
                assert svg_view(export_slice(dashboard, flt, "svg", "t").content) == exported
                for view in (drawn, exported):
                    assert_attribution(view, samples, roots, what)
                    flagged += assert_flag_locations(view, report.flags, what)
                if what == "all":
                    page = HtmlRenderer().render(session_profile(reader, samples, "t", report,
                                                                 threads=False))
                    assert svg_view(page) == exported
                    assert_cpu_column(page, report)
            # the report's own page draws its active samples as the dashboard does
            figure, _, _, _ = _flame(dashboard, SampleSlice(include_blocked=True), "", None)
            page = render_html(report, data)
            assert_same_view(dashboard_view(figure), svg_view(page), "report page")
            assert_cpu_column(page, report)
        finally:
            dashboard.close()
    assert flagged or not any(f.location for f in report.flags)


def assert_cpu_column(page: str, report: Report) -> None:
    """The page's endpoint table shows the report's CPU shares."""
    rows = re.findall(r"<tr><td>([^<]*)</td>(?:<td>[^<]*</td>)*<td>([^<]*)</td></tr>", page)
    shown = {html.unescape(route): share for route, share in rows}
    for endpoint in report.endpoints:
        assert shown[endpoint.route] == f"{100 * endpoint.cpu_share:.1f}%"


def test_the_disputed_frames_have_one_kind_everywhere(tmp_path: Path) -> None:
    """The frames the views used to judge differently, each with the kind the analysis's
    rule gives it, in the dashboard and in the export."""
    path = sessions.write_session(tmp_path / "s.sqlite", ROWS, ROUTES)
    expected = {ENTRY: "library", sessions.LOOP: "stdlib", MIDDLEWARE: "library",
                READ_ITEM: "app", LOAD_ROWS: "app", GENERATED: "stdlib", IMPORT: "library",
                sessions.SELECT: "stdlib"}
    dashboard = DashboardSession(path)
    try:
        flt = SampleSlice(include_blocked=True, include_idle=True)
        drawn = dashboard_view(_flame(dashboard, flt, "", None)[0])
        exported = svg_view(export_slice(dashboard, flt, "svg", "t").content)
    finally:
        dashboard.close()
    for view in (drawn, exported):
        kinds = {path[-1]: box.kind for path, box in view.items()}
        assert {f: kinds[f.label()] for f in expected} == expected
