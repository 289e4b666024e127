"""Children apiscope stops with SIGINT stop on it even when apiscope was started with SIGINT
ignored (a shell's background job): real processes, real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

# Run in a fresh interpreter that ignores SIGINT as a background job does: a child started
# with `interruptible` gets SIGINT back and stops on it; one started without keeps ignoring it.
PROGRAM = textwrap.dedent("""
    import signal, subprocess, sys, time
    from apiscope.lifetime import interruptible
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"]
    for preexec in (interruptible, None):
        proc = subprocess.Popen(child, stdout=subprocess.PIPE, text=True, preexec_fn=preexec)
        proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
            print("stopped")
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print("kept running")
""")


def test_sigint_reaches_children_started_interruptible() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split("\n")[:2] == ["stopped", "kept running"], done.stdout


def test_the_suite_itself_does_not_ignore_sigint() -> None:
    # tests/conftest.py gives SIGINT back to a suite started as a background job, so that the
    # servers and collectors it starts stop on it as they do at a terminal.
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
