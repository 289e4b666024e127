"""Where the agent's Unix socket lives, and the checks that keep that place private.

Anyone who can connect to the socket can read every request the app serves, so the directory
must belong to this user and nobody else may write into it. A directory that fails the check is
refused rather than repaired: someone else may have planted it.
"""

from __future__ import annotations

import os
import stat


class SocketDirError(PermissionError):
    """The socket directory is owned by someone else or open to other users."""


def socket_dir() -> str:
    """The directory for agent sockets, created 0700 when missing, refused when unsafe.

    `$APISCOPE_SOCKET_DIR` if set, else `$XDG_RUNTIME_DIR/apiscope` when XDG_RUNTIME_DIR
    exists, else `/tmp/apiscope-<uid>`.
    """
    explicit = os.environ.get("APISCOPE_SOCKET_DIR")
    if explicit:
        return ensure_private_dir(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return ensure_private_dir(os.path.join(runtime, "apiscope"))
    return ensure_private_dir(f"/tmp/apiscope-{os.getuid()}")


def socket_path(pid: int, directory: str | None = None) -> str:
    """`<dir>/agent-<pid>.sock`; `directory` defaults to `socket_dir()`."""
    base = directory if directory is not None else socket_dir()
    return os.path.join(base, f"agent-{pid}.sock")


def ensure_private_dir(path: str) -> str:
    """Create `path` with mode 0700 if missing; raise SocketDirError if it is not private."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    # lstat: a symlink planted in /tmp by another user must not redirect us elsewhere.
    info = os.lstat(path)
    check_private_dir(path, info)
    return path


def check_private_dir(path: str, info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise SocketDirError(
            f"{path} is not a directory: remove it or set APISCOPE_SOCKET_DIR to a private "
            "directory"
        )
    if info.st_uid != os.getuid():
        raise SocketDirError(
            f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.getuid()}): "
            "set APISCOPE_SOCKET_DIR to a directory you own"
        )
    # Readable is tolerable (the socket itself is 0600); writable lets others swap sockets.
    if info.st_mode & 0o022:
        raise SocketDirError(
            f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}): "
            f"run `chmod 700 {path}` or set APISCOPE_SOCKET_DIR to a private directory"
        )
