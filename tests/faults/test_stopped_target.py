"""A target stopped for a while (SIGSTOP, as a debugger or a cgroup freezer does) and then
continued: sampling resumes, the stretch without samples is stored as a gap and shown in the
report, and no hint about wrappers misleads the user."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.faults.harness import finish, make_place, start_collector, stderr_of, uvicorn_server
from tests.support import require_ptrace, wait_until

pytestmark = pytest.mark.integration
STOPPED_SECONDS = 3.0


def test_sampling_resumes_after_sigstop_and_the_gap_is_reported(tmp_path: Path) -> None:
    require_ptrace()
    place = make_place(tmp_path)
    session, report = tmp_path / "s.sqlite", tmp_path / "r.json"
    with uvicorn_server(place) as (server, _url):
        proc = start_collector(place, "attach", str(server.pid), "--no-dashboard",
                               "--no-inject", "--rate", "50", "--duration", "60", "--session",
                               str(session), "--report", str(report))

        def windows() -> int:
            if not session.exists():
                return 0  # (connecting would create it)
            try:  # the file is created a moment before its tables
                return int(sqlite3.connect(session).execute(
                    "SELECT count(*) FROM windows").fetchone()[0])
            except sqlite3.OperationalError:
                return 0

        wait_until(lambda: windows() >= 2, timeout=30, what="two windows")
        os.kill(server.pid, signal.SIGSTOP)
        time.sleep(STOPPED_SECONDS)  # the fault itself: the target stays stopped this long
        resumed = time.time()
        os.kill(server.pid, signal.SIGCONT)
        wait_until(lambda: sqlite3.connect(session).execute(
            "SELECT count(*) FROM windows WHERE start >= ?", (resumed,)).fetchone()[0] >= 2,
            timeout=30, what=f"windows after SIGCONT ({stderr_of(proc)})")
        code, err = finish(proc, signal.SIGTERM)
        assert code == 0, err
        assert "uv run" not in err and "stack sampling stopped" not in err
        after = sqlite3.connect(session).execute(
            "SELECT sum(s.count) FROM samples s JOIN windows w ON w.id = s.window_id"
            " WHERE w.start >= ?", (resumed,)).fetchone()[0]
        assert after > 0
        gaps = json.loads(report.read_text())["window"]["gaps"]
        assert len(gaps) == 1 and gaps[0]["reason"] == "target stopped"
        assert STOPPED_SECONDS - 1.0 <= gaps[0]["seconds"] <= STOPPED_SECONDS + 3.0
        assert "no samples for" in err
