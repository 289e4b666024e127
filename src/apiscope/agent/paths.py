"""Where the agent's Unix socket lives, and the checks that keep that place private.

Anyone who can connect to the socket can read every request the app serves, so the directory
must belong to this user and nobody else may write into it. A directory that fails the check is
refused rather than repaired: someone else may have planted it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping


class SocketDirError(PermissionError):
    """The socket directory is owned by someone else or open to other users."""


def socket_dir() -> str:
    """The directory for agent sockets, created 0700 when missing, refused when unsafe.

    `$APISCOPE_SOCKET_DIR` if set, else `$XDG_RUNTIME_DIR/apiscope` when XDG_RUNTIME_DIR
    exists, else `/tmp/apiscope-<uid>`.
    """
    return ensure_private_dir(socket_dir_for(os.environ, os.getuid()))


def socket_dir_for(environ: Mapping[str, str], uid: int, root: str = "") -> str:
    """Where a process with this environment and uid puts its socket (nothing is created).

    The path is the one that process sees; `root` is where its filesystem starts in ours
    (`mount_root`), to tell whether its XDG_RUNTIME_DIR exists.
    """
    explicit = environ.get("APISCOPE_SOCKET_DIR")
    if explicit:
        return explicit
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(root + runtime):
        return os.path.join(runtime, "apiscope")
    return f"/tmp/apiscope-{uid}"


def mount_root(pid: int, proc: str = "/proc") -> str:
    """"" when process `pid` sees our filesystem, else `/proc/PID/root`: its root directory as
    we reach it (a container's, or another mount namespace's), to prefix the paths it uses."""
    try:
        same = os.readlink(f"{proc}/{pid}/ns/mnt") == os.readlink(f"{proc}/self/ns/mnt")
    except OSError:
        return ""  # can't tell (no permission, old kernel): assume the common case
    return "" if same else f"{proc}/{pid}/root"


def namespace_pid(pid: int, proc: str = "/proc") -> int:
    """The pid process `pid` has in its own PID namespace (a container's), which names its
    socket; `pid` itself when it shares ours or when that can't be read."""
    try:
        with open(f"{proc}/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return pid


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


def check_private_dir(path: str, info: os.stat_result, owner: int | None = None) -> None:
    """Raise SocketDirError unless `path` is a real directory of `owner` (default: us) that
    nobody else can write into."""
    owner = os.getuid() if owner is None else owner
    if not stat.S_ISDIR(info.st_mode):
        raise SocketDirError(
            f"{path} is not a directory: remove it or set APISCOPE_SOCKET_DIR to a private "
            "directory"
        )
    if info.st_uid != owner:
        raise SocketDirError(
            f"{path} belongs to uid {info.st_uid}, not to uid {owner}: "
            "set APISCOPE_SOCKET_DIR to a directory you own"
        )
    # Readable is tolerable (the socket itself is 0600); writable lets others swap sockets.
    if info.st_mode & 0o022:
        raise SocketDirError(
            f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}): "
            f"run `chmod 700 {path}` or set APISCOPE_SOCKET_DIR to a private directory"
        )


def library_prefixes() -> tuple[str, ...]:
    """Directory prefixes whose files are not the app's own code.

    The standard library, every site-packages of this interpreter, and apiscope itself (the
    parent of this package: `apiscope/agent/`, or wherever the agent was loaded from).
    """
    import site
    import sysconfig

    dirs: set[str] = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(path)
    try:
        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except AttributeError:  # virtualenv's old site module lacks these
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    dirs.add(os.path.dirname(here) if os.path.basename(here) == "agent" else here)
    # Both spellings: code objects carry whichever path the importer used.
    both = {os.path.join(d, "") for d in dirs}
    both |= {os.path.join(os.path.realpath(d), "") for d in dirs}
    return tuple(sorted(both))


class AppFiles:
    """Tells app code from library code by file name, caching the answer per file.

    The same rules as `apiscope.frames.is_app_frame`, which every view of a session uses; the
    agent runs inside the target and may import nothing of apiscope's, so it keeps this copy:
    change both together. Two differences follow from where it runs: the standard library and
    the installed packages are this very interpreter's directories (the views recognise any
    interpreter's by their paths), and an application installed into site-packages reads as a
    library (the views know the app's directories from the route table).
    """

    def __init__(self, prefixes: tuple[str, ...] | None = None) -> None:
        self._prefixes = prefixes if prefixes is not None else library_prefixes()
        self._cache: dict[str, bool] = {}

    def is_app(self, filename: str, function: str = "") -> bool:
        """True for the application's code; `function` is the code object's name, since a
        module body (`<module>`: an import, the entry script) is never a request's code."""
        if function == "<module>":
            return False
        known = self._cache.get(filename)
        if known is None:
            known = not (
                filename.startswith(self._prefixes)
                or filename.startswith("<")  # <frozen ...>, <string>, generated code
                or "site-packages" in filename
                or "dist-packages" in filename
                # console scripts: `.venv/bin/uvicorn`, `/usr/bin/gunicorn`
                or os.path.basename(os.path.dirname(filename)) in ("bin", "Scripts")
            )
            if len(self._cache) > 10_000:  # generated code could make file names unbounded
                self._cache.clear()
            self._cache[filename] = known
        return known
