"""The target's state as the stack sampler asks it through a window."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from apiscope.collectors.spy import target_stopped
from tests.support import wait_until


def test_a_process_stopped_by_a_signal_is_told_from_a_running_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not target_stopped(child.pid)
        os.kill(child.pid, signal.SIGSTOP)
        wait_until(lambda: target_stopped(child.pid), 10, what="the child to stop")
        os.kill(child.pid, signal.SIGCONT)
        wait_until(lambda: not target_stopped(child.pid), 10, what="the child to continue")
    finally:
        child.kill()
        child.wait()
    assert not target_stopped(child.pid)  # gone: not stopped


def test_the_state_is_read_after_the_command_name_whatever_it_holds(tmp_path: Path) -> None:
    # A command name may hold spaces and parentheses: the state follows the last ')'.
    for state, stopped in ((b"T", True), (b"t", False), (b"S", False), (b"R", False)):
        (tmp_path / "41").mkdir(exist_ok=True)
        (tmp_path / "41" / "stat").write_bytes(b"41 (a) T (b) " + state + b" 1 41 41 0 -1\n")
        assert target_stopped(41, proc_root=str(tmp_path)) is stopped
    assert not target_stopped(42, proc_root=str(tmp_path))
