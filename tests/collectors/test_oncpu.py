"""Which samples ran: stacks over time matched against each thread's measured CPU time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from apiscope.collectors.chrometrace import Segment
from apiscope.collectors.oncpu import samples_from_times, stack_times, whole
from apiscope.model import Frame, SampleState

APP = "/srv/api/app.py"
SLEEP = (Frame("run", APP, 1), Frame("nap", APP, 14))
SPIN = (Frame("run", APP, 1), Frame("spin", APP, 22))
SELECT = (Frame("run", APP, 1),
          Frame("EpollSelector.select", "/usr/lib/python3.11/selectors.py", 468))


class Kernel:
    """A thread's measured CPU: on a CPU during `busy` spans, waiting for one during `queued`."""

    def __init__(self, busy: list[tuple[float, float]],
                 queued: list[tuple[float, float]] | None = None) -> None:
        self.busy, self.queued = busy, queued or []

    @staticmethod
    def _overlap(spans: list[tuple[float, float]], start: float, end: float) -> float:
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in spans)

    def __call__(self, key: tuple[int, int],
                 spans: list[tuple[float, float]]) -> list[tuple[float, float] | None]:
        return [(self._overlap(self.busy, a, b), self._overlap(self.queued, a, b))
                for a, b in spans]


def seg(frames: tuple[Frame, ...], start: float, end: float, tid: int = 2) -> Segment:
    return Segment(1, tid, "w", frames, start, end)


def rows(segments: list[Segment], kernel: Kernel, offset: float = 0.0
         ) -> dict[tuple[str, SampleState], int]:
    times = stack_times(segments, offset, kernel, {})
    out = samples_from_times(times, 100, lambda pid, tid, frames: frames == SELECT)
    return {(s.frames[-1].function, s.state): s.count for s in out}


def test_whole_keeps_the_rounded_total() -> None:
    assert whole([1.5, 1.5, 1.0], [3, 3, 3]) in ([2, 1, 1], [1, 2, 1])
    assert sum(whole([0.3, 0.3, 0.3, 0.3], [1, 1, 1, 1])) == 1


def test_a_sleep_and_a_loop_on_one_thread_are_told_apart_by_when_they_ran() -> None:
    # One pool thread: 0.3 s asleep, 0.2 s computing, 0.3 s asleep, 0.2 s computing.
    segments = [seg(SLEEP, 0.0, 0.3), seg(SPIN, 0.3, 0.5), seg(SLEEP, 0.5, 0.8),
                seg(SPIN, 0.8, 1.0)]
    got = rows(segments, Kernel(busy=[(0.3, 0.5), (0.8, 1.0)]))
    assert got == {("nap", SampleState.BLOCKED): 60, ("spin", SampleState.RUNNING): 40}


def test_waiting_for_a_cpu_is_runnable_not_a_wait_of_the_code() -> None:
    # A starved host: the loop computed 0.1 s and waited 0.3 s in the run queue for a CPU.
    got = rows([seg(SPIN, 0.0, 0.4)], Kernel(busy=[(0.0, 0.1)], queued=[(0.1, 0.4)]))
    assert got == {("spin", SampleState.RUNNING): 10, ("spin", SampleState.RUNNABLE): 30}


def test_idle_stacks_stay_waiting_unless_the_thread_ran_there() -> None:
    got = rows([seg(SELECT, 0.0, 0.9), seg(SPIN, 0.9, 1.0)], Kernel(busy=[(0.85, 1.0)]))
    assert got == {("EpollSelector.select", SampleState.WAITING): 85,
                   ("EpollSelector.select", SampleState.RUNNING): 5,
                   ("spin", SampleState.RUNNING): 10}


def test_the_offset_puts_py_spys_clock_on_the_wall_clock() -> None:
    # py-spy's seconds start at 0.2; the kernel's readings are on the wall clock at 1000.
    segments = [seg(SLEEP, 0.2, 0.5), seg(SPIN, 0.5, 0.7)]
    got = rows(segments, Kernel(busy=[(1000.3, 1000.5)]), offset=1000.0 - 0.2)
    assert got == {("nap", SampleState.BLOCKED): 30, ("spin", SampleState.RUNNING): 20}


def test_without_readings_the_windows_share_stands_for_every_stack() -> None:
    times = stack_times([seg(SPIN, 0.0, 1.0)], 0.0, lambda key, spans: [None] * len(spans),
                        {(1, 2): 0.25})
    out = samples_from_times(times, 100, lambda *key: False)
    assert {(s.state, s.count) for s in out} == {(SampleState.RUNNING, 25),
                                                 (SampleState.BLOCKED, 75)}


@given(st.lists(st.tuples(st.sampled_from([SLEEP, SPIN, SELECT]), st.floats(0.001, 0.3)),
                min_size=1, max_size=30),
       st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_counts_follow_the_time_shown_and_never_exceed_it(
        spans: list[tuple[tuple[Frame, ...], float]], busy: float, queued: float) -> None:
    segments, clock = [], 0.0
    for frames, seconds in spans:
        segments.append(seg(frames, clock, clock + seconds))
        clock += seconds

    def kernel(key: tuple[int, int], parts: list[tuple[float, float]]
               ) -> list[tuple[float, float] | None]:
        return [((b - a) * busy, (b - a) * (1 - busy) * queued) for a, b in parts]

    out = samples_from_times(stack_times(segments, 0.0, kernel, {}), 100,
                             lambda pid, tid, frames: frames == SELECT)
    total = sum(s.count for s in out)
    assert abs(total - clock * 100) <= 1
    ran = sum(s.count for s in out if s.state is SampleState.RUNNING)
    assert abs(ran - busy * clock * 100) <= len(set(f for f, _ in spans)) + 1
