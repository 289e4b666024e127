"""The overhead budget: the next window's rate from the measured cost of the last ones."""

from __future__ import annotations

import pytest

from apiscope.collectors.budget import (
    COST_PARTS,
    FIRST_RATE,
    LAST_RESORT_RATE,
    LEAST_RATE,
    MIN_RATE,
    OverheadBudget,
    WindowCost,
)


def test_a_cheap_target_keeps_the_requested_rate() -> None:
    budget = OverheadBudget(0.02, 100)
    # 100 ticks cost 5 ms: 0.5% of a core, well within 2%
    assert budget.observe(WindowCost(1.0, 100, 0.005)) == 100
    assert budget.mean_cost() == 0.005


def test_an_expensive_target_gets_a_lower_rate_that_fits_the_budget() -> None:
    budget = OverheadBudget(0.02, 100)
    # py-spy used 0.08 s for 100 ticks: 0.8 ms a tick; 2% of a core affords 25 ticks a second
    rate = budget.observe(WindowCost(1.0, 100, 0.08))
    assert rate == 25
    # at that rate the cost per tick is the same: the rate holds
    assert budget.observe(WindowCost(1.0, rate, 0.02)) == 25


def test_the_agents_own_cpu_comes_out_of_the_same_budget() -> None:
    budget = OverheadBudget(0.02, 100)
    assert budget.observe(WindowCost(1.0, 100, 0.04, agent_cpu=0.01)) == 25


def test_several_processes_each_have_a_core_of_capacity() -> None:
    budget = OverheadBudget(0.02, 100)
    # two workers, 200 ticks for 0.08 s: 0.4 ms a tick, 4% of two cores affords 50 Hz
    assert budget.observe(WindowCost(1.0, 100, 0.08, processes=2)) == 50


def test_ticks_that_break_the_budget_at_the_last_resort_give_way_to_pyspys_least_rate(
        ) -> None:
    # Two workers of a dozen threads each (Wagtail's under gunicorn): py-spy 5 ms a tick, and
    # the agent and the collector 25 ms a second of the two cores' 40 ms of budget.
    budget = OverheadBudget(0.02, 100, min_rate=5)

    def window(rate: int) -> int:
        return budget.observe(WindowCost(8.0, rate, 8.0 * rate * 2 * 0.005, processes=2,
                                         capacity=2.0, agent_cpu=0.08, collector_cpu=0.12))

    rates = [window(5)]
    rates.append(window(rates[-1]))
    assert rates == [5, LAST_RESORT_RATE]  # 5 Hz twice over the budget
    assert not budget.last_resort_broken
    # 2 Hz: 20 ms a second of ticks, 45 of the 40 in all. Once may be a spike; twice, and
    # py-spy's least: 1 Hz, 35 of 40.
    rates.append(window(rates[-1]))
    assert rates[-1] == LAST_RESORT_RATE
    rates.append(window(rates[-1]))
    assert budget.last_resort_broken and rates[-1] == LEAST_RATE
    # The same windows with the collector the one over the budget: fewer samples would not
    # help, and the rate stays at the last resort.
    budget = OverheadBudget(0.02, 100, min_rate=5)
    for _ in range(6):
        rate = budget.observe(WindowCost(8.0, 2, 8.0 * 2 * 2 * 0.0005, processes=2,
                                         capacity=2.0, collector_cpu=0.8))
    assert budget.floor_broken and not budget.last_resort_broken and rate == LAST_RESORT_RATE


def test_processes_that_serve_nothing_add_no_capacity() -> None:
    # A uvicorn supervisor, its resource tracker and two workers: four processes sampled,
    # 400 ticks for 0.08 s (0.2 ms a tick), but two cores of capacity (two workers): 4% of a
    # core affords 50 ticks a second per process, not the 100 four cores would.
    budget = OverheadBudget(0.02, 100)
    assert budget.observe(WindowCost(1.0, 100, 0.08, processes=4, capacity=2.0)) == 50
    assert budget.history[-1] == (0.04, 100)  # 8% of a core is 4% of two


