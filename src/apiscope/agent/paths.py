"""Where the agent's Unix socket lives, and the checks that keep that place private.

Anyone who can connect to the socket can read every request the app serves, so the directory
must belong to this user and nobody else may write into it. A directory that fails the check is
refused rather than repaired: someone else may have planted it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from typing import Any


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
    interpreter's by their paths), and an application installed into site-packages is known
    from the route table, as the views know it (`learn_routes`, `installed_app_roots`).
    """

    def __init__(self, prefixes: tuple[str, ...] | None = None) -> None:
        self._prefixes = prefixes if prefixes is not None else library_prefixes()
        self._cache: dict[str, bool] = {}
        self._installed: tuple[str, ...] = ()  # an installed application's directories

    def learn_routes(self, rows: list[dict[str, Any]]) -> None:
        """Take the directories of an application installed into site-packages from its route
        table (called with each new table)."""
        roots = installed_app_roots(rows)
        if roots != self._installed:
            self._installed = roots
            self._cache = {}

    def is_app(self, filename: str, function: str = "") -> bool:
        """True for the application's code; `function` is the code object's name, since a
        module body (`<module>`: an import, the entry script) is never a request's code."""
        if function == "<module>":
            return False
        known = self._cache.get(filename)
        if known is None:
            known = filename.startswith(self._installed) if self._installed else False
            known = known or not (
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


# Handlers the web frameworks serve themselves (FastAPI's documentation pages, Django's admin):
# no application's. The same list as the views' (`apiscope.analysis.attribution.FRAMEWORKS`).
FRAMEWORK_MODULES = ("fastapi.", "starlette.", "litestar.", "django.", "rest_framework.",
                     "ninja.")


def installed_app_roots(rows: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """The directories of an application installed into site-packages, from its route table:
    the top-level package of each handler's module (a top-level module: its file), when every
    handler but the frameworks' own is installed. Beside handlers of the application's own
    directories, installed ones are a library's routes (an auth library's login), and that
    library is not the application's code. The rule of `apiscope.analysis.attribution.app_roots`,
    which the views apply: change both together."""
    roots: set[str] = set()
    for row in rows:
        if row.get("view_file"):  # the app's class serving a library's method: its module
            module, file = str(row.get("view", "")).split(":", 1)[0], str(row["view_file"])
        else:
            handler = str(row.get("handler", ""))
            if handler.startswith(FRAMEWORK_MODULES):
                continue
            module, file = handler.split(":", 1)[0], str(row.get("file") or "")
        if not os.path.isabs(file):
            continue
        if "site-packages" not in file and "dist-packages" not in file:
            return ()  # the application lives in its own directories
        parts = module.split(".") if module else []
        if len(parts) > 1:
            depth = len(parts) - 1 if os.path.basename(file) != "__init__.py" else len(parts)
            root = file
            for _ in range(depth):
                root = os.path.dirname(root)
            roots.add(os.path.join(root, ""))
        else:
            roots.add(file)
    return tuple(sorted(roots))
