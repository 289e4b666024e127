"""The typed report and its JSON: `Report.to_json` writes the contract's keys in the contract's
order, and `Report.from_json` reads back exactly what it wrote."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from apiscope.analysis.report import build_report
from apiscope.cli.main import main
from apiscope.model import LoopLagSample, SampleState
from apiscope.report import ProcessFailures, Report
from tests.analysis.builder import (
    LOOP_TID,
    PID,
    T0,
    Spec,
    app,
    healthy,
    idle_loop,
    on_loop,
    request,
    sample,
    write_and_open,
)

# The contract's keys, in its order; then what the report adds after them.
TOP = ["apiscope_report", "target", "window", "samples", "endpoints", "processes", "flags"]
TARGET = ["pids", "command", "server", "python"]
TARGET_ADDED = ["detach_failed", "failures"]
WINDOW = ["start", "end", "seconds", "gaps"]
SAMPLES = ["total", "rate_hz", "errors"]
SAMPLES_ADDED = ["cpu_measured", "windows_dropped", "windows_failed", "errors_while_injecting",
                 "effective_rate_hz", "max_overhead_percent", "overhead_percent"]
ENDPOINT = ["route", "handler", "count", "rps", "p50_ms", "p95_ms", "p99_ms", "max_ms",
            "error_rate", "cpu_share"]
# The contract's process keys, with the host's run-queue share and the native threads' CPU
# share before the loop's lag, and the garbage collector's passes of the loop after it.
PROCESS = ["pid", "cpu_percent_avg", "rss_mb_max", "rss_mb_slope_per_min", "threads_max",
           "fds_max", "server_cpu_share", "runqueue_share", "native_cpu_share", "loop_lag_ms",
           "loop_gc_pauses", "exited_after_seconds"]
FLAG = ["kind", "severity", "route", "location", "evidence", "metric", "suggestion"]
LOCATION = ["file", "line", "function"]


def eventful() -> Spec:
    """A session with something in every part of the report: a blocked loop and a slow
    route (flags), the loop's lag, measured CPU, a gap, lost windows, a budget and failures."""
    spec = healthy()
    spec.per_window[0] = idle_loop(20)
    spec.per_window.append(sample(LOOP_TID, on_loop(app("summary", 87)), 40,
                                  SampleState.BLOCKED))
    spec.requests += [request("GET /reports/summary", T0 + i * 0.5, 205.0) for i in range(60)]
    spec.measured = True
    spec.loop_lag = [LoopLagSample(T0 + i, PID, 10, 0.4, 12.0, 15.0) for i in range(20)]
    spec.meta = {
        "gaps": [{"start": T0 + 5, "end": T0 + 7.5, "reason": "target stopped"}],
        "windows_dropped": 2, "windows_failed": 1, "max_overhead": 2.0, "overhead": 0.4,
        "samples_errors": 3, "samples_paused": 41,
        "target_failures": [{"pid": PID, "windows_dropped": 2, "windows_failed": 1,
                             "window_failure": "ValueError: no trace"}],
        # as earlier versions stored a failed detach: alone, not among the failures
        "detach_failed": [{"pid": 4250, "reason": "gdb: ptrace refused",
                           "retry": "apiscope detach 4250"}],
    }
    return spec


@pytest.fixture(params=["healthy", "eventful"])
def report(request: pytest.FixtureRequest, tmp_path: Path) -> Report:
    spec = healthy() if request.param == "healthy" else eventful()
    with write_and_open(spec, tmp_path / "s.sqlite") as reader:
        return build_report(reader)


def test_the_json_reads_back_as_the_same_report(report: Report) -> None:
    data = report.to_json()
    assert Report.from_json(data).to_json() == data
    assert Report.from_json(data) == report
    assert Report.from_json(json.loads(json.dumps(data))).to_json() == data  # through a file


def ordered(keys: list[str], contract: list[str], added: Sequence[str] = ()) -> None:
    """`keys` are the contract's, in its order, then some of `added`, in their order."""
    assert keys[:len(contract)] == contract
    rest = keys[len(contract):]
    assert rest == [k for k in added if k in rest]


def test_the_json_keys_are_the_contracts(report: Report) -> None:
    data: dict[str, Any] = report.to_json()
    ordered(list(data), TOP)
    assert data["apiscope_report"] == 1
    ordered(list(data["target"]), TARGET, TARGET_ADDED)
    ordered(list(data["window"]), WINDOW)
    ordered(list(data["samples"]), SAMPLES, SAMPLES_ADDED)
    assert data["endpoints"] and data["processes"]
    for endpoint in data["endpoints"]:
        ordered(list(endpoint), ENDPOINT)
    for process in data["processes"]:
        ordered(list(process), PROCESS)
        assert process["loop_lag_ms"] is None or list(process["loop_lag_ms"]) == ["p50", "p99"]
    for flag in data["flags"]:
        ordered(list(flag), FLAG)
        assert flag["location"] is None or list(flag["location"]) == LOCATION


def test_every_part_is_there_when_something_happened(tmp_path: Path) -> None:
    with write_and_open(eventful(), tmp_path / "s.sqlite") as reader:
        data = build_report(reader).to_json()
    assert list(data["target"]) == TARGET + TARGET_ADDED
    assert list(data["samples"]) == SAMPLES + SAMPLES_ADDED
    assert data["samples"]["errors"] == 3 and data["samples"]["errors_while_injecting"] == 41
    assert data["window"]["gaps"] == [{"start": "2026-11-18T11:06:45Z",
                                       "end": "2026-11-18T11:06:47Z", "seconds": 2.5,
                                       "reason": "target stopped"}]
    assert data["target"]["failures"] == [
        {"pid": PID, "windows_dropped": 2, "windows_failed": 1,
         "window_failure": "ValueError: no trace"},
        {"pid": 4250, "detach_failed": "gdb: ptrace refused", "retry": "apiscope detach 4250"}]
    assert data["processes"][0]["loop_lag_ms"] == {"p50": 0.4, "p99": 12.0}
    assert {f["kind"] for f in data["flags"]} >= {"event_loop_blocked", "slow_endpoint"}


def test_the_cli_writes_the_same_json(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = eventful().write(tmp_path / "s.sqlite")
    assert main(["report", str(path), "--format", "json"]) == 0
    written = json.loads(capsys.readouterr().out)
    with write_and_open(eventful(), tmp_path / "again.sqlite") as reader:
        assert written == build_report(reader).to_json()
    assert Report.from_json(written).to_json() == written


def test_a_process_failure_lists_only_what_happened() -> None:
    entry = ProcessFailures(7, windows_failed=1, agent_error="boom")
    assert entry.to_json() == {"pid": 7, "windows_failed": 1, "agent_error": "boom"}
    assert ProcessFailures.from_json(entry.to_json()) == entry


def test_other_json_is_not_read_as_a_report() -> None:
    with pytest.raises(ValueError, match="apiscope_report"):
        Report.from_json({"apiscope_diff": 1})
