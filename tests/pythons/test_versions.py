"""The attach/inject/detach cycle on every supported CPython, 3.9 to 3.13.

Each case serves `matrix_app` with uvicorn from a target environment of that version (nothing
of apiscope installed there), attaches `apiscope attach` to it (py-spy sampling, the agent
injected with gdb), drives requests, and checks the session: every request under its template,
the loop-blocking route flagged `event_loop_blocked`, and the agent gone after the session.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from apiscope.store import SessionReader
from tests.pythons.harness import (
    PLAN,
    agent_answers,
    attach_session,
    drive,
    get,
    loop_holds,
    serve,
)
from tests.pythons.targets import VERSIONS, target_python
from tests.support import require_found, require_program, require_ptrace, wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("version", VERSIONS)
def test_attach_inject_flag_detach(version: str, tmp_path: Path) -> None:
    require_ptrace()
    require_program("gdb")
    require_program("py-spy")
    python = require_found(target_python, version)
    session, report = tmp_path / "s.sqlite", tmp_path / "r.json"
    with serve([str(python)]) as server:
        with attach_session(server.pid, session, report) as apiscope:
            wait_until(lambda: apiscope.check() and agent_answers(server.pid), timeout=60,
                       what=f"the agent injected into Python {version} to answer")
            drive(server.url)
        assert apiscope.returncode == 0, apiscope.stderr
        # Detached at the end: nothing answers, and the app serves as before.
        wait_until(lambda: not agent_answers(server.pid), timeout=20,
                   what="the agent to be removed")
        assert json.loads(get(server, "/items/7")) == {"item_id": "7"}

    with SessionReader(session) as reader:
        counts = Counter(r.route for r in reader.requests() if r.route != "/ping")
        assert {r.pid for r in reader.requests()} == {server.pid}
    assert counts == Counter(PLAN), apiscope.stderr
    data = json.loads(report.read_text())
    assert data["target"]["python"].startswith(version + "."), data["target"]
    blocked = loop_holds(data["flags"])
    assert set(blocked) == {"block", "fetch_part"}, data["flags"]
    assert all(f["location"]["file"].endswith("matrix_app.py") for f in blocked.values())
    # The hold in a task the request started (`gather`) is named by the task's context, which
    # Python lets another thread read from 3.12 on (`Task.get_context`).
    fanned = "GET /fan-out" if tuple(map(int, version.split("."))) >= (3, 12) else None
    assert blocked["fetch_part"]["route"] == fanned, blocked["fetch_part"]
    if fanned:  # the advice in the API of the framework serving that route
        assert "run_in_threadpool" in blocked["fetch_part"]["suggestion"]
    print(f"\n[python {version}] {sys.platform}: {sum(counts.values())} requests recorded,"
          f" flags {[f['kind'] for f in data['flags']]}")
