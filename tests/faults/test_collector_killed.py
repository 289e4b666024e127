"""kill -9 of the collector: its agent notices (no pull for a few seconds) and removes itself;
no py-spy keeps tracing the server, no temporary directory stays behind, the `.sqlite` file
alone holds the session (the write-ahead log was checkpointed), and a second collector on the
same server is refused while the first runs but welcome once it is gone."""

from __future__ import annotations

import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.faults.harness import (
    assert_clean,
    drive,
    finish,
    make_place,
    pyspy_tracing,
    start_collector,
    uvicorn_server,
    wait_for_agents,
    wait_gone,
)
from tests.support import require_ptrace, wait_until

pytestmark = pytest.mark.integration
ORPHAN_SECONDS = "2"


def test_kill_9_leaves_nothing_behind_and_a_new_attach_works(tmp_path: Path) -> None:
    require_ptrace()
    place = make_place(tmp_path)
    session = tmp_path / "s.sqlite"
    with uvicorn_server(place) as (server, url):
        first = start_collector(place, "attach", str(server.pid), "--no-dashboard", "--rate",
                                "50", "--session", str(session),
                                APISCOPE_ORPHAN_SECONDS=ORPHAN_SECONDS)
        wait_for_agents([server.pid], place, first)
        assert drive(url, 30) == (30, 0)

        second = start_collector(place, "attach", str(server.pid), "--no-dashboard",
                                 "--duration", "2", "--session", str(tmp_path / "2.sqlite"))
        code, err = finish(second)
        assert code == 2 and "Traceback" not in err
        assert f"already profiled by apiscope PID {first.pid} into {session}" in err
        assert not (tmp_path / "2.sqlite").exists()

        wait_until(lambda: pyspy_tracing(server.pid), timeout=10, what="py-spy to sample")
        wait_until(lambda: sqlite3.connect(session).execute(
            "SELECT count(*) FROM windows").fetchone()[0] >= 3, timeout=30, what="3 windows")
        first.send_signal(signal.SIGKILL)
        first.wait(10)

        wait_until(lambda: not pyspy_tracing(server.pid), timeout=5, what="py-spy to end")
        wait_until(lambda: place.agent_sockets() == [], timeout=15,
                   what="the orphaned agent to remove its socket")
        assert_clean([server.pid], place)
        wait_until(lambda: not list(place.tmp.iterdir()), timeout=5, what="the temp dir")
        assert drive(url, 30) == (30, 0)  # the server never noticed

        # The .sqlite file alone, copied as a user would, holds the session.
        alone = tmp_path / "copy.sqlite"
        shutil.copyfile(session, alone)
        with sqlite3.connect(alone) as conn:
            assert conn.execute("SELECT count(*) FROM windows").fetchone()[0] >= 2
            assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 30

        again = start_collector(place, "attach", str(server.pid), "--no-dashboard",
                                "--duration", "30", "--rate", "50", "--session",
                                str(tmp_path / "3.sqlite"))
        wait_for_agents([server.pid], place, again)
        assert drive(url, 10) == (10, 0)
        code, err = finish(again, signal.SIGTERM)
        assert code == 0, err
        assert sqlite3.connect(tmp_path / "3.sqlite").execute(
            "SELECT count(*) FROM requests").fetchone()[0] == 10
        wal = Path(f"{tmp_path / '3.sqlite'}-wal")
        assert not wal.exists() or wal.stat().st_size == 0  # checkpointed on exit
        assert_clean([server.pid], place)
        assert place.leftovers() == []
    wait_gone(server.pid)