def test_the_rate_goes_below_the_floor_only_once_the_floor_broke_the_budget() -> None:
    budget = OverheadBudget(0.02, 100, min_rate=5)
    assert budget.observe(WindowCost(1.0, 100, 1.0)) == 5  # modelled: no lower yet
    # Measured at 5 Hz: once may be the start's one-off costs, twice is the target.
    assert budget.observe(WindowCost(1.0, 5, 0.05)) == 5
    assert budget.observe(WindowCost(1.0, 5, 0.05)) == LAST_RESORT_RATE
    assert budget.over_budget


def test_a_start_up_per_window_too_dear_for_the_budget_lengthens_the_windows() -> None:
    budget = OverheadBudget(0.02, 100)
    # Starting py-spy costs 12 ms, each tick 0.1 ms: 1 s windows leave 8 ms, 80 Hz; 2 s windows
    # leave 14 ms, enough for the 100 Hz asked for.
    plan = budget.plan_after(WindowCost(1.0, 100, 0.022, startup_cpu=0.012))
    assert (plan.rate_hz, plan.seconds) == (100, 2.0)
    # Dearer ticks: no length affords 100 Hz, so the longest, at the rate it affords.
    budget = OverheadBudget(0.02, 100)
    plan = budget.plan_after(WindowCost(1.0, 100, 0.052, startup_cpu=0.012))
    assert (plan.rate_hz, plan.seconds) == (46, 8.0)


def test_the_collectors_own_cpu_is_part_of_the_cost() -> None:
    budget = OverheadBudget(0.02, 100)
    # py-spy 0.4 ms a tick; the collector storing requests uses 1% of a core: 25 Hz.
    assert budget.observe(WindowCost(1.0, 100, 0.04, collector_cpu=0.01)) == 25
    assert budget.history[-1] == (0.05, 100)
    # A collector that alone spends the budget (its smoothed cost: 2.2% of a core) leaves
    # py-spy the floor.
    assert budget.observe(WindowCost(1.0, 25, 0.01, collector_cpu=0.05)) == budget.min_rate


def test_the_mean_cost_weighs_each_window_by_its_length() -> None:
    budget = OverheadBudget(0.02, 100)
    budget.observe(WindowCost(1.0, 100, 0.10))  # a first, dear window of 1 s: 10%
    budget.observe(WindowCost(4.0, 5, 0.04))  # then 4 s windows at 1%
    budget.observe(WindowCost(4.0, 5, 0.04))
    assert abs(budget.mean_cost() - (0.10 + 0.08) / 9) < 1e-9


def test_the_cost_is_broken_down_into_parts_that_sum_to_it() -> None:
    budget = OverheadBudget(0.02, 100)
    assert budget.breakdown() == {}
    # 1 s on one process: a start-up of 20 ms and 30 ms of ticks, the agent 10, us 5.
    budget.observe(WindowCost(1.0, 25, 0.05, agent_cpu=0.01, startup_cpu=0.02,
                              collector_cpu=0.005))
    assert budget.last_parts == pytest.approx(
        {"pyspy_startup": 0.02, "pyspy_samples": 0.03, "agent": 0.01, "collector": 0.005})
    # then 3 s on two processes (two cores): py-spy 60 ms, the agents 30, us 30.
    budget.observe(WindowCost(3.0, 5, 0.06, agent_cpu=0.03, processes=2,
                              collector_cpu=0.03))
    assert budget.last_parts == pytest.approx(
        {"pyspy_startup": 0.0, "pyspy_samples": 0.01, "agent": 0.005, "collector": 0.005})
    parts = budget.breakdown()
    assert list(parts) == list(COST_PARTS)
    assert parts == pytest.approx({"pyspy_startup": 0.02 / 4, "pyspy_samples": 0.06 / 4,
                                   "agent": 0.025 / 4, "collector": 0.02 / 4})
    assert sum(parts.values()) == pytest.approx(budget.mean_cost())


def test_requests_are_thinned_when_taking_them_in_costs_more_than_half_the_budget() -> None:
    from apiscope.collectors.budget import RequestKeeping

    keeping = RequestKeeping(0.02)
    # 4,000 requests a second at 10 µs each: 4% of a core, four times the 1% share.
    assert keeping.observe(1.0, 0.04, 4000) == 4
    # Kept at one in four, they cost the share: it holds.
    assert keeping.observe(1.0, 0.01, 1000, 4000) == 4
    # The load falls to a quarter: cost under a quarter of the share, keep more again.
    assert keeping.observe(1.0, 0.0024, 240, 960) == 2
    assert keeping.observe(1.0, 0.0048, 480, 960) == 2


