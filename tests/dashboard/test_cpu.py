"""The dashboard's CPU figures are the report's: measured CPU, never a sleep counted as CPU."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from plotly.utils import PlotlyJSONEncoder

from apiscope.analysis.context import build_context, load_session
from apiscope.analysis.cpu import cpu_shares
from apiscope.analysis.report import build_report
from apiscope.analysis.thresholds import Thresholds
from apiscope.dashboard.callbacks import slice_label, slice_of
from apiscope.dashboard.components import process_cards
from apiscope.dashboard.data import DashboardSession, ProcessCard
from apiscope.dashboard.samples import BLOCK
from apiscope.exporters.tree import FlameNode, walk
from apiscope.store import SessionReader
from tests.analysis.test_measured import bento_labelled
from tests.dashboard.cpu_session import PID, RATE, SECONDS, T0, write_cpu_session
from tests.dashboard.synthetic import START, write_session


@pytest.fixture(scope="module")
def cpu_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cpu_session(tmp_path_factory.mktemp("cpu") / "cpu.sqlite")


@pytest.fixture(scope="module")
def cpu_data(cpu_file: Path) -> DashboardSession:
    return DashboardSession(cpu_file)


@pytest.fixture(scope="module")
def report(cpu_file: Path) -> dict[str, object]:
    with SessionReader(cpu_file) as reader:
        return build_report(reader).to_json()


def _functions(tree: FlameNode) -> set[str]:
    return {node.function for _, node in walk(tree)}


def test_cpu_shares_are_the_reports_and_a_sleep_costs_nothing(
        cpu_data: DashboardSession, report: dict[str, object]) -> None:
    ours = {r.stats.endpoint: r.cpu_share for r in cpu_data.endpoint_rows(None)}
    theirs = {e["route"]: e["cpu_share"] for e in report["endpoints"]}  # type: ignore[attr-defined]
    assert set(theirs) == {"GET /sleep", "GET /compute"}
    for route, share in theirs.items():
        assert round(ours[route] or 0.0, 4) == share
    assert (ours["GET /sleep"] or 0.0) < 0.01  # 80 of its 82 samples a window were asleep
    assert (ours["GET /compute"] or 0.0) > 0.6


def test_cpu_a_routes_thread_waited_for_in_a_c_call_is_its_share_as_in_the_report(
        tmp_path: Path) -> None:
    """argon2's lanes (threads Python does not run) used 0.2 s a window while the sleeping
    route's pool thread waited in the call: the route's, in the dashboard as in the report."""
    path = write_cpu_session(tmp_path / "lanes.sqlite", lanes=0.2)
    with SessionReader(path) as reader:
        built = build_report(reader)
    theirs = {e.route: e.cpu_share for e in built.endpoints}
    dashboard = DashboardSession(path)
    ours = {r.stats.endpoint: r.cpu_share for r in dashboard.endpoint_rows(None)}
    for route, share in theirs.items():
        assert round(ours[route] or 0.0, 4) == share
    [card] = dashboard.process_cards()
    [proc] = built.processes
    assert proc.native_cpu_share and round(card.native_cpu_share or 0.0, 4) == \
        proc.native_cpu_share
    # 0.23 of about 0.8 s in the even windows (0.003 without the lanes); in the odd ones the
    # aiosqlite thread, shown working, was not read: what the process used beyond the threads
    # read is its as much as the lanes', and no one's.
    assert 0.1 < theirs["GET /sleep"] < 0.2


@pytest.mark.parametrize("offsets", [(0.0, 20.0), (3.0, 11.5), (7.2, 7.9), (15.0, 40.0)])
def test_cpu_shares_over_a_range_are_the_reports_formula_on_that_range(
        cpu_file: Path, cpu_data: DashboardSession, offsets: tuple[float, float]) -> None:
    since, until = T0 + offsets[0], T0 + offsets[1]
    with SessionReader(cpu_file) as reader:
        data = load_session(reader)

    def inside(window: float) -> bool:
        return since <= window < until

    trimmed = replace(data, samples=[(w, s) for w, s in data.samples if inside(w)],
                      thread_cpu=[c for c in data.thread_cpu if inside(c.window)],
                      process_cpu=[c for c in data.process_cpu if inside(c.window)])
    expected = cpu_shares(build_context(trimmed, Thresholds()))
    got = cpu_data.cpu_shares((since, until))
    assert got.keys() == expected.keys()
    for endpoint, share in expected.items():
        assert got[endpoint] == pytest.approx(share, abs=1e-9)


def test_reader_shares_each_threads_measured_cpu_over_its_running_samples(
        cpu_file: Path) -> None:
    with SessionReader(cpu_file) as reader:
        rows = reader.running_cpu(since=T0 + 4, until=T0 + 5)  # one window: i = 4
        loop = {r.stack_id: r.seconds for r in rows if r.tid == 1}
        assert sum(loop.values()) == pytest.approx(0.9 * 52 / RATE)
        # the aiosqlite thread is not measured in odd windows: 1 / rate per sample there
        odd = reader.running_cpu(since=T0 + 5, until=T0 + 6)
        assert [r.seconds for r in odd if r.tid == 3] == pytest.approx([3 / RATE])
        assert reader.process_cpu_seconds(T0 + 4, T0 + 5)[PID] == pytest.approx(
            0.9 * 52 / RATE + 0.004 + 0.001 + 0.03)
        assert reader.measures_thread_cpu() and reader.measures_process_cpu()


def test_process_card_shows_the_reports_server_share(cpu_data: DashboardSession,
                                                     report: dict[str, object]) -> None:
    from apiscope.dashboard.components import process_cards

    expected = {p["pid"]: p["server_cpu_share"]
                for p in report["processes"]}  # type: ignore[attr-defined]
    card = next(c for c in cpu_data.process_cards() if c.pid == PID)
    assert expected[PID] is not None and expected[PID] > 0
    assert round(card.server_cpu_share or 0.0, 4) == expected[PID]
    shown = str(process_cards([card]))
    assert "server's own work" in shown and f"{100 * expected[PID]:.1f}% of its CPU" in shown


def test_default_flamegraph_is_on_cpu_and_the_toggle_adds_the_sleep(
        cpu_data: DashboardSession) -> None:
    default = slice_of(None, role="handler")  # the flamegraph page as it opens
    assert "sleep" not in _functions(cpu_data.flame(default))
    assert {"crunch", "nap", "serialize_response"} <= _functions(cpu_data.flame(default))
    waiting = slice_of(None, role="handler", toggles=["blocked"])
    assert "sleep" in _functions(cpu_data.flame(waiting))
    assert cpu_data.flame(waiting).value == cpu_data.flame(default).value + 80 * SECONDS
    assert "select" not in _functions(cpu_data.flame(waiting))  # idle stays a toggle of its own
    idle = slice_of(None, role="handler", toggles=["blocked", "idle"])
    assert {"select", "sleep"} <= _functions(cpu_data.flame(idle))
    assert slice_label(default) == "on CPU only"
    assert slice_label(idle) == "on CPU + waiting + idle"
    # the endpoint page: the sleeping handler shows its sliver of CPU, the sleep on request
    nap = slice_of(None, endpoint="GET /sleep", role="handler")
    assert cpu_data.flame(nap).value == 2 * SECONDS
    assert "sleep" in _functions(cpu_data.flame(replace(nap, include_blocked=True)))


def test_old_sessions_count_running_samples_as_the_report_does(tmp_path: Path) -> None:
    """Without the kernel's CPU time, the report's fallback: 1 / rate per RUNNING sample over
    all RUNNING samples; and a live refresh adds windows to a partial block exactly."""
    path = write_session(tmp_path / "old.sqlite", seconds=7, window_s=0.5, flags=False)
    data = DashboardSession(path)
    write_session(path, seconds=10, start=START + 7, window_s=0.5, flags=False, seed=5)
    data.refresh()
    assert data.samples.last_window_id > BLOCK  # the refresh filled a block and began one
    with SessionReader(path) as reader:
        report = build_report(reader)
    ours = data.cpu_shares(None)
    for endpoint in report.endpoints:
        assert round(ours.get(endpoint.route, 0.0), 4) == endpoint.cpu_share
    assert data.server_cpu_shares()  # BLOCKED samples: the sampler told on-CPU from off-CPU
    data.close()


def test_process_card_shows_the_server_and_native_threads_shares() -> None:
    card = ProcessCard(7, "worker", "gunicorn", None, 40.0, 35.0, 120.0, 130.0, 12, 30,
                       server_cpu_share=0.069, native_cpu_share=0.639)
    text = json.dumps(process_cards([card])[0].to_plotly_json(), cls=PlotlyJSONEncoder)
    assert "server's own work" in text and "6.9% of its CPU" in text
    assert "native threads" in text and "63.9% of its CPU" in text
    assert "event loop lag" not in text and "garbage collector" not in text  # not measured
    from apiscope.report import GcPauses, LoopLag

    looped = replace(card, loop_lag=LoopLag(0.7, 114.0), gc_pauses=GcPauses(43, 10.94, 1008.0))
    text = json.dumps(process_cards([looped])[0].to_plotly_json(), cls=PlotlyJSONEncoder)
    assert "p50 0.7 ms, p99 114 ms" in text
    assert "held the loop 43 times, 10.94 s (longest 1008 ms)" in text
    quiet = replace(card, native_cpu_share=0.0)
    assert "native threads" not in json.dumps(process_cards([quiet])[0].to_plotly_json(),
                                              cls=PlotlyJSONEncoder)


def test_one_handler_of_several_endpoints_is_told_apart_as_in_the_report(tmp_path: Path) -> None:
    """BentoML's one wrapper for every API: the dashboard ties the service's method to its API
    from the agent's route-labelled stacks, as the report does (it shared the method's CPU out
    among the APIs)."""
    path = bento_labelled().write(tmp_path / "bento.sqlite")
    data = DashboardSession(path)
    with SessionReader(path) as reader:
        report = build_report(reader)
    ours = data.cpu_shares(None)
    shares = {endpoint.route: endpoint.cpu_share for endpoint in report.endpoints}
    assert shares["POST /proba"] > 2 * shares["POST /keywords"]
    for route, share in shares.items():
        assert round(ours.get(route, 0.0), 4) == share
    data.close()
