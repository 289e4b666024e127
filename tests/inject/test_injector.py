"""The injector around the debugger: target checks, method choice, waiting for the status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from apiscope.errors import TargetError
from apiscope.inject import InjectionTimeout, inject_agent, injector, ptrace
from apiscope.inject.gdb import NO_PYTHON
from apiscope.inject.result import wait_for_result
from apiscope.inject.runner import RunResult
from tests.support import require_program


@pytest.fixture
def directory() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="aps-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_missing_pid_is_a_target_error(directory: str) -> None:
    with pytest.raises(TargetError, match="no process with PID 4194000"):
        inject_agent(4194000, directory)


def test_a_process_that_is_not_python_is_refused(directory: str) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(TargetError, match="is not a Python process"):
            inject_agent(sleeper.pid, directory)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_python_314_targets_go_through_remote_exec(directory: str) -> None:
    """The remote_exec path end to end, with the target stood in for by an interpreter that
    runs the script file `sys.remote_exec` would have been given."""
    calls: list[list[str]] = []

    def runner(argv: Sequence[str], timeout: float) -> RunResult:
        calls.append(list(argv))
        script = argv[3].split(", ")[1].rstrip(")").strip("'")
        assert Path(script).stat().st_mode & 0o777 == 0o600
        done = subprocess.run([sys.executable, "-I", "-S", script], capture_output=True,
                              text=True, timeout=60)
        return RunResult(done.returncode, done.stdout + done.stderr, False, 0.01)

    result = inject_agent(os.getpid(), directory, runner=runner, check=lambda pid: (3, 14))
    assert result.method == "remote_exec"
    assert calls[0][0] == f"/proc/{os.getpid()}/exe"
    assert result.apps == [] and result.note and "no ASGI app" in result.note
    assert os.listdir(directory) == []  # neither the script nor the status is left behind


def test_a_target_that_never_runs_the_loader_times_out_with_the_debuggers_span(
        directory: str) -> None:
    """The debugger held the target whatever came of the injection: the failure keeps when."""
    def runner(argv: Sequence[str], timeout: float) -> RunResult:
        return RunResult(0, "", False, 0.01)  # scheduled, and never run by the "target"

    before = time.time()
    with pytest.raises(InjectionTimeout) as failure:
        inject_agent(os.getpid(), directory, runner=runner, timeout=0.2,
                     check=lambda pid: (3, 14))
    assert failure.value.debugger_span is not None
    start, end = failure.value.debugger_span
    assert before <= start <= end <= time.time()


def test_a_stale_status_is_not_taken_for_this_ones(tmp_path: Path) -> None:
    path = tmp_path / "inject-1.json"
    path.write_text(json.dumps({"token": "old", "ok": True}))
    now = [0.0]

    def clock() -> float:
        return now[0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] > 1.0:
            path.write_text(json.dumps({"token": "new", "ok": True}))

    status = wait_for_result(str(path), "new", 1, 5.0, clock=clock, sleep=sleep,
                             alive=lambda pid: True)
    assert status["token"] == "new"


def test_no_answer_by_the_deadline_says_why(tmp_path: Path) -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(InjectionTimeout, match="did not run the agent's loader within 3 s"):
        wait_for_result(str(tmp_path / "none.json"), "t", 1, 3.0, clock=lambda: now[0],
                        sleep=sleep, alive=lambda pid: True)


def test_a_refused_attach_is_retried_then_explained(directory: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Another tracer (py-spy samples in blocking mode) makes the kernel refuse gdb for a
    moment. A gdb with Python retries inside its script; one without is run again with `-p`.
    A refusal that lasts is reported with both causes."""
    require_program("gdb")
    monkeypatch.setattr(injector, "ATTACH_BACKOFF", 0.0)
    monkeypatch.setattr(ptrace, "supported", lambda: False)  # the gdb route, on any machine
    calls: list[list[str]] = []

    def refusing(argv: Sequence[str], timeout: float) -> RunResult:
        calls.append(list(argv))
        if len(calls) == 1:
            script = Path(argv[argv.index("-x") + 1]).read_text()
            assert 'gdb.execute("attach ' in script and "-p" not in argv
            return RunResult(1, f"{NO_PYTHON} in this copy of GDB.\n", False, 0.01)
        assert "-p" in argv
        return RunResult(1, "ptrace: Operation not permitted.\n", False, 0.01)

    with pytest.raises(TargetError) as caught:
        inject_agent(os.getpid(), directory, runner=refusing, check=lambda pid: (3, 11))
    assert len(calls) == 1 + injector.ATTACH_ATTEMPTS
    assert "another debugger or profiler" in caught.value.message
    assert "kernel.yama.ptrace_scope" in caught.value.message
    assert os.listdir(directory) == []  # the gdb script is gone


def test_the_ptrace_route_gets_the_functions_and_the_text_and_names_a_refusal(
        directory: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On x86-64 the calls are made by `apiscope.inject.ptrace`, given the addresses read
    from the files and the snippet in a private file; its refusal reads as gdb's does."""
    monkeypatch.setattr(ptrace, "supported", lambda: True)
    seen: list[tuple[list[str], bytes, int]] = []

    def refusing(argv: Sequence[str], timeout: float) -> RunResult:
        text = Path(argv[-1])
        seen.append((list(argv), text.read_bytes(), text.stat().st_mode & 0o777))
        return RunResult(1, "ptrace: Operation not permitted.\n", False, 0.01)

    with pytest.raises(TargetError) as caught:
        inject_agent(os.getpid(), directory, runner=refusing, check=lambda pid: (3, 11))
    [(argv, text, mode)] = seen
    assert argv[1:3] == ["-m", "apiscope.inject.ptrace"] and argv[3] == str(os.getpid())
    assert all(int(address, 16) > 0 for address in argv[4:7])
    assert b"payload" in text and mode == 0o600
    assert not Path(argv[-1]).exists()  # removed once the calls were made
    assert "apiscope was not allowed to attach" in caught.value.message
