"""`apiscope diff` through the real entry point, on two synthetic sessions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apiscope.cli.main import main
from apiscope.model import SampleState
from tests.analysis.builder import LOOP_TID, T0, app, healthy, idle_loop, on_loop, request, sample


def sessions(tmp_path: Path) -> tuple[Path, Path]:
    """base: summary blocks the loop and /health suffers; new: summary fixed."""
    base = healthy()
    base.per_window[0] = idle_loop(20)
    base.per_window.append(sample(LOOP_TID, on_loop(app("summary", 87)), 40,
                                  SampleState.BLOCKED))
    base.requests += [request("GET /reports/summary", T0 + i * 0.5, 205.0) for i in range(60)]
    new = healthy(seed=2)
    new.requests += [request("GET /reports/summary", T0 + i * 0.5, 6.0) for i in range(60)]
    return base.write(tmp_path / "base.sqlite"), new.write(tmp_path / "new.sqlite")


def test_diff_json_lists_changes_and_resolved_flags(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    base, new = sessions(tmp_path)
    assert main(["diff", str(base), str(new), "--format", "json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["apiscope_diff"] == 1
    by_route = {e["route"]: e for e in diff["endpoints"]}
    summary = by_route["GET /reports/summary"]
    assert summary["status"] == "changed"
    assert summary["base"]["p95_ms"] == 205.0 and summary["new"]["p95_ms"] == 6.0
    assert summary["change"]["p95_ms"]["delta"] == -199.0
    assert {f["kind"] for f in diff["flags"]["resolved"]} == {"event_loop_blocked",
                                                              "slow_endpoint"}
    assert diff["flags"]["appeared"] == [] and diff["flags"]["kept"] == []


def test_diff_text_and_reverse_direction(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    base, new = sessions(tmp_path)
    assert main(["diff", str(new), str(base)]) == 0
    out = capsys.readouterr().out
    assert "GET /reports/summary: p50 6.0 -> 205.0 ms" in out
    assert "New flags (2)" in out and "[HIGH] event_loop_blocked GET /reports/summary" in out
    assert "Resolved flags (0)" in out


def test_diff_svg_is_a_differential_flamegraph(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    base, new = sessions(tmp_path)
    out_file = tmp_path / "diff.svg"
    assert main(["diff", str(base), str(new), "--format", "svg", "-o", str(out_file)]) == 0
    svg = out_file.read_text()
    assert "<svg" in svg and "summary" in svg


def test_diff_of_a_foreign_file_exits_2(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    base, _ = sessions(tmp_path)
    assert main(["diff", str(base), str(tmp_path / "missing.sqlite")]) == 2
    assert "no session file" in capsys.readouterr().err


def test_flags_without_route_are_matched_by_function() -> None:
    from apiscope.analysis.diff import diff_reports
    from apiscope.report import Report

    def flag(function: str, line: int) -> dict[str, object]:
        return {"kind": "event_loop_blocked", "severity": "high", "route": None,
                "location": {"file": "/app/main.py", "line": line, "function": function},
                "evidence": "e", "metric": {}, "suggestion": "s"}

    def report(*flags: dict[str, object]) -> Report:
        return Report.from_json({
            "apiscope_report": 1, "target": {"command": "x"},
            "window": {"start": "s", "end": "e", "seconds": 1.0},
            "samples": {"total": 0, "rate_hz": 100, "errors": 0}, "endpoints": [],
            "flags": list(flags)})

    diff = diff_reports(report(flag("audit", 15), flag("search", 40)),
                        report(flag("audit", 16))).to_json()
    assert [f["location"]["function"] for f in diff["flags"]["resolved"]] == ["search"]
    assert [f["location"]["line"] for f in diff["flags"]["kept"]] == [16]
    assert diff["flags"]["appeared"] == []


def test_diff_judges_both_sessions_by_the_config(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    base, new = sessions(tmp_path)
    config = tmp_path / "strict.toml"
    config.write_text("[thresholds]\nslo_ms = 1\n")
    assert main(["diff", str(base), str(new), "--format", "json", "--config",
                 str(config)]) == 0
    flags = json.loads(capsys.readouterr().out)["flags"]
    kept = {(f["kind"], f["route"]) for f in flags["kept"]}
    assert ("slow_endpoint", "GET /reports/summary") in kept  # 6 ms is still above 1 ms
    config.write_text("[thresholds]\nslo_ms = -1\n")
    assert main(["diff", str(base), str(new), "--config", str(config)]) == 2
    assert "slo_ms" in capsys.readouterr().err
