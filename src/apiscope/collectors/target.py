"""What the target PID is: which server, which processes to sample, which Python.

`describe_target` turns the PID a user typed into a `Target`: a gunicorn master's workers, a
uvicorn `--workers N` supervisor's spawned children, or a single process. A wrapper that is not
the server (`sh -c`, a pyenv shim, `uv run`, `poetry run`) is followed to its one Python child,
with a note saying so. Unusable targets raise `TargetError` (exit code 2) naming the fix.
`check_ptrace` predicts, from the kernel's rules, whether py-spy and the injector will be refused.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from apiscope.collectors.proctree import (
    FIND_SERVERS,
    MASTERS,
    SERVER_NAMES,
    command_of,
    holds_gunicorn_heartbeat,
    is_python_exe,
    is_runner,
    is_spawn_worker,
    libpython_version,
    server_kind,
    version_from_name,
    worker_children,
)
from apiscope.errors import TargetError
from apiscope.model import ProcessInfo
from apiscope.permissions import other_user_refusal, ptrace_denied, yama_refusal

ProcFactory = Callable[[int], psutil.Process]
Runner = Callable[..., "subprocess.CompletedProcess[str]"]

CAP_SYS_PTRACE = 19
_WRAPPER_DEPTH = 4  # sh -> pyenv shim -> pyenv exec -> python is as deep as wrappers go
_FULL_VERSION = re.compile(r"Python (\d+\.\d+\.\d+\S*)")


@dataclass(frozen=True)
class Target:
    """The server behind a PID, and the processes to sample."""

    pid: int  # the PID given, or the Python child of a wrapper it resolved to
    pids: list[int]  # the processes serving requests: workers of a master, else `pid`
    master_pid: int | None
    server: str  # "uvicorn", "gunicorn", "hypercorn", "anycorn", "daphne", "granian"; "python"
    command: str
    python_version: str  # "3.11.7", or "3.11" when only the major.minor could be read
    processes: list[ProcessInfo]
    notes: list[str] = field(default_factory=list)  # warnings for the user

    @property
    def sample_pid(self) -> int:
        """Where py-spy attaches: the master (with its subprocesses) or the process itself."""
        return self.master_pid if self.master_pid is not None else self.pid


def describe_target(pid: int, *, proc_factory: ProcFactory = psutil.Process,
                    clock: Callable[[], float] = time.time, check_trace: bool = True,
                    run: Runner = subprocess.run) -> Target:
    """Describe the server at `pid`; raise `TargetError` when it cannot be profiled."""
    try:
        return _describe(pid, proc_factory, clock, check_trace, run)
    except psutil.ZombieProcess:
        raise TargetError(f"process {pid} has exited (it is a zombie): start the server"
                          " again and give its new PID") from None
    except psutil.NoSuchProcess as exc:
        raise TargetError(f"no process with PID {exc.pid or pid}: check the PID (for example"
                          f" {FIND_SERVERS}); the server may have exited") from None
    except psutil.AccessDenied as exc:
        raise TargetError(_access_denied_message(exc.pid or pid, proc_factory)) from None


def _describe(pid: int, proc_factory: ProcFactory, clock: Callable[[], float],
              check_trace: bool, run: Runner) -> Target:
    proc = proc_factory(pid)
    notes: list[str] = []
    if not is_python(proc) or is_runner(proc.cmdline()):
        child = _follow_wrapper(proc)
        if child is not proc:
            notes.append(f"PID {pid} ({_short(proc.cmdline())}) is a wrapper, not the server:"
                         f" profiling its Python child {child.pid} ({_short(child.cmdline())})")
            proc = child
    elif server_kind(proc.cmdline()) is None and not is_spawn_worker(proc.cmdline()):
        proc = _follow_launcher(proc, notes)
    target = _classify(proc, proc_factory, clock, notes)
    if check_trace:
        for traced in {target.sample_pid, *target.pids}:
            check_ptrace(traced, proc_factory=proc_factory)
    return replace(target, python_version=python_version(proc, run=run))


def is_python(proc: psutil.Process) -> bool:
    """A CPython interpreter, by its executable's name or a libpython mapped into it."""
    if is_python_exe(proc.exe()):
        return True
    return _mapped_libpython(proc) is not None


