"""The dashboard's data functions on synthetic sessions written with the real SessionWriter."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from apiscope.analysis.stats import percentile
from apiscope.dashboard.callbacks import range_from_relayout, slice_of
from apiscope.dashboard.data import DashboardSession
from apiscope.dashboard.exports import FORMATS, export_slice
from apiscope.dashboard.figures import iso, parse_iso
from apiscope.dashboard.flame import MAX_NODES, node_count
from apiscope.dashboard.samples import SampleSlice
from apiscope.flag import Flag
from apiscope.model import RequestRecord, SampleState
from apiscope.store import SessionReader, SessionWriter
from apiscope.store.reader import SampleFilter
from tests.dashboard.synthetic import START, make_requests, write_session


@pytest.fixture(scope="module")
def data(session_file: Path) -> DashboardSession:
    return DashboardSession(session_file)


def test_endpoint_stats_match_the_stored_requests(data: DashboardSession,
                                                  session_file: Path) -> None:
    with SessionReader(session_file) as reader:
        stored = reader.requests()
    rows = {r.stats.endpoint: r for r in data.endpoint_rows(None)}
    by_endpoint = Counter(r.endpoint for r in stored)
    assert {e: r.stats.count for e, r in rows.items()} == dict(by_endpoint)
    orders = sorted(r.duration_ms for r in stored
                    if r.endpoint == "GET /users/{user_id}/orders")
    row = rows["GET /users/{user_id}/orders"].stats
    assert row.p95_ms == pytest.approx(percentile(orders, 0.95))
    assert row.max_ms == max(orders)
    assert row.rps == pytest.approx(len(orders) / data.seconds(None))
    errors = sum(1 for r in stored if r.endpoint == row.endpoint and r.status >= 500)
    assert row.error_rate == pytest.approx(errors / len(orders))
    assert rows["GET /health"].stats.error_rate == 0.0


def test_cpu_share_counts_running_samples_only(data: DashboardSession) -> None:
    # An older session (no kernel CPU time): each RUNNING sample is 1 / rate seconds of CPU,
    # the blocked time.sleep of summary() none; the pool's create_item() runs the most.
    shares = {r.stats.endpoint: r.cpu_share for r in data.endpoint_rows(None)}
    assert max(shares, key=lambda e: shares[e] or 0) == "POST /items"
    assert 0.99 >= sum(s or 0 for s in shares.values()) > 0.8
    assert shares["GET <unmatched>"] == 0.0


@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("offsets", [(0.0, 60.0), (7.25, 33.6), (20.0, 20.4), (59.0, 99.0)])
def test_time_slices_count_exactly_the_samples_sql_finds(data: DashboardSession, session_file: Path,
                                                        offsets: tuple[float, float],
                                                        blocked: bool) -> None:
    since, until = START + offsets[0], START + offsets[1]
    states = frozenset({SampleState.RUNNING} | ({SampleState.BLOCKED} if blocked else set()))
    with SessionReader(session_file) as reader:
        expected: Counter[tuple[object, ...]] = Counter()
        for _, s in reader.samples(SampleFilter(since=since, until=until, states=states)):
            expected[s.frames] += s.count
    counts = data.samples.stack_counts(SampleSlice(since, until, include_blocked=blocked))
    got = Counter({data.samples.frames(sid): c for sid, c in counts.items()})
    assert got == expected


def test_filters_by_process_thread_endpoint_idle_and_gil(data: DashboardSession) -> None:
    everything = sum(data.samples.stack_counts(
        SampleSlice(include_idle=True, include_blocked=True)).values())
    active = sum(data.samples.stack_counts(SampleSlice(include_blocked=True)).values())
    on_cpu = sum(data.samples.stack_counts(SampleSlice()).values())
    one_pid = sum(data.samples.stack_counts(SampleSlice(pid=4101)).values())
    gil = sum(data.samples.stack_counts(SampleSlice(gil_only=True, include_blocked=True))
              .values())
    assert everything > active > on_cpu > one_pid > 0
    assert active > gil > 0
    summary = data.samples.stack_counts(SampleSlice(endpoint="GET /reports/summary"))
    assert summary and all(any(f.function == "summary" for f in data.samples.frames(sid))
                           for sid in summary)
    loop = slice_of(None, thread="4101:41010")
    assert {data.samples.frames(sid)[0].function
            for sid in data.samples.stack_counts(loop)} == {"<module>"}


def test_flame_tree_is_pruned_for_the_browser(tmp_path: Path) -> None:
    session = write_session(tmp_path / "wide.sqlite", seconds=20, variety=4000, rps=5)
    data = DashboardSession(session)
    tree = data.flame(SampleSlice())
    assert node_count(tree) <= MAX_NODES
    assert tree.value == sum(data.samples.stack_counts(SampleSlice()).values())
    # every level still adds up: pruned children went to "other", not away
    assert sum(c.value for c in tree.children.values()) + tree.self_value == tree.value
    rows, total = data.functions(SampleSlice())
    assert total == tree.value and rows[0].self_count >= rows[-1].self_count


def test_top_functions_separate_self_from_total(data: DashboardSession) -> None:
    rows, total = data.functions(SampleSlice(include_blocked=True))
    by_name = {r.function: r for r in rows}
    assert by_name["summary"].total_count > by_name["summary"].self_count > 0
    assert by_name["summary"].kind == "app"
    assert by_name["encode"].kind == "stdlib"
    assert all(r.total_count <= total for r in rows)


def test_live_refresh_reads_only_new_rows(tmp_path: Path) -> None:
    path = tmp_path / "live.sqlite"
    with SessionWriter(path) as writer:
        writer.flush()
        data = DashboardSession(path)
        assert data.endpoint_rows(None) == [] and not data.has_samples()
        first = list(data.version)
        assert data.refresh() == first  # nothing new, same version
        rnd = random.Random(3)
        writer.put_requests(make_requests(rnd, START, 5, 20, [4101]))
        writer.flush()
        assert data.refresh() != first
        before = data.requests.last_id
        writer.put_requests([RequestRecord(4101, START + 6, 12.0, "GET", "/live/{n}", 200)])
        writer.flush()
        data.refresh()
        assert data.requests.last_id == before + 1
        assert "GET /live/{n}" in {r.stats.endpoint for r in data.endpoint_rows(None)}
        data.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_exports_render_the_slice(data: DashboardSession, fmt: str) -> None:
    out = export_slice(data, SampleSlice(endpoint="GET /reports/summary"), fmt, "t")
    if fmt == "folded":
        lines = out.content.splitlines()
        assert lines and all(line.rsplit(" ", 1)[1].isdigit() for line in lines)
        assert all("summary" in line for line in lines)
    elif fmt == "speedscope":
        assert "$schema" in json.loads(out.content)
    elif fmt == "svg":
        assert "<svg" in out.content and "summary" in out.content
    else:
        assert out.content.lstrip().lower().startswith("<!doctype html")
    assert out.filename.startswith("apiscope-flamegraph")


def test_time_axis_values_round_trip() -> None:
    ts = START + 12.345
    assert parse_iso(iso(ts)) == pytest.approx(ts, abs=1e-3)
    assert parse_iso("2026-11-18T08:53:32") == pytest.approx(parse_iso("2026-11-18 08:53:32"))
    assert range_from_relayout({"xaxis.range[0]": iso(ts), "xaxis.range[1]": iso(ts + 5)}) \
        == pytest.approx((ts, ts + 5), abs=1e-3)
    assert range_from_relayout({"xaxis.autorange": True}) is False
    assert range_from_relayout({"autosize": True}) is None


def test_a_session_without_requests_or_samples_is_empty_not_broken(tmp_path: Path) -> None:
    path = write_session(tmp_path / "stacks-only.sqlite", seconds=5, requests=False, flags=False)
    data = DashboardSession(path)
    assert data.endpoint_rows(None) == [] and data.flags() == []
    assert data.has_samples() and data.flame(SampleSlice()).value > 0
    assert data.latency_series("GET /x", None) is not None


def test_flags_come_from_the_analysis_when_none_are_stored(tmp_path: Path) -> None:
    from apiscope.dashboard.analysis import FlagAnalysis
    from tests.support import wait_until

    path = write_session(tmp_path / "no-flags.sqlite", seconds=30, flags=False)
    analysis = FlagAnalysis(path, live=False).start()
    data = DashboardSession(path, analysis=analysis)
    wait_until(lambda: analysis.generation, timeout=60, what="the analysis")
    assert analysis.error is None
    data.refresh()
    kinds = {(f.kind, f.route) for f in data.flags()}
    assert ("event_loop_blocked", "GET /reports/summary") in kinds
    assert ("n_plus_one", "GET /users/{user_id}/orders") in kinds
    assert data.flags()[0].severity == "high"  # ranked by severity
    assert data.flags_pending() is None
    data.close()


def test_flags_the_collector_stores_are_awaited_not_called_healthy(tmp_path: Path) -> None:
    from apiscope.store import SessionWriter

    path = write_session(tmp_path / "s.sqlite", seconds=3, flags=False)
    data = DashboardSession(path)
    data.awaits_stored_flags = True  # as the collector's own dashboard is told
    assert "analysing" in (data.flags_pending() or "")
    with SessionWriter(path) as writer:
        writer.replace_flags([])  # the collector's first analysis found nothing
        writer.flush()
    data.refresh()
    assert data.flags() == [] and data.flags_pending() is None
    data.close()


def test_a_failing_analysis_is_reported_not_raised(tmp_path: Path) -> None:
    from apiscope.dashboard.analysis import FlagAnalysis
    from tests.support import wait_until

    def broken(path: Path) -> list[Flag]:
        raise ValueError("half-written window")

    path = write_session(tmp_path / "s.sqlite", seconds=3, flags=False)
    analysis = FlagAnalysis(path, live=False, analyse=broken).start()
    data = DashboardSession(path, analysis=analysis)
    wait_until(lambda: analysis.generation, timeout=30, what="the analysis")
    data.refresh()
    assert data.flags() == []
    assert "half-written window" in (data.flags_pending() or "")
    data.close()


def test_thread_roles_filter_and_match_the_reports_cpu_basis(data: DashboardSession) -> None:
    other = data.samples.stack_counts(SampleSlice(include_idle=True,
                                                  roles=frozenset({"other"})))
    assert {data.samples.frames(sid)[-2].function for sid in other} == {"run"}  # aiosqlite
    handler = slice_of(None, role="handler")
    assert handler.roles == frozenset({"loop", "worker"})
    assert slice_of(None, thread="4101:41012", role="handler").roles is None


def test_cpu_shares_agree_with_the_report(session_file: Path, data: DashboardSession) -> None:
    from apiscope.analysis.report import build_report

    with SessionReader(session_file) as reader:
        report = build_report(reader)
    ours = {r.stats.endpoint: r.cpu_share for r in data.endpoint_rows(None)}
    for endpoint in report.endpoints:
        assert ours[endpoint.route] == pytest.approx(endpoint.cpu_share, abs=1e-3)


def test_live_refresh_merges_new_windows_into_partial_blocks(tmp_path: Path) -> None:
    path = write_session(tmp_path / "grow.sqlite", seconds=5, window_s=0.5, flags=False)
    data = DashboardSession(path)
    first = data.samples.last_window_id
    write_session(path, seconds=40, start=START + 5, window_s=0.5, flags=False, seed=9)
    data.refresh()
    assert data.samples.last_window_id == first + 80
    active = frozenset({SampleState.RUNNING, SampleState.BLOCKED})
    for since, until in ((None, None), (START + 3, START + 30.5)):
        expected: Counter[tuple[object, ...]] = Counter()
        for _, s in data.reader.samples(SampleFilter(since=since, until=until, states=active)):
            expected[s.frames] += s.count
        counts = data.samples.stack_counts(SampleSlice(since, until, include_blocked=True))
        assert Counter({data.samples.frames(k): c for k, c in counts.items()}) == expected
    data.close()


def test_the_dashboard_s_own_analysis_uses_the_project_thresholds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from apiscope.dashboard.app import create_app
    from tests.support import wait_until

    path = write_session(tmp_path / "s.sqlite", seconds=10, flags=False)
    (tmp_path / "pyproject.toml").write_text("[tool.apiscope.thresholds]\nslo_ms = 0.001\n")
    monkeypatch.chdir(tmp_path)
    data = DashboardSession(path)
    create_app(data, live=False)
    analysis = data.analysis
    assert analysis is not None
    wait_until(lambda: analysis.generation, timeout=60, what="the analysis")
    data.refresh()
    slow = [f for f in data.flags() if f.kind == "slow_endpoint"]
    assert slow and slow[0].metric["slo_ms"] == 0.001
    data.close()


def test_from_handler_cuts_stacks_at_the_handler_or_folds_them() -> None:
    from apiscope.dashboard.flame import FRAMEWORK, from_handler
    from apiscope.model import Frame, RouteInfo

    app_file, lib = "/srv/shop/api.py", "/venv/lib/python3.11/site-packages/"
    route = RouteInfo("GET", "/orders", "shop.api:list_orders", app_file, 10, True)
    server = (Frame("run", lib + "uvicorn/server.py", 67),
              Frame("app", lib + "starlette/routing.py", 76))
    middleware = Frame("timing", "/srv/shop/middleware.py", 5)
    handler = (Frame("list_orders", app_file, 12), Frame("execute", lib + "sqlalchemy/x.py", 9))
    roots = ["/srv/shop"]
    assert from_handler(server + (middleware,) + server + handler, route, roots) == handler
    assert from_handler(server + (middleware,), route, roots) == (middleware,)
    assert from_handler(server, route, roots) == (FRAMEWORK,)


def test_requests_kept_for_n_count_n_times_and_the_overview_says_so(tmp_path: Path) -> None:
    from apiscope.model import StackWindow

    path = tmp_path / "kept.sqlite"
    with SessionWriter(path) as writer:
        writer.set_meta(max_overhead=2.0, requests_kept_every=20)
        writer.put_window(StackWindow(START, START + 8, 5, ()))
        writer.put_requests(
            [RequestRecord(4101, START + i / 10, 2.0, "GET", "/items", 200, weight=20)
             for i in range(10)]
            + [RequestRecord(4101, START + 1.5, 900.0, "GET", "/items", 200),
               RequestRecord(4101, START + 1.6, 3.0, "GET", "/items", 503)])
        writer.flush()
        data = DashboardSession(path)
        data.refresh()
        (row,) = data.endpoint_rows(None)
        assert row.stats.count == 202
        assert row.stats.error_rate == pytest.approx(1 / 202)
        assert row.stats.max_ms == 900.0
        slowest = data.slowest_requests("GET /items", None, limit=5)
        assert [s.request.duration_ms for s in slowest] == [900.0, 3.0, 2.0, 2.0, 2.0]
        assert len({s.request.id for s in slowest}) == 5  # each kept request shown once
        assert data.collection_note() == ("sampling at 5 Hz within a 2% budget;"
                                           " 1 in 20 requests kept (counts are estimates)")
        data.close()


def test_gaps_in_the_sampling_are_shaded_on_the_timeline(tmp_path: Path) -> None:
    import plotly.graph_objects as go

    from apiscope.dashboard.figures import timeline_figure

    path = write_session(tmp_path / "gap.sqlite", seconds=30, requests=False, flags=False)
    data = DashboardSession(path)
    no_gap = timeline_figure(data.samples.active_rate(), None, data.gaps())
    assert data.gaps() == [] and no_gap["layout"]["shapes"] == []
    with SessionWriter(path) as writer:  # as the collector notes a target stopped for 4 s
        writer.set_meta(gaps=[{"start": START + 10, "end": START + 14,
                               "reason": "target stopped"}])
    assert data.gaps() == [(START + 10, START + 14, "target stopped")]
    figure = timeline_figure(data.samples.active_rate(), None, data.gaps())
    (shape,) = figure["layout"]["shapes"]
    assert (parse_iso(shape["x0"]), parse_iso(shape["x1"])) == pytest.approx(
        (START + 10, START + 14), abs=1e-3)
    assert shape["label"]["text"] == "target stopped (4.0 s)"
    assert "shaded: no samples" in figure["layout"]["title"]["text"]
    go.Figure(figure)  # plotly validates every property: the shape's label included
    data.close()
