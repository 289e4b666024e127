"""Scheduling the snippet in a live CPython with gdb, at a safe point of the interpreter.

gdb stops the target wherever it happens to be, which is no place to run Python: the main
thread may be halfway through a bytecode, inside malloc, or without the GIL. So gdb only
*schedules* the code and detaches:

1. `mmap` a fresh page for the snippet's text. mmap is a bare system call, unlike `malloc`
   (and `strdup`, and gdb's own string literals, which call malloc in the target), so it cannot
   deadlock on an allocator lock the stopped thread might hold.
2. Write the text there, then `Py_AddPendingCall(PyRun_SimpleString, text)`. CPython runs
   pending calls on the main thread between two bytecodes, with the GIL held: a safe point.
   uvicorn's main loop ticks at least every 0.1 s, so the call runs promptly after gdb detaches.

The target is stopped from gdb's attach to its detach, so that span holds no symbol lookup
when it can be avoided: the three functions' addresses are read from the process's files
beforehand (`apiscope.inject.symbols`), and gdb only looks them up itself when that fails.

memray's `attach` also starts with `Py_AddPendingCall` from wherever gdb stopped; it then waits
on breakpoints to `dlopen` a library, which we need not do. The page (one per injection) is
left mapped: the main thread reads it after gdb has gone, and nothing tells us when.
"""

from __future__ import annotations

import re

from apiscope.errors import TargetError
from apiscope.inject.errors import InjectionFailed
from apiscope.inject.runner import RunResult
from apiscope.inject.snippet import c_string_literal
from apiscope.inject.symbols import Functions
from apiscope.permissions import ptrace_denied

MARK = "APISCOPE:"
PAGE = 4096
PROT_READ_WRITE = 0x3
MAP_PRIVATE_ANONYMOUS = 0x22  # Linux, on x86-64 and arm64 alike
_PENDING = re.compile(re.escape(MARK) + r" pending (-?\d+)")
# gdb before 14 sizes a thread's extended registers from the features it knows; on a CPU with
# AMX the kernel's area is larger and it refuses the write that ends every call gdb makes.
XSTATE_REFUSED = "Couldn't write extended state status"
_FUNCTIONS = re.compile(re.escape(MARK) + r" functions 0x([0-9a-f]+) 0x([0-9a-f]+) 0x([0-9a-f]+)")


# Attaching from inside gdb lets a refused attach be retried every few milliseconds, where
# starting gdb again costs a fifth of a second: py-spy in its default blocking mode traces the
# target at each sample, and the kernel refuses a second tracer meanwhile.
ATTACH_RETRY_SECONDS = 3.0
ATTACH_RETRY_INTERVAL = 0.005
NO_PYTHON = "Python scripting is not supported"


def gdb_argv(gdb: str, pid: int, script: str, *, attach_in_script: bool = True) -> list[str]:
    """Batch gdb that loads only what it needs, because the target stays stopped while gdb
    reads symbols: the ELF symbol tables of libc and libpython, never their debug info
    (`--readnever`: CPython's DWARF alone tripled the stop on a loaded machine)."""
    attach = [] if attach_in_script else ["-p", str(pid)]
    return [gdb, "-batch", "-nx", "-nw", "--readnever", *attach,
            "-iex", "set auto-load off", "-iex", "set auto-solib-add off",
            "-x", script]


def gdb_script(snippet: str, attach_pid: int | None = None,
               functions: Functions | None = None) -> str:
    """The gdb commands that schedule `snippet` as a pending call and detach.

    With `attach_pid`, the script attaches itself, retrying refusals (this needs a gdb built
    with Python; the output then says `NO_PYTHON`); without, gdb was given `-p`. With
    `functions` (their addresses, read from outside: `apiscope.inject.symbols`) gdb calls them
    by address and loads no symbols while the target is stopped; without, it looks them up.
    """
    literal, size = c_string_literal(snippet)
    pages = (size + PAGE - 1) // PAGE * PAGE
    if functions is None:
        mmap, add_pending_call, run_simple_string = "mmap", "Py_AddPendingCall", \
            "PyRun_SimpleString"
        lookup = [
            "sharedlibrary libc",
            "sharedlibrary libpython",
            f'printf "{MARK} attached\\n"',
            # Fails with "No symbol" (ending the script) in a process that is not CPython.
            f'printf "{MARK} python %p %p\\n", (void *) &Py_AddPendingCall,'
            " (void *) &PyRun_SimpleString",
        ]
    else:
        mmap = f"((void *(*)(void *, unsigned long, int, int, int, long)) {functions.mmap:#x})"
        add_pending_call = f"((int (*)(void *, void *)) {functions.add_pending_call:#x})"
        run_simple_string = f"{functions.run_simple_string:#x}"
        lookup = [f'printf "{MARK} attached\\n"']
    return "\n".join([
        "set pagination off",
        "set confirm off",
        # The snippet of a foreign target carries the agent's code (tens of kB): above gdb's
        # default limit of 64 kB for one value.
        "set max-value-size unlimited",
        # If a call we make is interrupted (our deadline), unwind it instead of leaving the
        # target inside it.
        "set unwindonsignal on",
        *(_attach_with_retries(attach_pid) if attach_pid is not None else []),
        *lookup,
        f"set $apiscope_text = (char *) {mmap}((void *) 0, (unsigned long) {pages},"
        f" {PROT_READ_WRITE}, {MAP_PRIVATE_ANONYMOUS}, -1, (long) 0)",
        "if $apiscope_text == (char *) -1",
        f'  printf "{MARK} mmap failed\\n"',
        "else",
        f"  set {{char[{size}]}} $apiscope_text = {literal}",
        f'  printf "{MARK} pending %d\\n", (int) {add_pending_call}('
        f"(int (*)(void *)) {run_simple_string}, (void *) $apiscope_text)",
        "end",
        "detach",
        "",
    ])