def _mapped_libpython(proc: psutil.Process) -> str | None:
    try:
        return libpython_version([m.path for m in proc.memory_maps(grouped=True)])
    except (psutil.AccessDenied, OSError):
        return None


def _follow_wrapper(proc: psutil.Process) -> psutil.Process:
    """The one topmost Python descendant of a wrapper; `proc` itself for a Python runner
    without Python children; else TargetError."""
    found = _python_descendants(proc, _WRAPPER_DEPTH)
    if len(found) == 1:
        return found[0]
    what = f"PID {proc.pid} ({_short(proc.cmdline())})"
    if not found:
        if is_python_exe(proc.exe()):
            return proc  # a Python runner that runs nothing: profile it as it is
        raise TargetError(f"{what} is not a Python process: give the PID of the"
                          f" {SERVER_NAMES} process (find it with {FIND_SERVERS})")
    listing = "; ".join(f"{p.pid} ({_short(p.cmdline())})" for p in found)
    raise TargetError(f"{what} is not a Python process and has several Python children:"
                      f" {listing}. Run apiscope attach with one of these PIDs")


def _follow_launcher(proc: psutil.Process, notes: list[str]) -> psutil.Process:
    """The one server a Python program started as a child process (`mlflow server` runs
    `python -m uvicorn --workers N`, a manage script runs `gunicorn`), else `proc` itself. A
    launcher waits for its child in C code, so an agent injected into it would never load;
    and it serves nothing. A program that starts several servers is left as it is, with a
    note naming them."""
    descendants = _python_descendants(proc, _WRAPPER_DEPTH)
    kinds = [(p, _kind_of(p)) for p in descendants]
    servers = [(p, kind) for p, kind in kinds if kind is not None]
    what = f"PID {proc.pid} ({_short(proc.cmdline())})"
    if not servers:
        return _follow_listener(proc, descendants, what, notes)
    if len(servers) > 1:
        listing = "; ".join(f"{p.pid} ({_short(p.cmdline())})" for p, _ in servers)
        notes.append(f"{what} is no server apiscope knows, and it started several: {listing}."
                     " If it serves no requests itself, attach to one of these instead")
        return proc
    ((server, kind),) = servers
    notes.append(f"{what} started the server: profiling its {kind} process {server.pid}"
                 f" ({_short(server.cmdline())})")
    return server


def _follow_listener(proc: psutil.Process, descendants: list[psutil.Process], what: str,
                     notes: list[str]) -> psutil.Process:
    """The one Python child that listens on a TCP port, when `proc` listens on none: a
    program that runs `uvicorn.Server(...).run` in a `multiprocessing` child (LNbits does) shows
    its own command line in the child, which names no server, and waits for it in C code.
    Anything else is `proc` itself."""
    if not descendants or _listens(proc):
        return proc
    listening = [p for p in descendants if _listens(p)]
    if len(listening) != 1:
        return proc
    (server,) = listening
    notes.append(f"{what} listens on no port and its child {server.pid} does: profiling the"
                 " child, which serves the requests")
    return server


def _listens(proc: psutil.Process) -> bool:
    """Whether the process holds a listening TCP socket (its own or one it inherited)."""
    connections = getattr(proc, "net_connections", None) or proc.connections
    try:
        return any(c.status == psutil.CONN_LISTEN for c in connections(kind="inet"))
    except (psutil.Error, OSError):
        return False


