"""Which samples ran: py-spy's view of active threads teaches each line's share of running, and
each thread's measured CPU time is shared out over its stacks by those shares."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from apiscope.collectors.oncpu import (
    ActivityShares,
    LineLooks,
    SleepLooks,
    ThreadBudget,
    asleep_leaves,
    line_times,
    share_by_odds,
    split_samples,
    whole,
)
from apiscope.collectors.trace import Segment
from apiscope.model import Frame, LoopStall, SampleState

APP = "/srv/api/app.py"
SLEEP = (Frame("run", APP, 1), Frame("nap", APP, 14))
SPIN = (Frame("run", APP, 1), Frame("spin", APP, 22))
HASH = (Frame("run", APP, 1), Frame("hash_secret", "/venv/site-packages/argon2/low.py", 97))
SELECT = (Frame("run", APP, 1),
          Frame("EpollSelector.select", "/usr/lib/python3.11/selectors.py", 468))


def seg(frames: tuple[Frame, ...], start: float, end: float, tid: int = 2) -> Segment:
    return Segment(1, tid, "w", frames, end - start)


def is_idle(pid: int, tid: int, frames: tuple[Frame, ...]) -> bool:
    return frames == SELECT


def taught() -> ActivityShares:
    """Shares learnt from a pool thread that sleeps 60% of the time, hashes in C 20% and runs
    Python 20%: with --idle all three show; without it the sleep all but vanishes."""
    shares = ActivityShares()
    idle_window = [seg(SLEEP, 0, 0.6), seg(HASH, 0.6, 0.8), seg(SPIN, 0.8, 1.0)]
    active_window = [seg(SLEEP, 0, 0.01), seg(HASH, 0.1, 0.3), seg(SPIN, 0.5, 0.7)]
    for _ in range(3):
        shares.observe(line_times(idle_window, is_idle), 1.0, active=False)
    shares.observe(line_times(active_window, is_idle), 1.0, active=True)
    return shares


def by_state(rows: tuple[object, ...]) -> dict[tuple[str, SampleState], int]:
    return {(r.frames[-1].function, r.state): r.count for r in rows}  # type: ignore[attr-defined]


def test_shares_come_from_how_much_a_line_shows_without_idle() -> None:
    shares = taught()
    assert shares.share(SLEEP[-1], False) < 0.1
    assert shares.share(HASH[-1], False) > 0.9  # C code with the GIL released: on a CPU
    assert shares.share(SPIN[-1], False) > 0.9
    assert ActivityShares().share(SPIN[-1], False) == 0.5  # nothing learnt yet


def test_a_threads_measured_cpu_goes_to_the_lines_that_run() -> None:
    segments = [seg(SLEEP, 0, 0.6), seg(HASH, 0.6, 0.8), seg(SPIN, 0.8, 1.0)]
    rows = split_samples(segments, 100, is_idle, taught(), {(1, 2): ThreadBudget(0.4, 0.0)},
                         1.0)
    got = by_state(rows)
    assert got[("hash_secret", SampleState.RUNNING)] + got[("spin", SampleState.RUNNING)] >= 36
    assert got.get(("nap", SampleState.RUNNING), 0) <= 3  # its learnt share: 4% of 60
    assert got[("nap", SampleState.BLOCKED)] >= 57


def test_a_long_sleep_does_not_take_the_cpu_of_the_work_beside_it() -> None:
    # A pool thread shows its sleep 20 times as long as its hashing and used the hashing's CPU:
    # moving both lines' odds of running alike leaves most of it with the hashing, where a
    # proportional split (0.05 x 200 against 1.0 x 10) would halve it.
    got = share_by_odds(10.0, [0.05, 0.99], [200, 10])
    assert abs(sum(got) - 10.0) < 1e-6
    assert got[1] > 8.0 and got[0] < 2.0


def test_run_queue_time_is_runnable_not_a_wait_of_the_code() -> None:
    segments = [seg(SPIN, 0, 0.4)]
    rows = split_samples(segments, 100, is_idle, taught(), {(1, 2): ThreadBudget(0.1, 0.3)},
                         0.4)
    assert by_state(rows) == {("spin", SampleState.RUNNING): 10,
                              ("spin", SampleState.RUNNABLE): 30}


def test_idle_stacks_stay_waiting_unless_the_thread_ran_there() -> None:
    segments = [seg(SELECT, 0.0, 0.9), seg(SPIN, 0.9, 1.0)]
    rows = split_samples(segments, 100, is_idle, taught(), {(1, 2): ThreadBudget(0.15)}, 1.0)
    got = by_state(rows)
    assert got[("spin", SampleState.RUNNING)] == 10
    assert got[("EpollSelector.select", SampleState.RUNNING)] == 5
    assert got[("EpollSelector.select", SampleState.WAITING)] == 85


def test_a_window_without_idle_counts_cpu_in_samples_not_in_its_length() -> None:
    # Recorded without --idle, a pool thread that computed for 60 ms of a 1 s window shows
    # only its 5 active samples (py-spy lost one): all of them ran, whatever the window's length.
    segments = [seg(SPIN, 0.0, 0.05)]
    rows = split_samples(segments, 100, is_idle, taught(), {(1, 2): ThreadBudget(0.06)}, 1.0,
                         active_only=True)
    assert by_state(rows) == {("spin", SampleState.RUNNING): 5}
    # Active but off the CPU for part of it: waiting for one, measured.
    rows = split_samples([seg(SPIN, 0.0, 0.1)], 100, is_idle, taught(),
                         {(1, 2): ThreadBudget(0.04, 0.06)}, 1.0, active_only=True)
    assert by_state(rows) == {("spin", SampleState.RUNNING): 4,
                              ("spin", SampleState.RUNNABLE): 6}


def test_a_thread_the_kernel_was_not_asked_about_keeps_the_shares() -> None:
    rows = split_samples([seg(SLEEP, 0, 0.5), seg(SPIN, 0.5, 1.0)], 100, is_idle, taught(), {},
                         1.0)
    got = by_state(rows)
    assert got[("spin", SampleState.RUNNING)] >= 40 and got.get(("nap", SampleState.RUNNING),
                                                                  0) <= 5


def test_threads_that_ended_within_the_window_share_what_their_process_used_beyond_the_rest(
) -> None:
    # A thread per request (Django's sync_to_async under ASGI): threads 3 and 4 lived 0.3 s
    # each and ended before the kernel was read; the process used 0.25 s more than its
    # measured thread 2. That is all they ran, over their working lines first, and without
    # it each would keep the learnt odds of its lines (a sleep's and a spin's, half and half).
    segments = [seg(SPIN, 0, 1.0),
                seg(SLEEP, 0.0, 0.1, tid=3), seg(SPIN, 0.1, 0.3, tid=3),
                seg(SLEEP, 0.3, 0.4, tid=4), seg(HASH, 0.4, 0.6, tid=4)]
    budgets = {(1, 2): ThreadBudget(1.0)}
    rows = split_samples(segments, 100, is_idle, taught(), budgets, 1.0, unmeasured={1: 0.25})
    pooled = [r for r in rows if r.tid in (3, 4)]
    ran = sum(r.count for r in pooled if r.state is SampleState.RUNNING)
    assert ran == 25
    assert sum(r.count for r in pooled if r.state is SampleState.RUNNING
               and r.frames == SLEEP) <= 1
    assert sum(r.count for r in pooled) == 60  # every sample kept, the rest blocked
    assert by_state(tuple(r for r in rows if r.tid == 2)) == {("spin", SampleState.RUNNING): 100}
    # Nothing unmeasured (the process used just what its threads did): nothing more ran.
    rows = split_samples(segments, 100, is_idle, taught(), budgets, 1.0, unmeasured={1: 0.0})
    assert not [r for r in rows if r.tid in (3, 4) and r.state is SampleState.RUNNING]


def test_cpu_beyond_the_threads_read_never_lands_on_pool_threads_that_idled_out() -> None:
    """Two pool threads idled out within the window (shown only at their queue's wait), while
    a C extension's own threads used 0.5 s (the process's CPU beyond its threads read): none
    of it is theirs, whatever the odds say."""
    segments = [seg(SPIN, 0.0, 1.0, tid=2), seg(SELECT, 0.0, 0.6, tid=3),
                seg(SELECT, 0.0, 0.4, tid=4)]
    rows = split_samples(segments, 100, is_idle, taught(), {(1, 2): ThreadBudget(1.0)}, 1.0,
                         unmeasured={1: 0.5})
    assert not [r for r in rows if r.tid in (3, 4) and r.state is SampleState.RUNNING]
    assert sum(r.count for r in rows if r.tid in (3, 4)) == 100  # every sample kept


def test_share_by_odds_and_whole() -> None:
    got = share_by_odds(12.0, [1.0, 0.1], [10, 10])
    assert abs(got[0] - 10.0) < 1e-3 and abs(got[1] - 2.0) < 1e-3
    assert [round(x, 6) for x in share_by_odds(50.0, [0.5, 0.5], [10, 10])] == [10.0, 10.0]
    assert abs(sum(share_by_odds(4.0, [0.0, 0.0], [5, 5])) - 4.0) < 1e-6
    # Not above the learnt shares: what the rows cannot hold is left out.
    assert abs(sum(share_by_odds(9.0, [0.5, 0.2], [10, 10], above=False)) - 7.0) < 1e-6
    assert whole([1.5, 1.5, 1.0], [3, 3, 3]) in ([2, 1, 1], [1, 2, 1])


@given(st.lists(st.tuples(st.sampled_from([SLEEP, SPIN, SELECT, HASH]), st.floats(0.001, 0.3)),
                min_size=1, max_size=30),
       st.floats(0.0, 2.0), st.floats(0.0, 2.0))
def test_counts_follow_the_time_shown_and_the_measured_cpu(
        spans: list[tuple[tuple[Frame, ...], float]], cpu: float, queued: float) -> None:
    segments, clock = [], 0.0
    for frames, seconds in spans:
        segments.append(seg(frames, clock, clock + seconds))
        clock += seconds
    rows = split_samples(segments, 100, is_idle, taught(),
                         {(1, 2): ThreadBudget(cpu, queued)}, clock)
    total = sum(r.count for r in rows)
    assert abs(total - clock * 100) <= 1
    ran = sum(r.count for r in rows if r.state is SampleState.RUNNING)
    assert abs(ran - min(1.0, cpu / clock) * total) <= 1
    assert all(r.count > 0 for r in rows)


@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 500)), min_size=1, max_size=40),
       st.floats(0.0, 3000.0), st.booleans())
def test_share_by_odds_holds_the_budget_and_favours_likelier_lines(
        rows: list[tuple[float, int]], budget: float, above: bool) -> None:
    weights, counts = [w for w, _ in rows], [c for _, c in rows]
    got = share_by_odds(budget, weights, counts, above=above)
    cap = sum(counts) if above else sum(c * min(1 - 1e-6, max(w, 1e-6)) for w, c in rows)
    assert abs(sum(got) - min(budget, cap)) <= 1e-6 * max(1.0, budget)
    assert all(-1e-9 <= g <= c + 1e-9 for g, c in zip(got, counts, strict=True))
    per_count = sorted((w, g / c) for (w, c), g in zip(rows, got, strict=True) if c > 0)
    assert all(a[1] <= b[1] + 1e-9 for a, b in zip(per_count, per_count[1:], strict=False))


def test_a_line_the_watchdog_saw_asleep_does_not_take_the_loops_cpu() -> None:
    # A sync sleep on the loop that py-spy often catches as its thread wakes (learnt to run
    # 60% of the time it shows); the watchdog's looks at the kernel found the thread asleep.
    shares = ActivityShares()
    for _ in range(3):
        shares.observe(line_times([seg(SLEEP, 0, 0.5), seg(SPIN, 0.5, 1.0)], is_idle), 1.0,
                       active=False)
    shares.observe(line_times([seg(SLEEP, 0, 0.3), seg(SPIN, 0.3, 0.8)], is_idle), 1.0,
                   active=True)
    budget = {(1, 2): ThreadBudget(0.5)}
    window = [seg(SLEEP, 0, 0.5), seg(SPIN, 0.5, 1.0)]
    before = by_state(split_samples(window, 100, is_idle, shares, budget, 1.0))
    stalls = [LoopStall(1, 2, 0.0, 40.0, SLEEP, 1.0, {"sleep": 3, "cpu": 1}),
              LoopStall(1, 2, 0.0, 40.0, SPIN, 40.0, {"cpu": 4})]  # a CPU stall: not asleep
    assert asleep_leaves(stalls) == {(APP, 14)}
    shares.asleep(asleep_leaves(stalls))
    after = by_state(split_samples(window, 100, is_idle, shares, budget, 1.0))
    assert before.get(("nap", SampleState.RUNNING), 0) >= 5
    assert after.get(("nap", SampleState.RUNNING), 0) == 0
    assert after[("spin", SampleState.RUNNING)] == 50
    # Measured CPU the other stacks cannot hold stays unplaced rather than land on the sleep.
    more = by_state(split_samples(window, 100, is_idle, shares, {(1, 2): ThreadBudget(0.8)},
                                  1.0))
    assert more.get(("nap", SampleState.RUNNING), 0) == 0 and more[("spin",
                                                                     SampleState.RUNNING)] == 50


def test_a_line_pool_threads_were_looked_at_asleep_does_not_take_their_cpu() -> None:
    # A pool thread that sleeps in a sync handler and computes for another route, the
    # computing undersampled: its measured CPU would be shared onto the sleep's line.
    shares = taught()
    budget = {(1, 2): ThreadBudget(0.6)}
    window = [seg(SLEEP, 0, 0.8), seg(SPIN, 0.8, 1.0)]
    before = by_state(split_samples(window, 100, is_idle, shares, budget, 1.0))
    looks = SleepLooks()
    # Not yet: too few looks; nor a line found on a CPU more than rarely.
    assert looks.add([LineLooks(APP, 14, 4, 0), LineLooks(APP, 22, 1, 9)]) == set()
    assert looks.add([LineLooks(APP, 14, 15, 1), LineLooks(APP, 22, 9, 1)]) == {(APP, 14)}
    shares.asleep(looks.add([]) | {(APP, 14)})
    after = by_state(split_samples(window, 100, is_idle, shares, budget, 1.0))
    assert before.get(("nap", SampleState.RUNNING), 0) >= 20
    assert after.get(("nap", SampleState.RUNNING), 0) == 0
    assert after[("spin", SampleState.RUNNING)] == 20  # all it can hold; the rest unplaced


def starved_of_the_gil() -> ActivityShares:
    """Shares learnt from a pool worker idle 40% of the time, reading rows in C code (the GIL
    released) 30% and computing in Python 30% while other threads hold the GIL: py-spy's
    active view, which misses a thread waiting for the GIL, saw its loop seldom."""
    shares = ActivityShares()
    idle_window = [seg(SELECT, 0, 0.4), seg(HASH, 0.4, 0.7), seg(SPIN, 0.7, 1.0)]
    active_window = [seg(HASH, 0.4, 0.7), seg(SPIN, 0.7, 0.73)]
    for _ in range(3):
        shares.observe(line_times(idle_window, is_idle), 1.0, active=False)
    shares.observe(line_times(active_window, is_idle), 1.0, active=True)
    return shares


def test_a_threads_cpu_fills_its_working_stacks_before_its_idle_one() -> None:
    # By odds alone the idle stack, shown four times as long as the loop whose learnt share is
    # low, took a share of the thread's CPU; it takes only what the working stacks cannot hold.
    shares = starved_of_the_gil()
    assert shares.share(SPIN[-1], False) < 0.2
    window = [seg(SELECT, 0, 0.7), seg(SPIN, 0.7, 1.0)]
    got = by_state(split_samples(window, 100, is_idle, shares, {(1, 2): ThreadBudget(0.2)},
                                 1.0))
    assert got[("spin", SampleState.RUNNING)] == 20
    assert got.get(("EpollSelector.select", SampleState.RUNNING), 0) == 0
    # more CPU than the working stacks show: the rest is the idle stack's (uvloop's C work)
    got = by_state(split_samples(window, 100, is_idle, shares, {(1, 2): ThreadBudget(0.4)},
                                 1.0))
    assert got[("spin", SampleState.RUNNING)] == 30
    assert got[("EpollSelector.select", SampleState.RUNNING)] == 10


def test_a_loop_of_python_starved_of_the_gil_runs_first_once_found_busy() -> None:
    # The thread's CPU went to its C code first (learnt to run whenever shown); the agent's
    # looks find the loop line busy (on a CPU or waiting for the GIL): it runs as likely.
    shares = starved_of_the_gil()
    window = [seg(SELECT, 0, 0.4), seg(HASH, 0.4, 0.7), seg(SPIN, 0.7, 1.0)]
    budget = {(1, 2): ThreadBudget(0.3)}
    before = by_state(split_samples(window, 100, is_idle, shares, budget, 1.0))
    looks = SleepLooks()
    looks.add([LineLooks(APP, 22, 0, 2, 2)])
    assert looks.busy() == set()  # too few looks yet
    looks.add([LineLooks(APP, 22, 0, 1, 4), LineLooks(APP, 14, 6, 0, 1)])
    assert looks.busy() == {(APP, 22)}  # the sleep's line is not busy
    shares.busy(looks.busy())
    after = by_state(split_samples(window, 100, is_idle, shares, budget, 1.0))
    assert before[("spin", SampleState.RUNNING)] <= 5
    assert after[("spin", SampleState.RUNNING)] >= 10
    assert after[("spin", SampleState.RUNNING)] + after[("hash_secret", SampleState.RUNNING)] \
        == 30


def test_a_line_found_asleep_now_and_then_is_not_busy() -> None:
    looks = SleepLooks()
    looks.add([LineLooks(APP, 22, 2, 10, 10)])  # in a sleep or I/O at 2 looks of 22
    assert looks.busy() == set()
    looks.add([LineLooks(APP, 22, 0, 20, 20)])  # 2 of 62: under one in twenty
    assert looks.busy() == {(APP, 22)}


def test_sleep_looks_add_up_over_the_session() -> None:
    looks = SleepLooks()
    for _ in range(4):
        assert looks.add([LineLooks(APP, 14, 1, 0)]) == set()
    assert looks.add([LineLooks(APP, 14, 1, 0)]) == {(APP, 14)}
    # a line running at more than one look in twenty no longer sleeps
    assert looks.add([LineLooks(APP, 14, 14, 2)]) == set()
