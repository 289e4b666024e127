"""`apiscope detach` on processes that need no debugger: exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from apiscope.cli.main import main
from apiscope.inject.target import agent_listening
from tests.support import require_ptrace


def test_missing_pid_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detach", "4194000"]) == 2
    assert "no process with PID 4194000" in capsys.readouterr().err


def test_not_python_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert main(["detach", str(sleeper.pid)]) == 2
        assert "not a Python process" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_python_process_without_agent_is_left_untouched(
        capsys: pytest.CaptureFixture[str]) -> None:
    require_ptrace()  # describing the target checks that it could be traced
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert main(["detach", str(proc.pid)]) == 0
        assert capsys.readouterr().out == f"PID {proc.pid}: no injected agent\n"
    finally:
        proc.kill()
        proc.wait()


def test_agent_listening_reads_the_processes_socket_table(tmp_path: Path) -> None:
    net = tmp_path / "42" / "net"
    net.mkdir(parents=True)
    header = "Num       RefCount Protocol Flags    Type St Inode Path\n"
    (net / "unix").write_text(
        header + "0000: 00000002 00000000 00010000 0001 01 1505 /run/x/agent-42.sock\n")
    assert agent_listening(42, proc_root=str(tmp_path))
    (net / "unix").write_text(
        header + "0000: 00000002 00000000 00010000 0001 01 1505 /run/x/agent-421.sock\n")
    assert not agent_listening(42, proc_root=str(tmp_path))
    assert agent_listening(43, proc_root=str(tmp_path))  # unreadable: let injection decide
