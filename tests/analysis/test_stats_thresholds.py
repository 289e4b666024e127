from __future__ import annotations

import math

import pytest

from apiscope.analysis.flags import function_name
from apiscope.analysis.stats import exit_notes, fit_line, percentile, quantile_lower_bound
from apiscope.analysis.thresholds import Thresholds, from_mapping, grade
from apiscope.errors import UsageError


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.5
    assert percentile(values, 0.95) == pytest.approx(95.05)
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_a_quantiles_lower_bound_is_an_order_statistic_it_is_sure_of() -> None:
    values = [float(v) for v in range(1, 13)]
    # P(Binomial(12, 0.95) >= 10) = 0.98, >= 11 = 0.88: the 10th of 12 at 90%, the 11th at 85%.
    assert quantile_lower_bound(values, 0.95, 0.9) == 10.0
    assert quantile_lower_bound(values, 0.95, 0.85) == 11.0
    # Thousands: a hair under the quantile; the exact sum and the approximation meet at 200.
    thousand = [float(v) for v in range(1, 1001)]
    assert 935 <= quantile_lower_bound(thousand, 0.95) <= percentile(thousand, 0.95)
    near = [abs(quantile_lower_bound([float(v) for v in range(1, n + 1)], 0.95) - 0.95 * n)
            for n in (200, 201)]
    assert max(near) < 6
    # Too few to be sure of anything: the smallest. Never above the quantile itself.
    assert quantile_lower_bound([5.0, 9.0], 0.95, 0.95) == 5.0
    assert quantile_lower_bound([5.0, 9.0], 0.95, 0.9) == percentile([5.0, 9.0], 0.95)
    assert quantile_lower_bound([7.0] * 40, 0.5) == 7.0
    with pytest.raises(ValueError):
        quantile_lower_bound([], 0.95)


def test_fit_line_reports_slope_r2_and_t() -> None:
    fit = fit_line([0, 1, 2, 3, 4], [1, 3, 5, 7, 9])
    assert fit is not None and fit.slope == 2.0 and fit.r2 == 1.0 and math.isinf(fit.t)
    noisy = fit_line([0, 1, 2, 3, 4, 5], [5, 4, 6, 5, 4, 6])
    assert noisy is not None and noisy.r2 < 0.2 and abs(noisy.t) < 1
    assert fit_line([1, 1, 1], [1, 2, 3]) is None
    assert fit_line([1, 2], [1, 2]) is None


def test_grade_and_overrides() -> None:
    assert grade(0.04, (0.05, 0.1, 0.25)) is None
    assert grade(0.05, (0.05, 0.1, 0.25)) == "low"
    assert grade(0.2, (0.05, 0.1, 0.25)) == "medium"
    assert grade(0.9, (0.05, 0.1, 0.25)) == "high"
    th = from_mapping({"slo_ms": 150, "min_requests": 3, "error_share": [0.01, 0.1, 0.3]})
    assert th.slo_ms == 150.0 and th.min_requests == 3 and th.error_share == (0.01, 0.1, 0.3)
    assert Thresholds().slo_ms is None  # the session's objective unless overridden
    for bad in ({"error_share": [0.3, 0.1, 0.2]}, {"error_share": 0.1}, {"min_requests": "x"},
                {"slo_ms": 0}, {"min_requests": -1}, {"nope": 1}):
        with pytest.raises(UsageError):
            from_mapping(bad)


def test_function_names_in_locations() -> None:
    assert function_name("search_items.<locals>.<setcomp>") == "search_items"
    assert function_name("a.<locals>.b.<locals>.<listcomp>") == "b"
    assert function_name("outer.<locals>.inner") == "inner"
    assert function_name("Items.get") == "Items.get"
    assert function_name("<module>") == "<module>"


@pytest.mark.parametrize("values", [
    [7.0],
    [1.0, 2.0],
    [3.0, 3.0, 3.0],
    [float(v) for v in range(1, 101)],
    [0.1, 0.5, 0.9, 4.0, 12.5, 80.0, 81.0],
    sorted(((v * 37) % 101) / 7 for v in range(250)),
])
def test_the_agents_percentile_matches_the_reports(values: list[float]) -> None:
    # The agent keeps its own copy (it imports nothing of apiscope): nearest rank where the
    # report interpolates, so both must land between the same two neighbouring values.
    from apiscope.agent.schedstat import percentile as agent_percentile

    for q in (0.0, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0):
        report, agent = percentile(values, q), agent_percentile(values, q)
        pos = (len(values) - 1) * q
        low, high = values[math.floor(pos)], values[math.ceil(pos)]
        assert low <= report <= high and agent in (low, high)
    for q in (0.0, 1.0):
        assert agent_percentile(values, q) == percentile(values, q)
    assert agent_percentile(values[:1], 0.5) == percentile(values[:1], 0.5)


def test_a_few_exits_are_named_one_by_one_and_a_servers_recycling_in_one_line() -> None:
    few = exit_notes({12: 9.4, 11: 2.2})
    assert [line.split(" exited ")[0] for line in few] == ["pid 11", "pid 12"]
    assert few[0].startswith("pid 11 exited 2.2 s into the session: recycled by its server")
    many = {100 + i: 40.0 - 4 * i for i in range(9)}  # gunicorn's --max-requests at work
    (line,) = exit_notes(many)
    assert line.startswith("9 processes exited during the session (108 at 8.0 s, 107 at 12.0 s")
    assert "each recycled by their server (gunicorn's --max-requests)" in line
