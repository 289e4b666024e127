"""Running the agent's bootstrap inside a live server, and taking the agent out again.

`inject_agent(pid)` checks the target, schedules the loader snippet on the target's main thread
(`Py_AddPendingCall` below Python 3.14, called with ptrace on x86-64 Linux (`inject.ptrace`)
and with gdb elsewhere; `sys.remote_exec` from 3.14 on), waits for the
status the bootstrap writes, and returns it. `eject_agent(pid)` does the same for detach. The
target keeps serving throughout: the debugger only stops it for as long as it takes to schedule
the call (a fraction of a second), and is always detached, never left attached or killing it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

from apiscope.errors import ToolMissingError
from apiscope.inject import ptrace
from apiscope.inject.errors import InjectionFailed
from apiscope.inject.gdb import (
    attach_refused,
    check_gdb_output,
    gdb_argv,
    gdb_lookup_script,
    gdb_script,
    parse_functions,
    python_missing,
)
from apiscope.inject.remote import (
    REMOTE_EXEC_VERSION,
    check_remote_exec,
    remote_exec_argv,
    remote_script_path,
    write_script,
)
from apiscope.inject.rendezvous import Rendezvous, make_theirs, rendezvous
from apiscope.inject.result import InjectionResult, result_path, wait_for_result
from apiscope.inject.runner import Runner, RunResult, run_with_deadline
from apiscope.inject.snippet import InjectArgs, build_snippet
from apiscope.inject.symbols import Functions, find_functions
from apiscope.inject.target import check_target

RESULT_TIMEOUT = 15.0  # for the target to reach a safe point and run the bootstrap
DEBUGGER_TIMEOUT = 30.0  # attaching gdb to a big process and loading its symbols included
# A refused attach is retried (inside gdb when it has Python, else by running gdb again): a
# profiler such as py-spy (blocking mode) traces the target for a moment at every sample, and
# the kernel refuses a second tracer meanwhile.
ATTACH_ATTEMPTS = 5
ATTACH_BACKOFF = 0.1  # seconds, times the attempt number

TargetCheck = Callable[[int], "tuple[int, int] | None"]


def inject_agent(pid: int, directory: str | None = None, *, runner: Runner = run_with_deadline,
                 timeout: float = RESULT_TIMEOUT, check: TargetCheck = check_target,
                 ) -> InjectionResult:
    """Start the agent in `pid` and put it in front of every ASGI app the process serves.

    Safe to repeat: an app already wrapped is left as it is. A Python process that serves no
    app is not an error: the result's `note` says so and nothing is started there.
    """
    return _run_in_target(pid, "attach", directory, runner, timeout, check)


def eject_agent(pid: int, directory: str | None = None, *, runner: Runner = run_with_deadline,
                timeout: float = RESULT_TIMEOUT, check: TargetCheck = check_target,
                ) -> InjectionResult:
    """Restore the apps' own middleware in `pid` and stop its agent (a no-op without one)."""
    return _run_in_target(pid, "detach", directory, runner, timeout, check)


def _run_in_target(pid: int, action: str, directory: str | None, runner: Runner,
                   timeout: float, check: TargetCheck) -> InjectionResult:
    started = time.monotonic()
    version = check(pid)
    place = rendezvous(pid, directory)  # another user's or a container's: see rendezvous
    path = result_path(place.outside, place.ns_pid)
    _remove(path)  # a status left by an earlier run must not be mistaken for this one
    token = secrets.token_hex(8)
    snippet = build_snippet(InjectArgs(action=action, directory=place.inside,
                                       result=result_path(place.inside, place.ns_pid),
                                       token=token, embed=place.foreign,
                                       offer_pyinstrument=not place.root))
    use_remote = version is not None and version >= REMOTE_EXEC_VERSION
    debugger_started = time.time()
    debugger_span: tuple[float, float] | None = None
    try:
        if use_remote:
            debugger_seconds = _schedule_remote_exec(pid, snippet, place, runner)
            method = "remote_exec"
        else:
            debugger_seconds, method = _schedule_pending_call(pid, snippet, place, runner)
        debugger_span = (debugger_started, time.time())
        status = wait_for_result(path, token, pid, timeout)
        _remove(path)
        if use_remote:
            _remove(remote_script_path(place.outside, place.ns_pid))  # the target has run it
        if not status.get("ok"):
            raise InjectionFailed(f"the agent failed inside PID {pid}:"
                                  f" {status.get('error', 'no reason given')}")
    except InjectionFailed as exc:  # the target was held all the same: say for how long
        exc.debugger_span = debugger_span or (debugger_started, time.time())
        raise
    return InjectionResult(pid=pid, action=action, method=method,
                           status=status, seconds=time.monotonic() - started,
                           debugger_seconds=debugger_seconds,
                           debugger_span=debugger_span)


