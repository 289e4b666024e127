"""Where the injector and the injected agent meet: the directory of the status file and socket.

A target run by our own user, in our own mount namespace, meets us in our socket directory
(`socket_dir()`, or the one given), and loads the agent from apiscope's files, as it always
did. Any other target is *foreign*: another user's server (root attaching to a service
account's uvicorn), or one whose filesystem is not ours (a container, another mount
namespace). A foreign target could neither enter our private directory nor read our files, so:

- it meets us in its *own* socket directory, the one its agent would use anyway
  (`socket_dir_for` over its environment and uid, as the agent computes it): created by the
  target itself, owned by its uid, mode 0700. Nobody but that user and root can enter it; the
  agent also checks each peer's uid on connect (`SO_PEERCRED`, see `agent/transport.py`);
- we reach that directory through `/proc/PID/root` when its mount namespace differs from ours;
- the agent's code travels inside the injected snippet instead of as a path (see `snippet`), so
  nothing is written into the target's filesystem by us and nothing of ours is put on its
  `sys.path`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from apiscope.agent.paths import (
    SocketDirError,
    check_private_dir,
    ensure_private_dir,
    mount_root,
    namespace_pid,
    socket_dir,
    socket_dir_for,
)
from apiscope.errors import TargetError, UsageError


@dataclass(frozen=True)
class Rendezvous:
    """The meeting directory for one target, as each side sees it."""

    pid: int  # the target as we see it
    ns_pid: int  # the target as it sees itself (in its PID namespace): names its files
    uid: int  # the target's (real) uid
    inside: str  # the directory, as the target sees it
    outside: str  # the same directory, as we reach it
    foreign: bool  # another user or another mount namespace: the agent's code is sent along
    root: str = ""  # where the target's filesystem starts in ours ("": it is ours)


def rendezvous(pid: int, directory: str | None = None, proc: str = "/proc") -> Rendezvous:
    """Where to meet process `pid` (see the module docstring); `directory`, when given, is the
    directory to use instead of the default one (created as ours for our own targets)."""
    uid, environ = _owner_and_environ(pid, proc)
    root = mount_root(pid, proc)
    ns_pid = namespace_pid(pid, proc)
    if uid == os.getuid() and not root:
        try:
            mine = ensure_private_dir(directory) if directory is not None else socket_dir()
        except SocketDirError as exc:
            raise UsageError(f"unsafe agent socket directory: {exc}") from None
        except OSError as exc:
            raise UsageError(f"cannot create the agent socket directory: {exc}. Set"
                             " APISCOPE_SOCKET_DIR to a private directory you own") from None
        return Rendezvous(pid, ns_pid, uid, mine, mine, foreign=False)
    inside = directory if directory is not None else socket_dir_for(environ, uid, root)
    outside = root + inside
    _check_theirs(outside, uid)
    return Rendezvous(pid, ns_pid, uid, inside, outside, foreign=True, root=root)


def _owner_and_environ(pid: int, proc: str) -> tuple[int, dict[str, str]]:
    try:
        with open(f"{proc}/{pid}/status", encoding="utf-8") as status:
            uid = next(int(line.split()[1]) for line in status if line.startswith("Uid:"))
        with open(f"{proc}/{pid}/environ", "rb") as raw:
            items = raw.read().split(b"\0")
    except (OSError, StopIteration, ValueError) as exc:
        raise TargetError(f"cannot read the owner and environment of PID {pid} ({exc}): run"
                          " apiscope as root or as the user that runs the server") from None
    pairs = (item.decode(errors="replace").partition("=") for item in items if b"=" in item)
    return uid, {key: value for key, _, value in pairs}


def _check_theirs(outside: str, uid: int) -> None:
    """A directory that exists must be the target user's own and private (the agent creates it
    so when it does not exist yet)."""
    try:
        info = os.lstat(outside)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TargetError(f"cannot reach the server's agent directory {outside}: {exc}. Run"
                          " apiscope as root (or with CAP_DAC_OVERRIDE) to attach to another"
                          " user's server or a container") from None
    try:
        check_private_dir(outside, info, owner=uid)
    except SocketDirError as exc:
        raise UsageError(f"unsafe agent socket directory in the server's view: {exc}") from None


def make_theirs(place: Rendezvous) -> None:
    """Create a foreign target's directory for it (mode 0700, its uid), when we must put a file
    there before its code runs (`sys.remote_exec` reads a script file). Needs root."""
    try:
        os.mkdir(place.outside, 0o700)
    except FileExistsError:
        _check_theirs(place.outside, place.uid)
        return
    except OSError as exc:
        raise TargetError(f"cannot create the server's agent directory {place.outside}: {exc}."
                          " Run apiscope as root to attach to another user's server or a"
                          " container") from None
    os.chown(place.outside, place.uid, -1, follow_symlinks=False)