def test_few_requests_are_all_kept_whatever_they_cost() -> None:
    from apiscope.collectors.budget import MIN_KEPT_RPS, RequestKeeping

    keeping = RequestKeeping(0.02)
    # Expensive (a slow disk), but only MIN_KEPT_RPS a second: thinning would leave too few.
    assert keeping.observe(1.0, 0.05, MIN_KEPT_RPS) == 1
    # Several processes: each has its own share and its own floor.
    assert RequestKeeping(0.02).observe(1.0, 0.03, 4000, processes=4) == 1
    assert RequestKeeping(0.02).observe(1.0, 0.12, 4000, processes=4) == 3


def test_over_budget_at_the_lowest_rate_requests_give_up_more() -> None:
    from apiscope.collectors.budget import RequestKeeping

    keeping = RequestKeeping(0.02)
    # Within their share (0.6% of 1%), but the whole is over budget with sampling at its floor.
    assert keeping.observe(1.0, 0.006, 4000, over_budget=True) == 2
    assert keeping.observe(1.0, 0.003, 2000, 4000, over_budget=True) == 4
    # Not below an eighth of the share: what is left over is not the requests' doing.
    assert keeping.observe(1.0, 0.001, 1000, 4000, over_budget=True) == 4
    # Back within budget, cheap: keep more again.
    assert keeping.observe(1.0, 0.001, 1000, 4000) == 2


def test_thinning_never_leaves_fewer_than_the_floor_a_second() -> None:
    from apiscope.collectors.budget import MIN_KEPT_RPS, RequestKeeping

    keeping = RequestKeeping(0.002)  # a tiny budget: 0.1% of a core for requests
    # 3,000 requests a second at 15 µs: 45 times the share; thinning stops at the floor.
    assert keeping.observe(1.0, 0.045, 3000) == 3000 // MIN_KEPT_RPS
    # The next second's records were mostly kept before the change: the cost is still high,
    # but they stand for the same 3,000 requests, so the floor holds.
    assert keeping.observe(1.0, 0.03, 2000, 3000) == 30
    # Still over, but at the floor: it holds.
    assert keeping.observe(1.0, 0.0015, 100, 3000, over_budget=True) == 30
    # The load falls to a third: too few kept, keep more.
    assert keeping.observe(1.0, 0.0005, 33, 1000, over_budget=True) == 15


def test_requests_are_kept_more_again_only_when_the_budget_has_room_for_them() -> None:
    from apiscope.collectors.budget import RequestKeeping

    keeping = RequestKeeping(0.02)
    assert keeping.observe(1.0, 0.006, 4000, over_budget=True) == 2
    # Cheap now, but the last window left 0.1% of a core: twice the requests (0.2%) would
    # put the whole over budget again. It holds, second after second of the same window.
    for _ in range(5):
        assert keeping.observe(1.0, 0.002, 2000, 4000, room=0.001) == 2
    # A window with room for them: keep more, once; the rest of that room is not enough
    # for a second step until the next window says what the first one cost.
    assert keeping.observe(1.0, 0.002, 2000, 4000, room=0.003) == 1
    keeping.every = 2
    assert keeping.observe(1.0, 0.002, 2000, 4000, room=0.003) == 2
    # Not known yet (no window accounted): as before, cheap keeps more.
    assert keeping.observe(1.0, 0.002, 2000, 4000, room=None) == 1


def test_the_budgets_room_is_what_the_last_window_left_of_it() -> None:
    budget = OverheadBudget(0.02, requested_rate=100)
    assert budget.room() is None
    budget.observe(WindowCost(seconds=8.0, rate_hz=5, pyspy_cpu=0.08, agent_cpu=0.02,
                              collector_cpu=0.06, capacity=2.0))  # 1% of two cores
    assert budget.room() == pytest.approx(0.02)
    budget.observe(WindowCost(seconds=8.0, rate_hz=5, pyspy_cpu=0.2, agent_cpu=0.08,
                              collector_cpu=0.12, capacity=1.0))  # 5% of one core
    assert budget.room() == pytest.approx(-0.03)


