"""`apiscope report` through the real entry point, on synthetic session files."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from apiscope.cli.main import main
from apiscope.model import SampleState
from tests.analysis.builder import LOOP_TID, T0, app, healthy, idle_loop, on_loop, request, sample

ENDPOINT_KEYS = {"route", "handler", "count", "rps", "p50_ms", "p95_ms", "p99_ms", "max_ms",
                 "error_rate", "cpu_share"}
# The contract's process keys, the host's run-queue share and the native threads' CPU share
# (the report may add figures).
PROCESS_KEYS = {"pid", "cpu_percent_avg", "rss_mb_max", "rss_mb_slope_per_min", "threads_max",
                "fds_max", "server_cpu_share", "loop_lag_ms", "runqueue_share",
                "native_cpu_share", "loop_gc_pauses", "exited_after_seconds"}
FLAG_KEYS = {"kind", "severity", "route", "location", "evidence", "metric", "suggestion"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def healthy_session(tmp_path: Path) -> Path:
    return healthy().write(tmp_path / "healthy.sqlite")


@pytest.fixture
def blocked_session(tmp_path: Path) -> Path:
    spec = healthy()
    spec.per_window[0] = idle_loop(20)
    spec.per_window.append(sample(LOOP_TID, on_loop(app("summary", 87)), 40,
                                  SampleState.BLOCKED))
    spec.requests += [request("GET /reports/summary", T0 + i * 0.5, 205.0) for i in range(60)]
    return spec.write(tmp_path / "blocked.sqlite")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_report_follows_the_contract(blocked_session: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["report", str(blocked_session), "--format", "json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"apiscope_report", "target", "window", "samples", "endpoints",
                           "processes", "flags"}
    assert report["apiscope_report"] == 1
    assert report["target"] == {"pids": [4242], "command": "uvicorn shop.main:app",
                                "server": "uvicorn", "python": "3.11.7"}
    assert ISO.match(report["window"]["start"]) and ISO.match(report["window"]["end"])
    assert report["window"]["seconds"] == 30.0
    assert report["samples"]["rate_hz"] == 100 and report["samples"]["errors"] == 0
    assert report["samples"]["total"] == 30 * (100 + 200 + 300)  # loop, 2 workers, 3 idle
    for endpoint in report["endpoints"]:
        assert set(endpoint) == ENDPOINT_KEYS
        assert " " in endpoint["route"] and "{" not in endpoint["route"].split(" ")[0]
    assert {p["pid"] for p in report["processes"]} == {4242}
    assert set(report["processes"][0]) == PROCESS_KEYS
    for flag in report["flags"]:
        assert set(flag) == FLAG_KEYS
        assert flag["severity"] in ("low", "medium", "high")
        assert flag["location"] is None or set(flag["location"]) == {"file", "line", "function"}
    kinds = {f["kind"] for f in report["flags"]}
    assert "event_loop_blocked" in kinds


def test_text_report_is_readable(blocked_session: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["report", str(blocked_session)], capsys)
    assert code == 0
    assert "GET /items/{item_id}" in out and "Endpoints" in out and "Processes" in out
    assert "[HIGH] event_loop_blocked GET /reports/summary at /srv/shop/shop/main.py:87" in out
    assert "fix: " in out
    code, out, _ = run(["report", str(healthy().write(tmp_path / "h.sqlite"))], capsys)
    assert "Flags (0)" in out


def test_html_report_is_one_standalone_file(blocked_session: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "report.html"
    code, out, err = run(["report", str(blocked_session), "--format", "html", "-o", str(page)],
                         capsys)
    assert code == 0 and out == "" and str(page) in err
    text = page.read_text()
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert "GET /reports/summary" in text and "event_loop_blocked" in text and "<svg" in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing from the network


@pytest.mark.parametrize(("level", "expected"), [("high", 3), ("medium", 3), ("low", 3)])
def test_fail_on_exits_3_when_a_flag_reaches_the_level(
        blocked_session: Path, level: str, expected: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["report", str(blocked_session), "--fail-on", level], capsys)
    assert code == expected
    assert "event_loop_blocked" in out  # the report is still printed
    assert "at or above" in err and "Traceback" not in err


def test_fail_on_passes_a_healthy_session(healthy_session: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(["report", str(healthy_session), "--fail-on", "low"], capsys)
    assert code == 0


def test_fail_on_ignores_flags_below_the_level(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    spec = healthy()
    spec.requests += [request("GET /health", T0 + 5 + i * 0.1, 250.0) for i in range(300)]
    path = spec.write(tmp_path / "low.sqlite")
    code, out, _ = run(["report", str(path), "--format", "json"], capsys)
    assert [(f["kind"], f["severity"]) for f in json.loads(out)["flags"]] == [
        ("slow_endpoint", "low")]
    assert run(["report", str(path), "--fail-on", "medium"], capsys)[0] == 0
    assert run(["report", str(path), "--fail-on", "low"], capsys)[0] == 3


def test_slo_and_config_thresholds(healthy_session: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["report", str(healthy_session), "--format", "json", "--slo-ms", "5"],
                       capsys)
    assert "slow_endpoint" in {f["kind"] for f in json.loads(out)["flags"]}
    config = tmp_path / "apiscope.toml"
    config.write_text("[thresholds]\nslo_ms = 5\nerror_share = [0.0001, 0.5, 0.9]\n"
                      "error_min_count = 1\n")
    code, out, _ = run(["report", str(healthy_session), "--format", "json", "--config",
                        str(config)], capsys)
    kinds = {f["kind"] for f in json.loads(out)["flags"]}
    assert {"slow_endpoint", "error_rate"} <= kinds
    config.write_text("[thresholds]\nno_such_threshold = 1\n")
    code, _, err = run(["report", str(healthy_session), "--config", str(config)], capsys)
    assert code == 2 and "no_such_threshold" in err
    config.write_text("[thresholds\n")
    code, _, err = run(["report", str(healthy_session), "--config", str(config)], capsys)
    assert code == 2 and "not valid TOML" in err


def test_missing_and_foreign_session_files_exit_2(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["report", str(tmp_path / "nope.sqlite")], capsys)
    assert code == 2 and "no session file" in err and "Traceback" not in err
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    code, _, err = run(["report", str(foreign)], capsys)
    assert code == 2 and "not an apiscope session" in err
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database at all" * 100)
    code, _, err = run(["report", str(text)], capsys)
    assert code == 2 and "not an apiscope session" in err


def test_write_report_by_suffix(blocked_session: Path, tmp_path: Path) -> None:
    from apiscope.cli.report import write_report
    from apiscope.errors import UsageError

    write_report(blocked_session, tmp_path / "r.json", slo_ms=300.0)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["apiscope_report"] == 1
    write_report(blocked_session, tmp_path / "r.html")
    assert "<svg" in (tmp_path / "r.html").read_text()
    with pytest.raises(UsageError):
        write_report(blocked_session, tmp_path / "r.txt")


def test_report_reads_the_project_pyproject(healthy_session: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[tool.apiscope.thresholds]\nslo_ms = 1\n")
    monkeypatch.chdir(project)
    _, out, _ = run(["report", str(healthy_session), "--format", "json"], capsys)
    assert "slow_endpoint" in {f["kind"] for f in json.loads(out)["flags"]}
    config = tmp_path / "loose.toml"  # an explicit --config replaces the project's table
    config.write_text("[thresholds]\nslo_ms = 10000\n")
    _, out, _ = run(["report", str(healthy_session), "--format", "json", "--config",
                     str(config)], capsys)
    assert "slow_endpoint" not in {f["kind"] for f in json.loads(out)["flags"]}
