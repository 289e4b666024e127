"""The agent's watchdogs in a real uvicorn under `apiscope run`: stalls at the blocking line."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from apiscope.store import SessionReader
from tests.integration import watchdog_app
from tests.integration.test_attach import end_apiscope, start_apiscope
from tests.support import free_port, http_ok, require_ptrace, uvicorn_argv, wait_until

pytestmark = pytest.mark.integration
APP = "tests.integration.watchdog_app:app"
SOURCE = Path(watchdog_app.__file__).read_text().splitlines()
SLEEP_LINE = next(n for n, text in enumerate(SOURCE, 1) if "time.sleep(0.1)" in text)


def test_run_records_loop_stalls_at_the_blocking_line_and_gil_samples(tmp_path: Path) -> None:
    require_ptrace()  # `run` samples stacks with py-spy too
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    session = tmp_path / "s.sqlite"
    proc = start_apiscope(["run", "--no-dashboard", "--duration", "120", "--session",
                           str(session), "--", *uvicorn_argv(APP, port)])
    try:
        wait_until(lambda: proc.poll() is None and http_ok(base + "/ping"), timeout=60,
                   what="the server started by apiscope run")
        deadline = time.monotonic() + 3.0
        blocked = 0
        while time.monotonic() < deadline:  # a few seconds of load, one client
            for path in ("/block", "/ping", "/ping"):
                with urllib.request.urlopen(base + path, timeout=10) as resp:
                    assert resp.status == 200
                    resp.read()
            blocked += 1
        wait_until(lambda: _stalls(session) >= blocked // 2, timeout=20,
                   what="the stalls to reach the session")
    finally:
        code, err = end_apiscope(proc)
    assert code == 0, err

    with SessionReader(session) as reader:
        stalls = reader.loop_stalls()
        lag = reader.loop_lag()
        gil = reader.gil_samples()
        cpu = reader.meta().watchdog_cpu_seconds
    leaves = Counter((s.frames[-1].function, s.frames[-1].file, s.frames[-1].line)
                     for s in stalls if s.frames)
    (leaf, count), *_ = leaves.most_common()
    assert leaf == ("block", watchdog_app.__file__, SLEEP_LINE)
    assert count >= blocked // 2  # one stall per blocking request, but for a few missed
    at_line = [s for s in stalls if s.frames and s.frames[-1].line == SLEEP_LINE]
    for stall in at_line:
        assert 90 <= stall.duration_ms <= 1000
    # The CPU of a stall is read from when the watchdog began to follow it: one followed only
    # in its last 2 ms (a watchdog woken late on a loaded machine) has none, rather than a guess.
    measured = [s for s in at_line if s.cpu_ms is not None]
    assert len(measured) >= len(at_line) // 2
    assert all(s.cpu_ms < s.duration_ms / 2 for s in measured)  # asleep
    assert lag and max(s.max_ms for s in lag) >= 90
    assert gil and all(s.runqueue_known for s in gil) and sum(s.acquisitions for s in gil) > 0
    assert cpu and all(0 < v < 1.0 for v in cpu.values())


def _stalls(session: Path) -> int:
    try:
        with SessionReader(session) as reader:
            return len(reader.loop_stalls())
    except Exception:  # not created yet
        return 0
