"""What each sampled thread is (its role) and what it was doing in each sample (its state).

Pure functions over `StackSample`s, decided from the frames py-spy reports (without
`--native`, so C functions such as `epoll.poll` or `time.sleep` never show: the leaf is the
Python frame that called them).

Roles: the event loop thread runs `BaseEventLoop.run_forever/_run_once` (asyncio), or
`asyncio.run`'s `Runner.run` with uvloop, whose loop is C code between `Runner.run` and the
callbacks (verified with uvloop 0.23 under uvicorn); thread-pool workers
run anyio's `WorkerThread.run` or `concurrent.futures`' `_worker`; everything else (aiosqlite's
connection threads, gunicorn's arbiter, the agent) is OTHER.

States: WAITING is certain from the stack alone (the loop inside its selector call, a worker
waiting on its job queue). Anything else is RUNNING unless an activity probe (see
`gilprobe.py`) saw that very stack off-CPU, which makes it BLOCKED: py-spy's raw format does
not say whether a sample was on-CPU.

Two corrections to the probe's raw verdict:
- A stack the probe saw mostly *holding the GIL* is RUNNING even when the OS called the thread
  inactive. Sleeps, socket and file I/O and lock waits all release the GIL, so a GIL holder is
  executing (or runnable, waiting for a core on a loaded machine), and the "inactive" reading
  comes from the recording py-spy having the process stopped at that instant.
- A thread's stack the probe never saw takes the verdict of the same leaf line in the *other*
  threads of its process when that verdict is clear-cut: a line no thread was ever seen
  computing at (`LEAF_IDLE_ACTIVE` on-CPU at most, `LEAF_IDLE_GIL` GIL held at most, over at
  least `LEAF_IDLE_MIN_OBSERVATIONS` looks) is a waiting line, e.g. eight pool threads in one
  `time.sleep` call that a 2 Hz probe saw in only some of them. Its `gil` stays unknown: who
  holds the GIL is per thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from apiscope.model import Frame, SampleState, StackSample, ThreadRole

ThreadKey = tuple[int, int]  # (pid, tid)
LeafKey = tuple[int, int, Frame]  # (pid, tid, leaf frame)
LineKey = tuple[int, Frame]  # (pid, leaf frame), over all the process's threads

LEAF_IDLE_ACTIVE = 0.25
LEAF_IDLE_GIL = 0.10
LEAF_IDLE_MIN_OBSERVATIONS = 3  # fewer looks at a line prove nothing about it

_LOOP_FUNCTIONS = ("run_forever", "_run_once")
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
    # asyncio.run()/Runner.run runs an event loop on this thread; under uvloop it is the
    # last Python frame before the loop's C code calls the callbacks (handlers).
    if _file_is(frame, "asyncio/runners.py") and _method(frame) == "run":
        return True
    return "/uvloop/" in frame.file.replace("\\", "/")


def is_worker_frame(frame: Frame) -> bool:
    return any(_file_is(frame, path) and frame.function == name for path, name in _WORKER_FRAMES)


def _is_uvloop_idle_leaf(frame: Frame) -> bool:
    # Under uvloop the loop's wait is C code called from `Runner.run` (asyncio.run) or from
    # uvloop's own `run`: when that frame is the leaf, the loop is waiting for events.
    return (_file_is(frame, "asyncio/runners.py") and _method(frame) == "run") or (
        "/uvloop/" in frame.file.replace("\\", "/")
    )


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
    index = next(i for i, f in enumerate(frames) if is_worker_frame(f))
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


@dataclass(frozen=True, slots=True)
class Activity:
    """What an activity probe saw for one (pid, tid, leaf frame)."""

    observations: int
    active: int  # on-CPU (py-spy's `active`)
    owns_gil: int

    @property
    def mostly_active(self) -> bool:
        return 2 * self.active >= self.observations

    @property
    def mostly_gil(self) -> bool:
        return 2 * self.owns_gil >= self.observations


def classify(samples: Iterable[StackSample],
             activity: Mapping[LeafKey, Activity] | None = None,
             ) -> tuple[tuple[StackSample, ...], dict[ThreadKey, ThreadRole]]:
    """Samples with `state` (and `gil` where the probe knows it) set, and the thread roles."""
    batch = tuple(samples)
    roles = thread_roles(batch)
    activity = activity or {}
    lines = line_activity(activity)
    return tuple(_with_state(s, roles[(s.pid, s.tid)], activity, lines) for s in batch), roles


def line_activity(activity: Mapping[LeafKey, Activity]) -> dict[LineKey, Activity]:
    """The probe's observations of each leaf line, summed over the threads of a process."""
    out: dict[LineKey, Activity] = {}
    for (pid, _, leaf), seen in activity.items():
        prev = out.get((pid, leaf))
        out[(pid, leaf)] = seen if prev is None else Activity(
            prev.observations + seen.observations, prev.active + seen.active,
            prev.owns_gil + seen.owns_gil)
    return out


def _idle_line(seen: Activity | None) -> bool:
    return seen is not None and seen.observations >= LEAF_IDLE_MIN_OBSERVATIONS and (
        seen.active <= LEAF_IDLE_ACTIVE * seen.observations
        and seen.owns_gil <= LEAF_IDLE_GIL * seen.observations)


def _with_state(sample: StackSample, role: ThreadRole, activity: Mapping[LeafKey, Activity],
                lines: Mapping[LineKey, Activity]) -> StackSample:
    leaf = sample.frames[-1] if sample.frames else None
    seen = activity.get((sample.pid, sample.tid, leaf)) if leaf is not None else None
    gil = seen.mostly_gil if seen is not None else None
    if is_waiting(sample.frames, role):
        state = SampleState.WAITING
    elif seen is not None:
        off_cpu = not seen.mostly_active and not seen.mostly_gil
        state = SampleState.BLOCKED if off_cpu else SampleState.RUNNING
    elif leaf is not None and _idle_line(lines.get((sample.pid, leaf))):
        state = SampleState.BLOCKED
    else:
        state = SampleState.RUNNING
    if state is sample.state and gil == sample.gil:
        return sample
    return dataclasses.replace(sample, state=state, gil=gil)
