"""A server in a container-like sandbox, attached from outside: its own mount and PID
namespaces (`unshare --mount --pid --fork`) over a root of its own (see `sandbox.sh`).

The sandbox's root is made of bind mounts of this machine's /usr (its python3), a target
environment with uvicorn and Starlette at /srv/env and the app at /srv/app, with an empty /tmp:
apiscope's files are not there, its paths mean nothing there, and the server is PID 1 of its
namespace. A root built with debootstrap would take minutes and the package archive for every
fresh CI machine; this one takes milliseconds and differs from the target's side of a real
container in nothing apiscope relies on (the files it sees, its PIDs, its /tmp).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from apiscope.store import SessionReader
from tests.pythons.harness import (
    PLAN,
    agent_answers,
    attach_session,
    drive,
    loop_holds,
    uvicorn_args,
)
from tests.pythons.targets import SYSTEM, target_python
from tests.support import (
    IN_CI,
    ServerProcess,
    free_port,
    require_program,
    require_ptrace,
    run_server,
    wait_until,
)

pytestmark = pytest.mark.integration
SANDBOX = Path(__file__).resolve().with_name("sandbox.sh")


def require_namespaces() -> None:
    missing = [tool for tool in ("unshare", "chroot", "mount") if shutil.which(tool) is None]
    reason = (f"needs {', '.join(missing)}" if missing else None) or (
        None if os.geteuid() == 0 else "needs root to make mount and PID namespaces")
    if reason is None:
        return
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def sandboxed(tmp_path: Path) -> Iterator[tuple[ServerProcess, int]]:
    """The server, and its PID as seen from here (it is PID 1 in its own namespace)."""
    require_namespaces()
    require_ptrace()
    env = target_python(SYSTEM).parent.parent
    root = tmp_path / "root"
    root.mkdir()
    port = free_port()
    argv = ["unshare", "--mount", "--pid", "--fork", "sh", str(SANDBOX), str(root), str(env),
            str(SANDBOX.parent.parent / "pythons"), "--", "/srv/env/bin/python",
            *uvicorn_args(port, "/srv/app")]
    with run_server(argv, port, ready_path="/ping", timeout=60) as server:
        children = psutil.Process(server.pid).children()
        assert len(children) == 1, children
        yield server, children[0].pid


def test_attach_from_outside_the_container(sandboxed: tuple[ServerProcess, int],
                                           tmp_path: Path) -> None:
    require_program("gdb")
    require_program("py-spy")
    server, pid = sandboxed
    assert _namespace_pids(pid) == [pid, 1]
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    session, report = tmp_path / "s.sqlite", tmp_path / "r.json"
    with attach_session(pid, session, report) as apiscope:
        wait_until(lambda: apiscope.check() and agent_answers(pid), timeout=60,
                   what="the agent in the sandboxed server to answer")
        # Nothing of ours was written in its filesystem but the agent's own directory.
        assert os.listdir(f"/proc/{pid}/root/tmp") == ["apiscope-0"]
        drive(server.url)
    assert apiscope.returncode == 0, apiscope.stderr
    wait_until(lambda: not agent_answers(pid), timeout=20, what="the agent to be removed")

    with SessionReader(session) as reader:
        requests = [r for r in reader.requests() if r.route != "/ping"]
    assert Counter(r.route for r in requests) == Counter(PLAN)
    assert {r.pid for r in requests} == {pid}  # our PID for it, not its own 1
    data = json.loads(report.read_text())
    blocked = loop_holds(data["flags"])
    # The file as the target sees it: the sandbox's path, not the one it has out here.
    assert {f["location"]["file"] for f in blocked.values()} == {"/srv/app/matrix_app.py"}
    assert data["samples"]["total"] > 0


def _namespace_pids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(p) for p in line.split()[1:]]
    return []
