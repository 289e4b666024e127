"""Reading a process tree: which processes are Python, which server they run, their workers.

Mostly pure functions over command lines and paths, so the target description and the
resource collector agree on what a server, a worker and a wrapper are.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence

import psutil

SERVERS = ("uvicorn", "gunicorn", "hypercorn", "anycorn", "daphne", "granian")
# How messages name them, and the command that finds their processes.
SERVER_NAMES = ", ".join(SERVERS[:-1]) + " or " + SERVERS[-1]
FIND_SERVERS = f"`pgrep -af '{'|'.join(SERVERS)}'`"
# Servers whose main process never serves a request itself: its workers, once they have
# started, do (granian's Python workers are processes on every GIL build).
MASTERS = ("gunicorn", "granian")

# Programs that start a Python server as a child and wait for it: `uv run`, `poetry run`...
# Some are themselves Python programs (poetry, pipenv, pdm, hatch), so "not Python" is not
# enough to recognise them.
RUNNERS = ("uv", "poetry", "pipenv", "pdm", "hatch", "rye", "pyenv")

_PYTHON_EXE = re.compile(r"^python(\d+(\.\d+)?)?[dmu]*$")
_VERSION_IN_NAME = re.compile(r"python(\d+)\.(\d+)")
_LIBPYTHON = re.compile(r"libpython(\d+)\.(\d+)")
# Interpreter options that take a separate argument (`python -X dev -m uvicorn`).
_OPTIONS_WITH_ARG = frozenset({"-X", "-W", "--check-hash-based-pycs"})


def command_of(cmdline: Sequence[str]) -> str:
    # A title set by setproctitle (`airflow api_server -- host:...`) is padded with spaces.
    return " ".join(cmdline).rstrip()


def is_python_exe(exe: str) -> bool:
    return bool(_PYTHON_EXE.match(os.path.basename(exe)))


def version_from_name(path: str) -> str | None:
    """"3.11" from `/usr/bin/python3.11` or `.../libpython3.11.so.1.0`, else None."""
    match = _VERSION_IN_NAME.search(os.path.basename(path)) or _LIBPYTHON.search(path)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def libpython_version(map_paths: Sequence[str]) -> str | None:
    """The version of a libpython mapped into a process (an embedded or shared-lib Python)."""
    for path in map_paths:
        match = _LIBPYTHON.search(os.path.basename(path))
        if match:
            return f"{match.group(1)}.{match.group(2)}"
    return None


def program_name(cmdline: Sequence[str]) -> str | None:
    """What a command line runs: the `-m` module or script name after the interpreter.

    `python -m gunicorn ...` and `.venv/bin/gunicorn ...` (a script run by its shebang) are
    both "gunicorn"; gunicorn's setproctitle form `gunicorn: worker [app]` too.
    """
    if not cmdline:
        return None
    first = cmdline[0]
    if first.startswith("gunicorn:"):
        return "gunicorn"
    if not is_python_exe(first):
        return _strip_script(os.path.basename(first))
    args = list(cmdline[1:])
    while args:
        arg = args.pop(0)
        if arg == "-m":
            return args[0].split(".")[0] if args else None
        if arg == "-c":
            return None
        if arg in _OPTIONS_WITH_ARG:
            if args:
                args.pop(0)
            continue
        if arg.startswith("-"):
            continue
        return _strip_script(os.path.basename(arg))
    return None


def _strip_script(name: str) -> str:
    return name[:-3] if name.endswith(".py") else name


def server_kind(cmdline: Sequence[str]) -> str | None:
    """"uvicorn", "gunicorn", "hypercorn", "anycorn", "daphne" or "granian" when the command
    line runs one, else None."""
    name = program_name(cmdline)
    return name if name in SERVERS else None


def is_runner(cmdline: Sequence[str]) -> bool:
    """A wrapper such as `uv run` or `poetry run` that runs the server as its child."""
    return program_name(cmdline) in RUNNERS


def is_spawn_worker(cmdline: Sequence[str]) -> bool:
    """A multiprocessing "spawn" child: how uvicorn `--workers N`/`--reload` start workers."""
    return "--multiprocessing-fork" in cmdline or any("spawn_main" in a for a in cmdline[1:3])


def is_multiprocessing_helper(cmdline: Sequence[str]) -> bool:
    """multiprocessing's resource tracker or fork server: a child that serves no requests."""
    return any("resource_tracker" in a or "forkserver" in a for a in cmdline[1:4])


