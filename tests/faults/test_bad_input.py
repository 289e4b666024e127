"""Every bad option and path is answered with exit 2 and a message, never a traceback; a
Python process that is not a server still honours --duration."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.harness import APISCOPE, finish, make_place, start_collector
from tests.support import ROOT, require_ptrace, wait_until

pytestmark = pytest.mark.integration


def run_apiscope(*args: str) -> tuple[int, str]:
    done = subprocess.run([*APISCOPE, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "APISCOPE_TOKEN": ""})
    return done.returncode, done.stderr


def bad_arguments(tmp: Path) -> list[list[str]]:
    me = str(os.getpid())
    (tmp / "adir").mkdir(exist_ok=True)
    (tmp / "afile").write_text("x")
    return [
        ["attach", me, "--rate", "100000"], ["attach", me, "--rate", "0"],
        ["attach", me, "--rate", "fast"], ["attach", me, "--duration", "-1"],
        ["attach", me, "--duration", "soon"], ["attach", me, "--slo-ms", "0"],
        ["attach", me, "--port", "70000"], ["attach", me, "--metrics-port", "0"],
        ["attach", me, "--session", str(tmp / "adir")],
        ["attach", me, "--session", str(tmp / "afile" / "s.sqlite")],
        ["attach", me, "--report", str(tmp / "r.txt")],
        ["attach", me, "--report", str(tmp / "adir")],
        ["attach", me, "--report", str(tmp / "afile" / "r.json")],
        ["attach", "0"], ["attach", "-5"], ["attach", "abc"], ["attach", "999999999"],
        ["attach", "1"], ["attach"], ["attach", me, "--no-such-option"],
        ["run", "--session", str(tmp / "adir"), "--", "true"], ["run"],
        ["run", "--", "/no/such/program"], ["detach", "999999999"], ["detach", "x"],
        ["report", str(tmp / "adir")], ["report", str(tmp / "afile")],
        ["report", str(tmp / "missing.sqlite")], ["export", str(tmp / "afile"), "--format",
                                                  "svg"],
        ["dashboard", str(tmp / "afile")], ["diff", str(tmp / "afile"), str(tmp / "afile")],
        ["demo", "--rate", "5000"], ["demo", "--session", str(tmp / "adir")],
    ]


def test_every_bad_option_and_path_exits_2_without_a_traceback(tmp_path: Path) -> None:
    for argv in bad_arguments(tmp_path):
        code, err = run_apiscope(*argv)
        assert code == 2, (argv, code, err)
        assert "Traceback" not in err and "error" in err, (argv, err)
    assert not (tmp_path / "adir" / "session.sqlite").exists()


def test_the_rate_limit_is_said() -> None:
    code, err = run_apiscope("attach", str(os.getpid()), "--rate", "100000")
    assert code == 2 and "at most 1000" in err and "py-spy" in err


def test_a_python_process_that_is_not_a_server_honours_duration(tmp_path: Path) -> None:
    require_ptrace()
    place = make_place(tmp_path)
    # Its main thread sleeps in C: the injected loader cannot run until the sleep ends.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        wait_until(lambda: sleeper.pid and Path(f"/proc/{sleeper.pid}/exe").exists(), timeout=5)
        started = time.monotonic()
        proc = start_collector(place, "attach", str(sleeper.pid), "--no-dashboard",
                               "--duration", "3", "--rate", "20", "--session",
                               str(tmp_path / "s.sqlite"))
        code, err = finish(proc, timeout=40)
        took = time.monotonic() - started
        assert code == 0, err
        assert took < 3 + 12, f"--duration 3 took {took:.1f} s"  # start-up and grace included
        assert "Traceback" not in err and "stored" in err
    finally:
        sleeper.kill()
        sleeper.wait()
