"""One collector per target: a lock file per traced PID, held for the collection's life.

Two collectors on one process would share its agent and split its requests between them, and
the first to finish would detach the agent under the other. Each collector therefore holds an
`flock` on `collector-<pid>.lock` in the (private) agent socket directory, with its own PID
and session path inside. The kernel releases the lock when the holder dies, even by SIGKILL,
so a lock left by a dead collector never blocks the next one.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable

from apiscope.agent.paths import SocketDirError, socket_dir
from apiscope.errors import TargetError, UsageError


class TargetBusy(TargetError):
    """Another apiscope collects from this process already (exit 2)."""


def lock_path(pid: int, directory: str) -> str:
    return os.path.join(directory, f"collector-{pid}.lock")


class CollectorLock:
    """Held from `acquire()` to `release()`; a `with` block does both."""

    def __init__(self, pids: Iterable[int], session: str, directory: str | None = None) -> None:
        self.pids = sorted(set(pids))
        self.session = os.path.abspath(session)
        self.directory = directory
        self._held: list[tuple[str, int]] = []

    def acquire(self) -> None:
        directory = self.directory or _directory()
        try:
            for pid in self.pids:
                self._held.append((lock_path(pid, directory), self._lock_one(pid, directory)))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        while self._held:
            path, fd = self._held.pop()
            try:
                os.unlink(path)  # still holding the lock: nobody else may be using it
            except FileNotFoundError:
                pass
            os.close(fd)

    def __enter__(self) -> CollectorLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _lock_one(self, pid: int, directory: str) -> int:
        path = lock_path(pid, directory)
        for _ in range(10):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise TargetBusy(_busy_message(pid, holder)) from None
            # The holder before us may have unlinked the file between our open and our lock:
            # a lock on an unlinked file protects nothing, so open the path again.
            if _same_file(fd, path):
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps({"pid": os.getpid(), "session": self.session}).encode())
                return fd
            os.close(fd)
        raise TargetBusy(f"cannot take the collector lock {path}: it keeps changing")


def _directory() -> str:
    try:
        return socket_dir()
    except (SocketDirError, OSError) as exc:
        raise UsageError(f"cannot use the agent socket directory: {exc}. Set"
                         " APISCOPE_SOCKET_DIR to a private directory you own") from None


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> dict[str, object]:
    try:
        data = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _busy_message(pid: int, holder: dict[str, object]) -> str:
    who = f"apiscope PID {holder['pid']}" if holder.get("pid") else "another apiscope"
    into = f" into {holder['session']}" if holder.get("session") else ""
    stop = f" (Ctrl-C there, or `kill {holder['pid']}`)" if holder.get("pid") else ""
    return (f"process {pid} is already profiled by {who}{into}: two collectors would split"
            f" its requests between them. Stop that one first{stop}, or wait for it to end")