def worker_children(master: psutil.Process, kind: str | None) -> list[psutil.Process]:
    """The children of a server master that serve requests, oldest first.

    gunicorn forks workers with its own command line (or `gunicorn: worker [...]` under
    setproctitle); uvicorn and hypercorn start multiprocessing "spawn" children. The
    multiprocessing resource tracker is a child too, but serves nothing. Under a master no
    server's name shows (`kind` None or "python"), a child running a program of its own that
    holds one of the master's listening sockets is a worker too (see `shares_listener`).
    """
    workers = []
    listening: frozenset[int] | None = None
    for child in _children(master):
        try:
            cmdline = child.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # exited (or became unreadable) since the listing
        if is_multiprocessing_helper(cmdline):
            continue
        if is_spawn_worker(cmdline) or (kind is not None and server_kind(cmdline) == kind) \
                or (kind == "gunicorn" and _once_in_life(
                    "heartbeat", child, holds_gunicorn_heartbeat)):
            workers.append(child)
        elif kind in (None, "python") and type(master) is psutil.Process:
            if listening is None:
                listening = _master_listening(master)
            if listening and shares_listener(master, child, cmdline, listening):
                workers.append(child)
    return workers


def shares_listener(master: psutil.Process, child: psutil.Process, cmdline: Sequence[str],
                    listening: frozenset[int]) -> bool:
    """Whether `child` is a worker handed its master's listening socket: it holds one of the
    master's (`listening`, their inodes) and runs a program of its own. A process manager
    that binds the port and starts workers on the inherited socket does this (BentoML's
    `bentoml serve` runs circus, whose workers are `python -m _bentoml_impl.worker.service
    --fd 3`). A forked child with its parent's command line (a process pool forked after the
    port was bound) holds the socket too, but serves nothing."""
    try:
        if cmdline == master.cmdline():
            return False  # (also a child forked that has not run its program yet)
    except psutil.Error:
        return False
    # Once it runs its own program, what it inherited is settled.
    return _once_in_life("listener", child,
                         lambda pid: not listening.isdisjoint(socket_inodes(pid)))


# What a child's open files said of it, by (question, pid, start time). A process keeps
# what it was started with (a gunicorn worker's heartbeat file, its manager's socket): each
# question is read once in its life, not at each look for new workers (every second), since
# a busy worker holds a socket per connection.
_IN_LIFE: dict[tuple[str, int, float], bool] = {}


def _once_in_life(question: str, proc: psutil.Process, read: Callable[[int], bool]) -> bool:
    """`read(pid)`, remembered for the process's life under `question`."""
    try:
        key = (question, proc.pid, proc.create_time())
    except psutil.Error:
        return False  # gone
    known = _IN_LIFE.get(key)
    if known is None:
        if len(_IN_LIFE) > 1024:
            _IN_LIFE.clear()
        known = _IN_LIFE[key] = read(proc.pid)
    return known


# Masters' listening sockets, by (pid, start time): (when read, their inodes). Workers are
# looked for each second, and the socket tables these are read from list every connection in
# the host's network namespace.
_LISTENING: dict[tuple[int, float], tuple[float, frozenset[int]]] = {}
LISTENING_TTL = 30.0


def _master_listening(master: psutil.Process) -> frozenset[int]:
    try:
        key = (master.pid, master.create_time())
    except psutil.Error:
        return frozenset()
    now = time.monotonic()
    known = _LISTENING.get(key)
    if known is None or now - known[0] >= LISTENING_TTL:
        if len(_LISTENING) > 64:
            _LISTENING.clear()
        known = _LISTENING[key] = (now, listening_sockets(master.pid))
    return known[1]


def listening_sockets(pid: int, proc_root: str = "/proc") -> frozenset[int]:
    """The inodes of the listening sockets (TCP, or Unix for a server on a socket file) the
    process holds, its own or inherited; empty for a process gone or not ours to read."""
    held = socket_inodes(pid, proc_root)
    return frozenset(held & _listening_inodes(pid, proc_root)) if held else frozenset()


