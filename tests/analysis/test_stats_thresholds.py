from __future__ import annotations

import math

import pytest

from apiscope.analysis.flags import function_name
from apiscope.analysis.stats import fit_line, percentile
from apiscope.analysis.thresholds import Thresholds, from_mapping, grade
from apiscope.errors import UsageError


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.5
    assert percentile(values, 0.95) == pytest.approx(95.05)
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


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
