"""Sharing each thread's measured CPU time out over its samples."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from apiscope.collectors.oncpu import LinePriors, apportion, share_out, whole
from apiscope.model import Frame, SampleState, StackSample

APP = "/srv/api/app.py"
SLEEP = Frame("check_stock", APP, 26)
COMPUTE = Frame("simulate", APP, 33)
SELECT = Frame("EpollSelector.select", "/usr/lib/python3.11/selectors.py", 468)


def sample(leaf: Frame, count: int, tid: int = 2) -> StackSample:
    return StackSample(1, tid, f"w{tid}", (Frame("run", APP, 1), leaf), count)


def by_state(rows: tuple[StackSample, ...]) -> dict[tuple[Frame, SampleState], int]:
    out: dict[tuple[Frame, SampleState], int] = {}
    for r in rows:
        key = (r.frames[-1], r.state)
        out[key] = out.get(key, 0) + r.count
    return out


def test_share_out_respects_weights_and_caps() -> None:
    assert share_out(6.0, [1.0, 1.0], [10, 10]) == [3.0, 3.0]
    # the heavier row reaches its cap; the rest goes to the other
    assert share_out(12.0, [1.0, 0.1], [10, 10]) == [10.0, 2.0]
    assert share_out(50.0, [0.5, 0.5], [10, 10]) == [10.0, 10.0]  # never above the caps
    assert share_out(0.0, [1.0], [10]) == [0.0]
    # zero weights still take a measured budget
    assert sum(share_out(4.0, [0.0, 0.0], [5, 5])) == 4.0


def test_whole_keeps_the_rounded_total() -> None:
    assert whole([1.5, 1.5, 1.0], [3, 3, 3]) in ([2, 1, 1], [1, 2, 1])
    assert sum(whole([0.3, 0.3, 0.3, 0.3], [1, 1, 1, 1])) == 1
    assert whole([2.0], [2]) == [2]


def test_a_sleeping_thread_has_no_running_samples() -> None:
    rows = apportion([sample(SLEEP, 100)], {}, {(1, 2): 0.0}, 1.0, LinePriors())
    assert by_state(rows) == {(SLEEP, SampleState.BLOCKED): 100}


def test_a_computing_thread_runs_as_much_as_the_kernel_says() -> None:
    rows = apportion([sample(COMPUTE, 100)], {}, {(1, 2): 0.7}, 1.0, LinePriors())
    assert by_state(rows) == {(COMPUTE, SampleState.RUNNING): 70,
                              (COMPUTE, SampleState.BLOCKED): 30}


def test_learned_lines_decide_which_stacks_ran_in_a_mixed_window() -> None:
    priors = LinePriors()
    # Windows where the thread only sleeps, or only computes, teach each line's behaviour ...
    for _ in range(3):
        apportion([sample(SLEEP, 100)], {}, {(1, 2): 0.0}, 1.0, priors)
        apportion([sample(COMPUTE, 100)], {}, {(1, 2): 1.0}, 1.0, priors)
    # ... so a window mixing both gives its measured 0.5 s to the computing line.
    rows = apportion([sample(SLEEP, 50), sample(COMPUTE, 50)], {}, {(1, 2): 0.5}, 1.0, priors)
    got = by_state(rows)
    assert got[(COMPUTE, SampleState.RUNNING)] >= 48
    assert got.get((SLEEP, SampleState.RUNNING), 0) <= 2
    assert got[(COMPUTE, SampleState.RUNNING)] + got.get((SLEEP, SampleState.RUNNING), 0) == 50


def test_idle_stacks_stay_waiting_and_take_a_small_share_of_the_cpu() -> None:
    idle = sample(SELECT, 80, tid=1)
    work = sample(COMPUTE, 20, tid=1)
    rows = apportion([idle, work], {id(idle): True}, {(1, 1): 0.2}, 1.0, LinePriors())
    got = by_state(rows)
    assert got[(COMPUTE, SampleState.RUNNING)] >= 16
    assert got[(SELECT, SampleState.WAITING)] >= 76
    assert (SELECT, SampleState.BLOCKED) not in got


def test_an_unmeasured_thread_keeps_the_line_estimates() -> None:
    priors = LinePriors()
    apportion([sample(SLEEP, 100)], {}, {(1, 2): 0.0}, 1.0, priors)
    rows = apportion([sample(SLEEP, 10, tid=9)], {}, {}, 1.0, priors)
    assert by_state(rows).get((SLEEP, SampleState.RUNNING), 0) <= 1


_LEAVES = st.sampled_from([SLEEP, COMPUTE, SELECT])


@given(st.lists(st.tuples(st.integers(1, 3), _LEAVES, st.integers(1, 200), st.booleans()),
                max_size=20),
       st.dictionaries(st.integers(1, 3), st.floats(0.0, 3.0), max_size=3),
       st.floats(0.01, 2.0))
def test_counts_are_kept_and_the_measured_cpu_is_respected(
        spec: list[tuple[int, Frame, int, bool]], cpu: dict[int, float], seconds: float) -> None:
    samples = [sample(leaf, count, tid) for tid, leaf, count, _ in spec]
    idle = {id(s): flag for s, (_, _, _, flag) in zip(samples, spec, strict=True)}
    rows = apportion(samples, idle, {(1, t): c for t, c in cpu.items()}, seconds, LinePriors())
    for tid in {t for t, *_ in spec}:
        mine = [r for r in rows if r.tid == tid]
        total = sum(r.count for r in mine)
        assert total == sum(s.count for s in samples if s.tid == tid)
        ran = sum(r.count for r in mine if r.state is SampleState.RUNNING)
        if tid in cpu:
            expected = min(1.0, cpu[tid] / seconds) * total
            assert abs(ran - expected) <= 1.0 + 1e-9 * total


def test_a_line_never_alone_is_still_told_from_its_neighbours() -> None:
    # An event loop runs a sleeping handler and a computing one in every window, in changing
    # proportions: no window shows either line alone, the fit over windows still tells them.
    priors = LinePriors()
    rng = random.Random(7)
    for _ in range(12):
        asleep, busy = rng.randint(10, 60), rng.randint(10, 60)
        select = sample(SELECT, 100 - asleep - busy, tid=1)
        window = [sample(SLEEP, asleep, tid=1), sample(COMPUTE, busy, tid=1), select]
        apportion(window, {id(select): True}, {(1, 1): busy / 100}, 1.0, priors)
    assert priors.odds(SLEEP, False) < 0.1 and priors.odds(COMPUTE, False) > 0.9
    select = sample(SELECT, 40, tid=1)
    rows = apportion([sample(SLEEP, 30, tid=1), sample(COMPUTE, 30, tid=1), select],
                     {id(select): True}, {(1, 1): 0.3}, 1.0, priors)
    got = by_state(rows)
    assert got.get((SLEEP, SampleState.RUNNING), 0) <= 3
    assert got[(COMPUTE, SampleState.RUNNING)] >= 27