def _kind_of(proc: psutil.Process) -> str | None:
    try:
        return server_kind(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _python_descendants(proc: psutil.Process, depth: int) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    if depth == 0:
        return found
    for child in sorted(proc.children(), key=lambda p: p.pid):
        try:
            if is_python(child) and not is_runner(child.cmdline()):
                found.append(child)
            else:
                found.extend(_python_descendants(child, depth - 1))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # a short-lived helper, or someone else's process
    return found


def _classify(proc: psutil.Process, proc_factory: ProcFactory, clock: Callable[[], float],
              notes: list[str]) -> Target:
    """Master, worker or single process, and which processes serve requests."""
    cmdline = proc.cmdline()
    kind = _server_of(proc, cmdline)
    now = clock()
    parent = _parent(proc, proc_factory)
    parent_kind = _server_of(parent, parent.cmdline()) if parent is not None else None
    if kind == "gunicorn" and server_kind(cmdline) is None and parent_kind != kind:
        notes.append(f"PID {proc.pid} ({_short(cmdline)}) runs gunicorn's arbiter itself:"
                     " profiling its workers")
    info = ProcessInfo(pid=proc.pid, ppid=proc.ppid(), role="single",
                       command=command_of(cmdline), first_seen=now)
    base = Target(pid=proc.pid, pids=[proc.pid], master_pid=None, server=kind or "python",
                  command=info.command, python_version="", processes=[info], notes=notes)
    if parent is not None and (is_spawn_worker(cmdline) or (kind and kind == parent_kind)):
        # The user named one worker: profile that worker alone, as asked.
        boss = f"{parent_kind} master" if parent_kind else "parent process"
        notes.append(f"PID {proc.pid} is a worker of {boss} {parent.pid}: profiling this"
                     f" worker only (attach to {parent.pid} to profile every worker)")
        return replace(base, server=parent_kind or kind or "python",
                       processes=[replace(info, role="worker")])
    workers = worker_children(proc, kind) if kind is not None else _spawned_servers(proc)
    if kind is None and workers:
        notes.append(f"PID {proc.pid} ({_short(cmdline)}) started {len(workers)} worker"
                     f" processes that listen on its port: profiling them as its workers")
    if kind in MASTERS or workers:
        if not workers:
            notes.append(f"{kind} master {proc.pid} has no workers yet: they are picked up"
                         " as they start")
        infos = [replace(info, role="master")] + _worker_infos(workers, proc.pid, now)
        return replace(base, pids=[i.pid for i in infos[1:]], master_pid=proc.pid,
                       processes=infos)
    return base


def _server_of(proc: psutil.Process, cmdline: Sequence[str]) -> str | None:
    """The server a process runs: by its command line, else "gunicorn" for a program that
    runs gunicorn's arbiter itself or one of its workers (`holds_gunicorn_heartbeat`)."""
    kind = server_kind(cmdline)
    if kind is None and type(proc) is psutil.Process and holds_gunicorn_heartbeat(proc.pid):
        return "gunicorn"
    return kind


def _spawned_servers(proc: psutil.Process) -> list[psutil.Process]:
    """The multiprocessing children of a program no server's name shows that listen on a TCP
    port: `uvicorn.run(app, workers=N)` called by the program itself (Airflow's
    `airflow api-server`, which also renames its process) binds the port and hands it to
    spawned workers, and serves nothing itself. Children that listen on no port (a process
    pool doing the app's work) are not workers: the program serves, and is profiled itself."""
    spawned = worker_children(proc, None)
    listening = [child for child in spawned if _listens(child)]
    return listening if listening and len(listening) == len(spawned) else []


def _parent(proc: psutil.Process, proc_factory: ProcFactory) -> psutil.Process | None:
    ppid = proc.ppid()
    if ppid <= 1:
        return None
    try:
        parent = proc_factory(ppid)
        parent.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return parent


def _worker_infos(workers: list[psutil.Process], master: int, now: float) -> list[ProcessInfo]:
    infos = []
    for worker in workers:
        try:
            command = command_of(worker.cmdline())
        except psutil.NoSuchProcess:
            continue  # a worker the master is replacing right now: refresh() finds the next
        infos.append(ProcessInfo(pid=worker.pid, ppid=master, role="worker", command=command,
                                 first_seen=now))
    return infos


def python_version(proc: psutil.Process, *, run: Runner = subprocess.run) -> str:
    """"3.11.7" when the interpreter can tell, else "3.11" from a file name, else "unknown".

    Only a binary named like a Python interpreter is ever run (`--version` exits before any
    start-up code); it is run through /proc/PID/exe, the very file the target executes, which
    still works when the target lives in another mount namespace or its binary was replaced.
    """
    exe = proc.exe()
    short = version_from_name(exe) or _mapped_libpython(proc)
    if is_python_exe(exe):
        full = _ask_interpreter(f"/proc/{proc.pid}/exe", run)
        if full and (short is None or full.startswith(short + ".")):
            return full
    return short or "unknown"


def _ask_interpreter(exe: str, run: Runner) -> str | None:
    try:
        done = run([exe, "--version"], capture_output=True, text=True, timeout=5,
                   env={"PATH": os.environ.get("PATH", "")})
    except (OSError, subprocess.SubprocessError):
        return None
    match = _FULL_VERSION.search(done.stdout + done.stderr)
    return match.group(1) if match else None


def _short(cmdline: Sequence[str], limit: int = 80) -> str:
    text = command_of(cmdline) or "?"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- ptrace ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PtraceEnv:
    """What decides whether this process may trace another (see ptrace(2), Yama)."""

    uid: int
    gid: int
    cap_sys_ptrace: bool
    yama_scope: int | None  # None when the Yama module is absent

    @classmethod
    def current(cls, proc_root: Path = Path("/proc")) -> PtraceEnv:
        scope_file = proc_root / "sys/kernel/yama/ptrace_scope"
        try:
            scope: int | None = int(scope_file.read_text().strip())
        except (OSError, ValueError):
            scope = None
        return cls(uid=os.getuid(), gid=os.getgid(),
                   cap_sys_ptrace=_has_capability(proc_root / "self/status", CAP_SYS_PTRACE),
                   yama_scope=scope)


def _has_capability(status_file: Path, cap: int) -> bool:
    try:
        for line in status_file.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def ptrace_refusal(env: PtraceEnv, pid: int, uids: Sequence[int], gids: Sequence[int],
                   owner: str) -> str | None:
    """Why the kernel will refuse to let us trace `pid`, with the fix; None when it allows it.

    The kernel's order: Yama scope 3 refuses everyone; otherwise CAP_SYS_PTRACE allows all;
    without it the target must run as our user (all its uids and gids) and Yama must be at 0
    (scope 1 only lets a process trace its own descendants, and py-spy is not the server's
    parent; scope 2 is for CAP_SYS_PTRACE only).
    """
    head = f"cannot trace PID {pid}"
    if env.yama_scope == 3:
        return yama_refusal(head, 3)
    if env.cap_sys_ptrace:
        return None
    if any(u != env.uid for u in uids) or any(g != env.gid for g in gids):
        return other_user_refusal(head, owner, env.uid)
    if env.yama_scope in (1, 2):
        return yama_refusal(head, env.yama_scope)
    return None


def check_ptrace(pid: int, *, env: PtraceEnv | None = None,
                 proc_factory: ProcFactory = psutil.Process) -> None:
    """Raise `TargetError` (exit 2) when tracing `pid` will be refused, saying how to fix it."""
    env = env or PtraceEnv.current()
    try:
        proc = proc_factory(pid)
        uids, gids, owner = tuple(proc.uids()), tuple(proc.gids()), _owner(proc)
    except psutil.NoSuchProcess:
        raise TargetError(f"no process with PID {pid}: the server may have exited") from None
    reason = ptrace_refusal(env, pid, uids, gids, owner)
    if reason is not None:
        raise TargetError(reason)


def _owner(proc: psutil.Process) -> str:
    try:
        return proc.username()
    except (KeyError, psutil.Error):
        return f"uid {proc.uids().real}"


def _access_denied_message(pid: int, proc_factory: ProcFactory,
                           env: PtraceEnv | None = None) -> str:
    try:
        owner = _owner(proc_factory(pid))
    except psutil.Error:
        owner = "another user"
    env = env or PtraceEnv.current()
    if env.uid == 0 or env.cap_sys_ptrace:
        # Telling root to run as root helps nobody: the kernel itself guards this process.
        init = " (the init process of this machine or container)" if pid == 1 else ""
        return (f"permission denied reading process {pid}{init}, run by {owner}, although"
                " apiscope runs as root or with CAP_SYS_PTRACE: the kernel protects it (a"
                " security module, a /proc mounted with hidepid, or a process outside this"
                " container's reach). It is not a server apiscope can profile: give the PID of"
                f" the {SERVER_NAMES} process ({FIND_SERVERS})")
    return ptrace_denied(f"permission denied reading process {pid} (run by {owner})")
