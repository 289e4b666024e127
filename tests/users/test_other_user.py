"""Root attaching to a server run by another user (the usual deployment), and who else may
talk to an agent."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiscope.agent.transport import AgentServer
from apiscope.store import SessionReader
from tests.pythons.harness import PLAN, agent_answers, attach_session, drive, loop_holds, serve
from tests.pythons.targets import SYSTEM, SYSTEM_PYTHON, target_python
from tests.support import require_program, require_ptrace, wait_until
from tests.users.accounts import Account, account

pytestmark = pytest.mark.integration


@pytest.fixture
def service_user() -> Iterator[Account]:
    with account("apiscope-svc") as user:
        yield user


def test_root_attaches_to_another_users_server(service_user: Account, tmp_path: Path) -> None:
    """Every request of the service account's server is timed; the rendezvous is the
    service account's own private directory, and it is left as the agent found it."""
    require_ptrace()
    require_program("gdb")
    python = str(target_python(SYSTEM))  # readable by the service user
    session, report = tmp_path / "s.sqlite", tmp_path / "r.json"
    with serve([*service_user.prefix(), python]) as server:
        assert os.stat(f"/proc/{server.pid}").st_uid == service_user.uid
        with attach_session(server.pid, session, report) as apiscope:
            wait_until(lambda: apiscope.check() and agent_answers(server.pid), timeout=60,
                       what="the agent in the service user's server to answer")
            rendezvous = Path(f"/tmp/apiscope-{service_user.uid}")
            info = rendezvous.stat()
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (service_user.uid, 0o700)
            drive(server.url)
            # Routes are armed for a profile as the collector pulls (once a second): /ping's
            # first request in a pull's batch arms it, and one of the next is profiled.
            for _ in range(25):
                with urllib.request.urlopen(f"{server.url}/ping", timeout=10) as resp:
                    resp.read()
                time.sleep(0.1)
        assert apiscope.returncode == 0, apiscope.stderr
        # No warning: not even that the server lacks pyinstrument (it does): apiscope's own was
        # offered, the target running the same ABI.
        assert "warning" not in apiscope.stderr, apiscope.stderr
        wait_until(lambda: not agent_answers(server.pid), timeout=20,
                   what="the agent to be removed")
    with SessionReader(session) as reader:
        counts = Counter(r.route for r in reader.requests() if r.route != "/ping")
        profiles = reader.profiles()
    assert counts == Counter(PLAN)
    assert profiles, "no per-request async profile from the server without pyinstrument"
    data = json.loads(report.read_text())
    assert {e["route"] for e in data["endpoints"]} >= {"GET /items/{item_id}", "GET /block"}
    loop_holds(data["flags"])


def test_a_third_user_is_refused_by_the_agent(service_user: Account) -> None:
    """Even with the directory and socket opened to everyone, the agent answers only its own
    user and root: the peer's uid is checked on connect (SO_PEERCRED)."""
    directory = tempfile.mkdtemp(prefix="aps-")
    path = os.path.join(directory, "agent-1.sock")
    server = AgentServer(path, lambda request: {"ok": True})
    server.start()
    try:
        os.chmod(directory, 0o755)
        os.chmod(path, 0o666)
        ask = ("import socket, sys\n"
               "s = socket.socket(socket.AF_UNIX)\n"
               "s.connect(sys.argv[1])\n"
               "try:\n"
               "    s.sendall(b'{\"op\": \"ping\"}\\n')\n"
               "    print(repr(s.recv(100)))\n"
               "except (BrokenPipeError, ConnectionResetError):\n"
               "    print(repr(b''))\n")
        python = SYSTEM_PYTHON  # the service user can run it
        as_root = subprocess.run([python, "-c", ask, path], capture_output=True, text=True,
                                 timeout=30)
        assert '"ok":true' in as_root.stdout, as_root.stderr
        third = subprocess.run([*service_user.prefix(), python, "-c", ask, path],
                               capture_output=True, text=True, timeout=30)
        assert third.returncode == 0, third.stderr  # it connected, and was hung up on
        assert third.stdout.strip() == "b''"
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