def socket_inodes(pid: int, proc_root: str = "/proc") -> set[int]:
    """The inodes of the sockets among the process's open files."""
    found = set()
    try:
        with os.scandir(f"{proc_root}/{pid}/fd") as entries:
            for entry in entries:
                try:
                    target = os.readlink(entry.path)
                except OSError:
                    continue  # closed since the listing
                if target.startswith("socket:["):
                    found.add(int(target[8:-1]))
    except (OSError, ValueError):
        return set()
    return found


def _listening_inodes(pid: int, proc_root: str) -> set[int]:
    """The inodes of the listening sockets in the process's network namespace."""
    found = set()
    for table, listening in (("tcp", _tcp_listening), ("tcp6", _tcp_listening),
                             ("unix", _unix_listening)):
        try:
            with open(f"{proc_root}/{pid}/net/{table}", "rb") as f:
                next(f, None)  # the header
                for line in f:
                    inode = listening(line.split())
                    if inode is not None:
                        found.add(inode)
        except OSError:
            continue  # no such table (IPv6 off), or the process is gone
    return found


def _tcp_listening(fields: list[bytes]) -> int | None:
    # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...; st 0A is LISTEN.
    if len(fields) > 9 and fields[3] == b"0A" and fields[9].isdigit():
        return int(fields[9])
    return None


def _unix_listening(fields: list[bytes]) -> int | None:
    # Num RefCount Protocol Flags Type St Inode [Path]; flag 0x10000 is a listening socket.
    try:
        if len(fields) > 6 and int(fields[3], 16) & 0x10000:
            return int(fields[6])
    except ValueError:
        pass
    return None


def holds_gunicorn_heartbeat(pid: int) -> bool:
    """Whether the process holds a gunicorn worker's heartbeat file (`wgunicorn-*`, made in
    `worker_tmp_dir` and unlinked at once): gunicorn's arbiter holds each of its workers', and
    each worker its own, whatever their command line. A program that runs gunicorn's arbiter
    itself (`gunicorn.app.base.BaseApplication`: `feast serve` does) names no server, and its
    forked workers show the program's command line."""
    try:
        with os.scandir(f"/proc/{pid}/fd") as entries:
            for entry in entries:
                try:
                    if "/wgunicorn-" in os.readlink(entry.path):
                        return True
                except OSError:
                    continue  # closed since the listing
    except OSError:
        return False  # gone, or not ours to read
    return False


def _children(proc: psutil.Process) -> list[psutil.Process]:
    # The kernel's lists for a real process; psutil's search otherwise (and for stand-ins).
    pids = child_pids(proc.pid) if type(proc) is psutil.Process else None
    if pids is None:
        try:
            return sorted(proc.children(), key=lambda p: p.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return []
    children = []
    for pid in pids:
        try:
            children.append(psutil.Process(pid))
        except psutil.Error:
            continue  # exited since the listing
    return children


def child_pids(pid: int, proc_root: str = "/proc") -> list[int] | None:
    """The pids of `pid`'s children, sorted, from the kernel's list of each of its threads'
    children (`/proc/PID/task/TID/children`); None where the kernel keeps no such lists.

    psutil finds children by reading the stat file of every process on the machine: asked
    every second for new workers, that was a fifth of the collector's polling CPU on a host
    running a few hundred processes. An empty list is also the answer for a process gone."""
    if not _children_lists(proc_root):
        return None
    found: set[int] = set()
    try:
        tids = os.listdir(f"{proc_root}/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"{proc_root}/{pid}/task/{tid}/children", "rb") as f:
                found.update(int(field) for field in f.read().split())
        except (OSError, ValueError):
            continue  # the thread ended since the listing
    return sorted(found)


_CHILDREN_LISTS: dict[str, bool] = {}


def _children_lists(proc_root: str) -> bool:
    """Whether this kernel keeps each thread's children (CONFIG_PROC_CHILDREN), asked once."""
    known = _CHILDREN_LISTS.get(proc_root)
    if known is None:
        me = os.getpid()
        known = _CHILDREN_LISTS[proc_root] = os.path.exists(
            f"{proc_root}/{me}/task/{me}/children")
    return known
