"""apiscope run by a normal user: `run` samples the server it started, and `attach` to a
server it may not trace says what to do.

Runs apiscope itself as a user created by the test, with the distribution's python3 and this
checkout's packages (`src/` and the project environment's site-packages, which that python can
load when it is the same minor version). This kernel may have no Yama: then siblings may trace
each other anyway, and what `PR_SET_PTRACER` changes under `kernel.yama.ptrace_scope=1` is not
observable here (see docs/status.md); the test still proves a non-root `run` works end to end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiscope.store import SessionReader
from tests.pythons.harness import APP_DIR, PLAN, drive, stored_requests, uvicorn_args
from tests.pythons.targets import SYSTEM, SYSTEM_PYTHON, target_python
from tests.support import IN_CI, ROOT, free_port, http_ok, require_program, wait_until
from tests.users.accounts import Account, account

pytestmark = pytest.mark.integration


@pytest.fixture
def user() -> Iterator[Account]:
    with account("apiscope-dev") as made:
        yield made


def apiscope_as(user: Account) -> list[str]:
    """argv prefix running this checkout's apiscope as `user`, or skip when it can't."""
    site = sysconfig.get_paths()["purelib"]
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    theirs = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info"
                             "[:2])"], capture_output=True, text=True, timeout=60).stdout.strip()
    if theirs != mine:
        reason = (f"{SYSTEM_PYTHON} is {theirs or 'missing'}, the project environment is {mine}:"
                  " apiscope cannot run from it as another user")
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    py_spy = Path(require_program("py-spy")).parent
    return [*user.prefix(f"PATH={py_spy}:/usr/bin:/bin", f"PYTHONPATH={ROOT / 'src'}:{site}"),
            SYSTEM_PYTHON, "-m", "apiscope"]


@pytest.fixture
def workdir(user: Account) -> Iterator[Path]:
    """A directory of the user's own (pytest's tmp_path is in root's private directory)."""
    path = Path(tempfile.mkdtemp(prefix="apiscope-user-"))
    os.chown(path, user.uid, user.gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_normal_user_runs_a_server_under_apiscope(user: Account, workdir: Path) -> None:
    tmp_path = workdir
    session = tmp_path / "s.sqlite"
    port = free_port()
    server = [str(target_python(SYSTEM)), *uvicorn_args(port, str(APP_DIR))]
    argv = [*apiscope_as(user), "run", "--no-dashboard", "--duration", "120", "--session",
            str(session), "--", *server]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is None and http_ok(f"http://127.0.0.1:{port}/ping"),
                   timeout=60, what="the server started by apiscope run to serve")
        drive(f"http://127.0.0.1:{port}")
        wait_until(lambda: stored_requests(session) >= sum(PLAN.values()), timeout=30,
                   what="the requests to be stored")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    with SessionReader(session) as reader:
        pids = {r.pid for r in reader.requests()}
        assert len(pids) == 1 and os.stat(session).st_uid == user.uid
        sampled = sum(1 for _ in reader.samples())
    assert sampled > 0, err  # py-spy, started by apiscope, traced the server it started


def test_attach_without_permission_says_what_to_run(user: Account) -> None:
    """A normal user attaching to root's server: exit 2 and each fix spelled out."""
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        done = subprocess.run([*apiscope_as(user), "attach", str(target.pid), "--duration", "1",
                               "--no-dashboard"], capture_output=True, text=True, timeout=60,
                              cwd="/")
    finally:
        target.kill()
        target.wait()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for fix in ("sudo", "kernel.yama.ptrace_scope=0", "CAP_SYS_PTRACE"):
        assert fix in done.stderr, done.stderr