def _schedule_pending_call(pid: int, snippet: str, place: Rendezvous,
                           runner: Runner) -> tuple[float, str]:
    """Schedule the snippet as a pending call; the seconds it took and how ("ptrace", "gdb").

    On x86-64 Linux the calls are made with ptrace (`inject.ptrace`), gdb only looking the
    functions up when they could not be read from the process's files; elsewhere gdb makes them.
    """
    # Found before the target is stopped, so that nothing reads symbols while it is held.
    functions = find_functions(pid)
    if not ptrace.supported():
        return _schedule_gdb(pid, snippet, place, runner, functions), "gdb"
    looked_up = 0.0
    if functions is None:
        run, attempt = _run_gdb(pid, place, runner, gdb_lookup_script)
        functions, looked_up = parse_functions(pid, run, attempt), run.seconds
    return looked_up + _schedule_ptrace(pid, snippet, functions, runner), "ptrace"


def _schedule_ptrace(pid: int, snippet: str, functions: Functions, runner: Runner) -> float:
    fd, text = tempfile.mkstemp(prefix="inject-", suffix=".py")  # private: mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(snippet.encode())
        run = runner([sys.executable, "-m", "apiscope.inject.ptrace", str(pid),
                      hex(functions.mmap), hex(functions.add_pending_call),
                      hex(functions.run_simple_string), text], DEBUGGER_TIMEOUT)
    finally:
        _remove(text)
    check_gdb_output(pid, run, tool="apiscope")
    return run.seconds


def _schedule_gdb(pid: int, snippet: str, place: Rendezvous, runner: Runner,
                  functions: Functions | None) -> float:
    run, attempt = _run_gdb(pid, place, runner,
                            lambda attach_pid: gdb_script(snippet, attach_pid, functions))
    check_gdb_output(pid, run, attempt)
    return run.seconds


def _run_gdb(pid: int, place: Rendezvous, runner: Runner,
             script_for: Callable[[int | None], str]) -> tuple[RunResult, int]:
    """Run the gdb script `script_for(pid)` (gdb attaches itself, retrying refusals), or
    `script_for(None)` with `-p` for a gdb without Python; the run and the attempts made."""
    gdb = shutil.which("gdb")
    if gdb is None:
        raise ToolMissingError("gdb is not installed, and injecting the latency agent into a"
                               " running server needs it: install it (`apt-get install gdb`,"
                               " `dnf install gdb`), or add the agent in code with"
                               " `instrument(app)`")
    # gdb runs as us and reads the script from our side: a foreign target's directory may not
    # exist yet (its agent creates it).
    fd, script = tempfile.mkstemp(prefix="inject-", suffix=".gdb",
                                  dir=None if place.foreign else place.outside)
    os.close(fd)
    try:
        _write_text(script, script_for(pid))
        run = runner(gdb_argv(gdb, pid, script), DEBUGGER_TIMEOUT)
        attempt = 1
        if python_missing(run):  # nothing was attached: attach with -p, retrying from here
            _write_text(script, script_for(None))
            run, attempt = _retry_refused(
                lambda: runner(gdb_argv(gdb, pid, script, attach_in_script=False),
                               DEBUGGER_TIMEOUT))
    finally:
        _remove(script)
    return run, attempt


def _retry_refused(attach: Callable[[], RunResult]) -> tuple[RunResult, int]:
    for attempt in range(1, ATTACH_ATTEMPTS + 1):
        # A refused attach leaves no trace in the target, so trying again is safe.
        run = attach()
        if not attach_refused(run) or attempt == ATTACH_ATTEMPTS:
            break
        time.sleep(ATTACH_BACKOFF * attempt)
    return run, attempt


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)


def _schedule_remote_exec(pid: int, snippet: str, place: Rendezvous, runner: Runner) -> float:
    # The target reads the script at its next safe point, after the call returns: it is
    # removed once the status shows it ran (a timed-out one is replaced by the next run).
    # A foreign target reads it in its own directory, which must then exist and be its own.
    if place.foreign:
        make_theirs(place)
    write_script(remote_script_path(place.outside, place.ns_pid), snippet,
                 owner=place.uid if place.foreign else None)
    run = runner(remote_exec_argv(pid, remote_script_path(place.inside, place.ns_pid)),
                 DEBUGGER_TIMEOUT)
    check_remote_exec(pid, run)
    return run.seconds


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
