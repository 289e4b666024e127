"""How a debugger run's output becomes an error that names its cause and fix."""

from __future__ import annotations

import sys

import pytest

from apiscope.errors import TargetError
from apiscope.inject import InjectionFailed
from apiscope.inject.gdb import check_gdb_output, gdb_script
from apiscope.inject.remote import check_remote_exec, remote_exec_argv
from apiscope.inject.runner import RunResult, run_with_deadline


def ran(output: str, *, returncode: int = 0, timed_out: bool = False) -> RunResult:
    return RunResult(returncode=returncode, output=output, timed_out=timed_out, seconds=0.1)


def test_a_scheduled_call_passes() -> None:
    check_gdb_output(7, ran("APISCOPE: attached\nAPISCOPE: python 0x1 0x2\nAPISCOPE: pending 0\n"))


def test_ptrace_refused_names_the_settings_to_change() -> None:
    with pytest.raises(TargetError) as caught:
        check_gdb_output(7, ran("ptrace: Operation not permitted.\n", returncode=1))
    message = caught.value.message
    assert "kernel.yama.ptrace_scope" in message and "CAP_SYS_PTRACE" in message
    assert "--cap-add SYS_PTRACE" in message


def test_not_python_is_a_target_error() -> None:
    out = 'APISCOPE: attached\nNo symbol "Py_AddPendingCall" in current context.\n'
    with pytest.raises(TargetError, match="does not look like a CPython process"):
        check_gdb_output(7, ran(out, returncode=1))


def test_gone_process_and_full_queue_and_timeout() -> None:
    with pytest.raises(TargetError, match="no process with PID 7"):
        check_gdb_output(7, ran("ptrace: No such process.\n", returncode=1))
    with pytest.raises(InjectionFailed, match="queue of pending calls is full"):
        check_gdb_output(7, ran("APISCOPE: attached\nAPISCOPE: pending -1\n"))
    with pytest.raises(InjectionFailed, match="deadline"):
        check_gdb_output(7, ran("APISCOPE: attached\n", returncode=-2, timed_out=True))


def test_the_script_writes_the_snippet_without_calling_malloc() -> None:
    script = gdb_script('print("hé")\n')
    assert 'set {char[14]} $apiscope_text = "print(\\"h\\303\\251\\")\\012"' in script
    assert "mmap(" in script and "strdup" not in script and "malloc" not in script
    assert script.index("Py_AddPendingCall((int") > script.index("$apiscope_text =")
    assert script.rstrip().endswith("detach")


def test_remote_exec_runs_the_targets_own_interpreter() -> None:
    argv = remote_exec_argv(42, "/run/x/inject-42.py")
    assert argv[:3] == ["/proc/42/exe", "-I", "-c"]
    assert "sys.remote_exec(42, '/run/x/inject-42.py')" in argv[3]
    with pytest.raises(TargetError, match="CAP_SYS_PTRACE"):
        check_remote_exec(42, ran("PermissionError: [Errno 1] Operation not permitted",
                                  returncode=1))
    with pytest.raises(TargetError, match="remote debugging disabled"):
        check_remote_exec(42, ran("RuntimeError: Remote debugging is disabled", returncode=1))


def test_runner_interrupts_a_program_at_its_deadline() -> None:
    """SIGINT first (gdb detaches on it); the program here exits on it like gdb would."""
    code = "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('bye')"
    result = run_with_deadline([sys.executable, "-c", code], timeout=5.0)
    assert result.timed_out
    assert "bye" in result.output
    assert result.seconds < 60
