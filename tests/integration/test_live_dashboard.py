"""The dashboard `attach` serves while it collects: it shows the flags the collector's own live
analysis stores, and runs no analysis of its own (a second one doubled what analysing cost).

A real uvicorn server, a real injection, the real collector and its dashboard, a real headless
Chromium reading the page.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.browser import chromium, console_errors
from tests.integration.test_attach import APP, PROBE, end_apiscope, wait_for_agents
from tests.support import (
    ROOT,
    free_port,
    require_program,
    require_ptrace,
    run_server,
    uvicorn_argv,
    wait_until,
)

pytestmark = pytest.mark.integration
TOKEN = "live-dashboard-test"


def stored_flags(session: Path) -> list[str] | None:
    """The kinds of the flags the collector stored, once it has stored any (None before)."""
    try:
        with sqlite3.connect(f"file:{session}?mode=ro", uri=True, timeout=1) as db:
            if not db.execute("SELECT 1 FROM meta WHERE key = 'flags_stored'").fetchone():
                return None
            return [kind for (kind,) in db.execute("SELECT kind FROM flags")]
    except sqlite3.Error:
        return None


def threads_of(pid: int) -> str:
    """py-spy's dump of a process: every thread, by name."""
    done = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--pid",
                           str(pid), "--nonblocking"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def flags_text(driver: Any) -> str:
    text = driver.execute_script(
        "const el = document.querySelector('#flags'); return el ? el.innerText : '';")
    return str(text)


def test_the_live_dashboard_shows_the_collectors_flags(tmp_path: Path) -> None:
    require_ptrace()
    require_program("gdb")
    port, dashboard = free_port(), free_port()
    session = tmp_path / "s.sqlite"
    with run_server(uvicorn_argv(APP, port), port, ready_path=PROBE) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "apiscope", "attach", str(server.pid), "--port",
             str(dashboard), "--duration", "600", "--session", str(session)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, env={**os.environ, "APISCOPE_TOKEN": TOKEN})
        try:
            wait_for_agents([server.pid], proc)
            # One analysis in the collector, the live flags' (its first run 10 s in), and none
            # in the dashboard, which used to run its own until the collector stored flags.
            threads = threads_of(proc.pid)
            assert "apiscope-live-flags" in threads and "apiscope-dashboard" in threads
            assert "apiscope-dashboard-analysis" not in threads
            for _ in range(40):  # each holds the event loop for 30 ms
                with urllib.request.urlopen(server.url + "/block", timeout=10) as resp:
                    resp.read()
            # Its first run comes 10 s in, the next ones as its share of the budget allows.
            wait_until(lambda: "event_loop_blocked" in (stored_flags(session) or ()),
                       timeout=150, what="the collector's live analysis to store the flag")
            with chromium(tmp_path / "profile", tmp_path / "downloads") as driver:
                driver.get(f"http://127.0.0.1:{dashboard}/?token={TOKEN}")
                shown = wait_until(lambda: "event_loop_blocked" in flags_text(driver)
                                   and flags_text(driver), timeout=60,
                                   what="the dashboard to show the stored flags")
                assert "analysing" not in shown
                assert console_errors(driver) == []
            assert "apiscope-dashboard-analysis" not in threads_of(proc.pid)
        finally:
            code, err = end_apiscope(proc)
        assert code == 0, err
