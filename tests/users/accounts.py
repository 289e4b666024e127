"""A user account created for a test (and removed after it), and commands run as that user."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.support import IN_CI


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int

    def prefix(self, *env: str) -> list[str]:
        """argv prefix running a command as this user, with a clean environment (as a service
        manager starts a server: no XDG_RUNTIME_DIR, no APISCOPE_* of ours)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/", *env]


def require_root() -> None:
    """Skip outside CI unless root (creating users needs it); in CI these tests must run."""
    missing = [tool for tool in ("useradd", "userdel", "setpriv") if shutil.which(tool) is None]
    if os.geteuid() == 0 and not missing:
        return
    reason = (f"needs {', '.join(missing)}" if missing else
              "needs root: it creates a user account and attaches to that user's server")
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def account(name: str) -> Iterator[Account]:
    """A system account `name` (no home, no login shell), removed afterwards if we made it."""
    require_root()
    try:
        pwd.getpwnam(name)
        created = False
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", name], check=True, capture_output=True, timeout=60)
        created = True
    entry = pwd.getpwnam(name)
    try:
        yield Account(name, entry.pw_uid, entry.pw_gid)
    finally:
        if created:
            subprocess.run(["userdel", name], capture_output=True, timeout=60)
            # The agent's directory outlives the agent (it is its user's): not the account.
            shutil.rmtree(f"/tmp/apiscope-{entry.pw_uid}", ignore_errors=True)