def gdb_lookup_script(attach_pid: int | None = None) -> str:
    """The gdb commands that only print the three functions' addresses and detach: for
    `inject.ptrace` to call them when they could not be read from the process's files. gdb
    makes no call, so a gdb that cannot make one on this CPU (`XSTATE_REFUSED`) still serves."""
    return "\n".join([
        "set pagination off",
        "set confirm off",
        *(_attach_with_retries(attach_pid) if attach_pid is not None else []),
        "sharedlibrary libc",
        "sharedlibrary libpython",
        f'printf "{MARK} attached\\n"',
        f'printf "{MARK} functions %p %p %p\\n", (void *) &mmap, (void *) &Py_AddPendingCall,'
        " (void *) &PyRun_SimpleString",
        "detach",
        "",
    ])


def parse_functions(pid: int, run: RunResult, attempts: int = 1) -> Functions:
    """The addresses `gdb_lookup_script` printed, or the error that explains their absence."""
    match = _FUNCTIONS.search(run.output)
    if match is None:
        check_gdb_output(pid, run, attempts)  # raises: no process, refused, no symbol...
        raise InjectionFailed(f"gdb did not find the functions to call in PID {pid}:"
                              f" {_tail(run.output)}")
    mmap, add_pending_call, run_simple_string = (int(group, 16) for group in match.groups())
    return Functions(add_pending_call, run_simple_string, mmap)


def _attach_with_retries(pid: int) -> list[str]:
    tries = int(ATTACH_RETRY_SECONDS / ATTACH_RETRY_INTERVAL)
    return [
        "python",
        "import time",
        f"for attempt in range({tries}):",
        "    try:",
        f'        gdb.execute("attach {pid}", to_string=True)',
        "        break",
        "    except gdb.error as exc:",
        f'        if "Operation not permitted" not in str(exc) or attempt == {tries - 1}:',
        "            raise",
        f"        time.sleep({ATTACH_RETRY_INTERVAL})",
        "end",
    ]


def python_missing(run: RunResult) -> bool:
    """gdb was built without Python: attach with `-p` instead (see `gdb_script`)."""
    return NO_PYTHON in run.output


def attach_refused(run: RunResult) -> bool:
    """The kernel refused gdb's PTRACE_ATTACH: no permission, or another tracer holds the
    process (py-spy in its default blocking mode traces the target for each sample)."""
    return "ptrace: Operation not permitted" in run.output


def check_gdb_output(pid: int, run: RunResult, attempts: int = 1, tool: str = "gdb") -> None:
    """Raise the error that explains a failed run; return when the call was scheduled. `tool`:
    what ran the calls, for the messages (`inject.ptrace` prints the same marks)."""
    out = run.output
    if "ptrace: No such process" in out:
        raise TargetError(f"no process with PID {pid}: the server may have exited")
    if attach_refused(run):
        raise TargetError(ptrace_denied(
            f"{tool} was not allowed to attach to PID {pid} (ptrace refused"
            f"{f', {attempts} attempts' if attempts > 1 else ''}). Either another debugger or"
            " profiler keeps it traced (stop it, or run py-spy with --nonblocking), or tracing"
            " is not permitted"))
    match = _PENDING.search(out)
    if match and match.group(1) == "0":
        return
    if run.timed_out:
        raise InjectionFailed(f"{tool} did not finish within the deadline while scheduling the"
                              f" agent in PID {pid}; it was interrupted and detached."
                              f" Output: {_tail(out)}")
    if MARK + " attached" in out and "No symbol" in out:
        raise TargetError(f"PID {pid} does not look like a CPython process: gdb found no"
                          " Py_AddPendingCall/PyRun_SimpleString symbols in it (a static"
                          " interpreter stripped of its symbols cannot be injected). Use"
                          " `apiscope attach --no-inject`, or `instrument(app)` in code")
    if XSTATE_REFUSED in out:
        raise InjectionFailed(f"{tool} cannot make calls in PID {pid} on this CPU: it could not"
                              " restore the thread's extended registers after its call (gdb"
                              " before 14 on a CPU with AMX). Use gdb 14 or newer, or"
                              " `instrument(app)` in code")
    if match:
        raise InjectionFailed(f"CPython refused the pending call in PID {pid} (its queue of"
                              " pending calls is full); try again in a moment")
    if MARK + " mmap failed" in out:
        raise InjectionFailed(f"could not map memory in PID {pid} for the agent's loader")
    raise InjectionFailed(f"{tool} could not schedule the agent in PID {pid}: {_tail(out)}")


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "(no output)"