def test_the_watchdogs_share_halves_over_budget_and_comes_back_with_room() -> None:
    from apiscope.agent.loopwatch import FOLLOW_CPU_SHARE
    from apiscope.collectors.budget import MIN_WATCH_SHARE, WatchShare

    budget = OverheadBudget(0.02, requested_rate=100)
    watch = WatchShare()
    assert watch.observe(budget) == FOLLOW_CPU_SHARE  # no window yet
    over = WindowCost(seconds=8.0, rate_hz=MIN_RATE, pyspy_cpu=0.1, agent_cpu=0.1,
                      collector_cpu=0.1, capacity=1.0)  # 3.75 % of a core at the lowest rate
    budget.observe(over)
    assert watch.observe(budget) == FOLLOW_CPU_SHARE / 2
    assert watch.observe(budget) == FOLLOW_CPU_SHARE / 2  # once per window, not per call
    for _ in range(8):
        budget.observe(over)
        watch.observe(budget)
    assert watch.share == MIN_WATCH_SHARE  # no lower
    assert watch.look_interval == pytest.approx(0.16)  # the looks spaced out 4 times, no more
    assert watch.scale == pytest.approx(1 / 16)  # and the live analysis's share cut as much
    # A window at 1.5 % leaves 0.5 % of a core: room for twice the share in two processes.
    within = WindowCost(seconds=8.0, rate_hz=MIN_RATE, pyspy_cpu=0.04, agent_cpu=0.04,
                        collector_cpu=0.04, capacity=1.0)
    budget.observe(within)
    assert watch.observe(budget, processes=2) == MIN_WATCH_SHARE * 2
    for _ in range(8):
        budget.observe(within)
        watch.observe(budget, processes=2)
    assert watch.share == FOLLOW_CPU_SHARE  # back to the agents' default, no higher
    assert watch.scale == 1.0
    # Within budget but without room for more: it holds.
    tight = WindowCost(seconds=8.0, rate_hz=MIN_RATE, pyspy_cpu=0.05, agent_cpu=0.05,
                       collector_cpu=0.055, capacity=1.0)  # 1.94 %
    watch.share = FOLLOW_CPU_SHARE / 4
    budget.observe(tight)
    assert watch.observe(budget) == FOLLOW_CPU_SHARE / 4


def test_the_first_window_opens_at_a_moderate_rate() -> None:
    # Before any window's cost is known, a first second at the rate asked for cost py-spy
    # 160-190 ms on a Django server: the first window opens at FIRST_RATE at most.
    assert OverheadBudget(0.02, requested_rate=100).first_rate() == FIRST_RATE
    assert OverheadBudget(0.02, requested_rate=10).first_rate() == 10
    assert OverheadBudget(0.02, requested_rate=100, min_rate=50).first_rate() == 50


def test_a_floor_that_breaks_the_budget_gives_way_to_the_last_resort_rate() -> None:
    budget = OverheadBudget(0.02, 100, min_rate=5)
    # A first window at 25 Hz: py-spy 1.4 ms a tick (35 ms/s), the agent and the collector
    # 12 ms/s. The model affords 5 Hz at most; nothing has broken the floor yet.
    assert budget.observe(WindowCost(1.0, 25, 0.035, agent_cpu=0.004, collector_cpu=0.008)) == 5
    assert not budget.floor_broken
    # At 5 Hz it still costs 2.6 %: once may be the start's one-off costs; a second time, and
    # from now on the rate may go under the floor, as far as the model says (7 ms/s left for
    # ticks of 1.4 ms: 5 Hz would fit the model, but the measured windows did not; the learnt
    # cost now says less).
    assert budget.observe(WindowCost(8.0, 5, 0.112, agent_cpu=0.032, collector_cpu=0.064)) == 5
    assert not budget.floor_broken
    rate = budget.observe(WindowCost(8.0, 5, 0.112, agent_cpu=0.032, collector_cpu=0.064))
    assert budget.floor_broken and LAST_RESORT_RATE <= rate < 5
    # A collector alone over the budget leaves py-spy the last resort, no lower.
    assert budget.observe(WindowCost(8.0, rate, 0.02, collector_cpu=0.4)) == LAST_RESORT_RATE
    # The rate comes back up as the cost falls: the floor is a limit, not a setting.
    for _ in range(12):
        rate = budget.observe(WindowCost(8.0, rate, 0.004 * rate, collector_cpu=0.02))
    assert rate > 5
