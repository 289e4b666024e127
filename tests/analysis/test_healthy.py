from __future__ import annotations

from pathlib import Path

from apiscope.analysis.report import build_report
from tests.analysis.builder import healthy, write_and_open


def test_busy_healthy_app_gets_no_flags(tmp_path: Path) -> None:
    with write_and_open(healthy(), tmp_path / "s.sqlite") as reader:
        report = build_report(reader)
    assert report.flags == ()
    by_route = {e.route: e for e in report.endpoints}
    assert by_route["GET /items/{item_id}"].count == 3000
    p95 = by_route["GET /items/{item_id}"].p95_ms
    assert p95 is not None and p95 < 10
    assert by_route["GET /items/{item_id}"].max_ms == 900.0


def test_healthy_app_sampled_without_activity_probe_gets_no_flags(tmp_path: Path) -> None:
    with write_and_open(healthy(probe=False), tmp_path / "s.sqlite") as reader:
        assert build_report(reader).flags == ()


def test_idle_helper_threads_do_not_dilute_cpu_share(tmp_path: Path) -> None:
    with write_and_open(healthy(), tmp_path / "s.sqlite") as reader:
        report = build_report(reader)
    by_route = {e.route: e for e in report.endpoints}
    # active = the loop's 40 non-waiting + the workers' 10 busy samples per window; the three
    # aiosqlite threads' 300 blocked samples per window are not in the denominator.
    assert by_route["GET /items/{item_id}"].cpu_share == round(8 / 50, 4)
    assert by_route["POST /items"].cpu_share == round(10 / 50, 4)
    assert by_route["GET /health"].cpu_share == round(4 / 50, 4)
