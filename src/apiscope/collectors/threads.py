"""What each sampled thread is (its role) and what it was doing in each sample (its state).

Roles are decided from the frames py-spy reports (without `--native`, so C functions such as
`epoll.poll` or `time.sleep` never show: the leaf is the Python frame that called them). The event
loop thread runs `BaseEventLoop.run_forever/_run_once` (asyncio), or `asyncio.run`'s `Runner.run`
with uvloop, whose loop is C code between `Runner.run` and the callbacks (verified with uvloop
0.23 under uvicorn); thread-pool workers run anyio's `WorkerThread.run` or `concurrent.futures`'
`_worker` (asyncio's default executor, asgiref's `sync_to_async`); everything else (aiosqlite's
connection threads, gunicorn's arbiter, the agent) is OTHER. A thread can be sampled before it
enters its worker loop (`_bootstrap -> _bootstrap_inner -> run`): such a stack proves nothing
about its role, and one stack that does decides it.

States: a stack can prove its thread idle (the loop inside its selector call, a worker waiting
on its job queue); whether any other sample was running is measured, not read off the stack:
`oncpu.py` shares each thread's CPU time, from the kernel, out over its samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from apiscope.model import Frame, StackSample, ThreadRole

ThreadKey = tuple[int, int]  # (pid, tid)
_LOOP_FUNCTIONS = ("run_forever", "_run_once")
# The Python frames that start a loop with `run_until_complete`: under uvloop that call is C
# code, so the frame is the loop thread's leaf while the loop waits for events. asyncio.run
# (`run` before 3.11, `Runner.run` since); before 3.11 uvicorn's own copy of it (for its
# `loop_factory`) and hypercorn's backported `Runner` (the taskgroup package).
_LOOP_ENTRIES = (
    ("asyncio/runners.py", "run"),
    ("uvicorn/_compat.py", "asyncio_run"),
    ("taskgroup/runners.py", "run"),
)
# granian's workers call `loop.run_until_complete` from methods of its own (`server/mp.py` and
# `server/mt.py` in granian 2; an ASGI app with or without lifespan): under uvloop (granian's
# default loop where it is installed) they are the loop thread's idle leaf, which made its
# main thread "other" and the server's figures read its idle pool threads.
_GRANIAN_ENTRIES = frozenset({"_spawn_asgi_worker", "_spawn_asgi_lifespan_worker"})
_WORKER_FRAMES = (
    ("anyio/_backends/_asyncio.py", "WorkerThread.run"),  # Starlette's run_in_threadpool
    ("concurrent/futures/thread.py", "_worker"),  # asyncio's default executor
)
_THREADING_WAITS = frozenset({"wait", "join", "_wait_for_tstate_lock", "wait_for"})


def _file_is(frame: Frame, suffix: str) -> bool:
    path = frame.file.replace("\\", "/")
    return path == suffix or path.endswith("/" + suffix)


def _method(frame: Frame) -> str:
    # py-spy names methods `Class.method` (and closures `outer.<locals>.inner`).
    return frame.function.rsplit(".", 1)[-1]


def is_loop_frame(frame: Frame) -> bool:
    if _file_is(frame, "asyncio/base_events.py") and _method(frame) in _LOOP_FUNCTIONS:
        return True
    # asyncio.run()/Runner.run (or a copy of it) runs an event loop on this thread; under
    # uvloop it is the last Python frame before the loop's C code calls the callbacks.
    return _is_uvloop_idle_leaf(frame)


def _is_loop_entry(frame: Frame) -> bool:
    if any(_file_is(frame, path) and _method(frame) == name for path, name in _LOOP_ENTRIES):
        return True
    return _method(frame) in _GRANIAN_ENTRIES and "/granian/" in frame.file.replace("\\", "/")


def is_worker_frame(frame: Frame) -> bool:
    return any(_file_is(frame, path) and frame.function == name for path, name in _WORKER_FRAMES)


def _is_uvloop_idle_leaf(frame: Frame) -> bool:
    # Under uvloop the loop's wait is C code called from `Runner.run` (asyncio.run, or a copy
    # of it) or from uvloop's own `run`: when that frame is the leaf, the loop is waiting.
    return _is_loop_entry(frame) or "/uvloop/" in frame.file.replace("\\", "/")


def stack_role(frames: Sequence[Frame]) -> ThreadRole | None:
    """The role one stack proves, or None when it proves nothing (e.g. an empty stack)."""
    for frame in frames:
        if is_loop_frame(frame):
            return ThreadRole.LOOP
        if is_worker_frame(frame):
            return ThreadRole.WORKER
    return ThreadRole.OTHER if frames else None


def thread_roles(samples: Iterable[StackSample]) -> dict[ThreadKey, ThreadRole]:
    """One role per (pid, tid): LOOP or WORKER when any of its stacks shows it, else OTHER."""
    roles: dict[ThreadKey, ThreadRole] = {}
    for sample in samples:
        key = (sample.pid, sample.tid)
        role = stack_role(sample.frames)
        current = roles.get(key)
        if current in (None, ThreadRole.OTHER) and role is not None:
            roles[key] = role
        elif current is None:
            roles[key] = ThreadRole.OTHER
    return roles


def is_waiting(frames: Sequence[Frame], role: ThreadRole) -> bool:
    """True when the stack alone proves the thread is idle, waiting for work."""
    if not frames:
        return True  # py-spy saw the thread but no Python code running in it
    leaf = frames[-1]
    if role is ThreadRole.LOOP:
        # `_run_once` calling `selector.select(timeout)`, which sits in epoll/poll/select (C).
        # Other selectors.py frames (register, get_key) are the loop at work.
        if (len(frames) >= 2 and _method(frames[-2]) == "_run_once"
                and _file_is(leaf, "selectors.py") and _method(leaf) == "select"):
            return True
        return _is_uvloop_idle_leaf(leaf)
    if role is ThreadRole.WORKER:
        return _worker_waiting(frames)
    return _is_wait_leaf(leaf) or _is_idle_helper_leaf(leaf)


def _is_idle_helper_leaf(frame: Frame) -> bool:
    """Helper threads parked in a C-level wait, so their own frame is the leaf.

    aiosqlite's connection thread waits in `SimpleQueue.get` (C) inside
    `_connection_worker_thread`; while it runs a query its leaf is a deeper frame. A thread
    reading a socket (`SocketIO.readinto`, `socket.accept`) waits for its peer.
    """
    method = _method(frame)
    if method == "_connection_worker_thread":
        return _file_is(frame, "aiosqlite/core.py")
    return _file_is(frame, "socket.py") and method in ("readinto", "accept", "recv", "recv_into")


def _worker_waiting(frames: Sequence[Frame]) -> bool:
    index = next((i for i, f in enumerate(frames) if is_worker_frame(f)), None)
    if index is None:
        # A worker thread's stack from before (or after) its worker loop: only a wait at the
        # leaf proves it idle.
        return _is_wait_leaf(frames[-1])
    above = frames[index + 1:]
    # concurrent.futures' _worker calls the C SimpleQueue.get: the worker frame is the leaf.
    # anyio's WorkerThread.run waits in queue.Queue.get -> threading.Condition.wait.
    if not above:
        return True
    return (_file_is(above[0], "queue.py") and _method(above[0]) == "get"
            and _is_wait_leaf(frames[-1]))


def _is_wait_leaf(frame: Frame) -> bool:
    """The Python frames of the stdlib's blocking waits (the C wait below is invisible)."""
    method = _method(frame)
    if _file_is(frame, "threading.py"):
        return method in _THREADING_WAITS
    if _file_is(frame, "queue.py"):
        return method == "get"
    return _file_is(frame, "selectors.py") and method == "select"


def idle_stacks(samples: Iterable[StackSample],
                roles: Mapping[ThreadKey, ThreadRole]) -> dict[int, bool]:
    """For each sample (by `id`), whether its stack alone proves its thread idle."""
    return {id(s): is_waiting(s.frames, roles.get((s.pid, s.tid), ThreadRole.OTHER))
            for s in samples}
