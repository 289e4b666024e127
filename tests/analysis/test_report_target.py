"""The report's `target`: what went wrong per process while collecting, read back from the
session by a later `apiscope report`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apiscope.cli.main import main
from tests.analysis.builder import healthy

FAILURES = [
    {"pid": 4242, "windows_dropped": 1, "windows_failed": 2,
     "window_failure": "ValueError: no trace", "sampler_retries": 1},
    {"pid": 4243, "agent_errors": 3, "agent_error": "KeyError: 'route'"},
    {"pid": 4244, "detach_failed": "gdb: ptrace refused", "retry": "apiscope detach 4244"},
    {"pid": 4245, "no_agent": "process 4245 did not run the agent's loader within 15 s. Its"
                              " main thread is at `acquire` (lock.py:3)"},
]
DETACH_FAILED = [{"pid": 4244, "reason": "gdb: ptrace refused", "retry": "apiscope detach 4244"}]


def report(path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["report", str(path), "--format", fmt]) == 0
    out: str = capsys.readouterr().out
    return out


def test_the_json_report_lists_each_process_failures(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    spec = healthy()
    spec.meta = {"target_failures": FAILURES, "detach_failed": DETACH_FAILED}
    target = json.loads(report(spec.write(tmp_path / "s.sqlite"), "json", capsys))["target"]
    assert target["pids"] == [4242] and target["command"] == "uvicorn shop.main:app"
    assert target["detach_failed"] == DETACH_FAILED  # the key earlier reports had, unchanged
    assert target["failures"] == FAILURES


def test_the_text_report_tells_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = healthy()
    spec.meta = {"target_failures": FAILURES, "detach_failed": DETACH_FAILED}
    text = report(spec.write(tmp_path / "s.sqlite"), "text", capsys)
    assert "Collection failures" in text
    assert "PID 4242: sampling windows lost: 1 not written by py-spy, 2 not readable:" \
           " ValueError: no trace" in text
    assert "PID 4243: the agent answered 3 pull(s) with an error: KeyError: 'route'" in text
    assert "PID 4244: the agent could not be detached (gdb: ptrace refused); retry with:" \
           " apiscope detach 4244" in text
    assert "PID 4245: no requests recorded, no agent runs in it: process 4245 did not run the" \
           " agent's loader within 15 s. Its main thread is at `acquire` (lock.py:3)" in text


def test_a_session_that_stored_only_the_failed_detach_still_shows_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = healthy()
    spec.meta = {"detach_failed": DETACH_FAILED}
    target = json.loads(report(spec.write(tmp_path / "s.sqlite"), "json", capsys))["target"]
    assert target["failures"] == [FAILURES[2]]


def test_a_clean_session_has_no_failures_key(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = healthy().write(tmp_path / "s.sqlite")
    assert "failures" not in json.loads(report(path, "json", capsys))["target"]
    assert "Collection failures" not in report(path, "text", capsys)
