"""The searcher comparison's statistics, on hypervolume curves made by hand."""

import math

import pytest

from robusttune.bench import compare


def test_a_curve_is_read_at_a_budget_and_to_a_target():
    curve = [(3, 0.1), (6, 0.4), (9, 0.5)]
    assert compare.hypervolume_at(curve, 2) == 0.0 and compare.hypervolume_at(curve, 7) == 0.4
    assert compare.budget_to_reach(curve, 0.45) == 9 and compare.budget_to_reach(curve, 0.6) is None
    assert compare.hypervolume_at_mean([curve, [(1, 0.2)]], 3) == pytest.approx(0.15)


def test_the_interval_is_students_t_over_seeds():
    mean, low, high = compare.mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert compare.mean_interval([5.0]) == (5.0, 5.0, 5.0)


def test_mann_whitney_is_one_sided():
    better, worse = [0.9, 0.8, 0.85, 0.95, 0.92], [0.5, 0.6, 0.55, 0.52, 0.58]
    assert compare.mann_whitney_greater(better, worse) < 0.01
    assert compare.mann_whitney_greater(worse, better) > 0.99
    assert compare.mann_whitney_greater([1.0, 1.0], [1.0, 1.0]) == 1.0


def test_ranks_are_per_seed_and_ties_share_them():
    ranks = compare.mean_ranks({"a": [3.0, 3.0], "b": [1.0, 2.0], "c": [2.0, 2.0]})
    assert ranks == {"a": 1.0, "b": 2.75, "c": 2.25}
    with pytest.raises(ValueError):
        compare.mean_ranks({"a": [1.0], "b": [1.0, 2.0]})


def test_friedman_tells_a_consistent_order_from_noise():
    consistent = {"a": [3.0 + i for i in range(8)], "b": [2.0 + i for i in range(8)], "c": [1.0 + i for i in range(8)]}
    assert compare.friedman_p(consistent) < 0.001
    mixed = {"a": [1, 2, 3, 1, 2, 3], "b": [2, 3, 1, 2, 3, 1], "c": [3, 1, 2, 3, 1, 2]}
    assert compare.friedman_p(mixed) > 0.5
    assert compare.friedman_p({"a": [1.0], "b": [2.0]}) is None


def test_an_arms_figures_at_the_budget():
    curves = [[(2, 0.5), (4, 0.96)], [(2, 0.2), (6, 0.7)], [(3, 0.97)]]
    figures = compare.arm_figures("x", curves, budget=4, target=0.95)
    assert figures.hv_by_seed == [0.96, 0.2, 0.97]
    assert figures.budget_to_target_by_seed == [4, None, 3] and figures.budget_to_target_median == 4
    assert compare.arm_figures("y", curves[1:2], 4, 0.95).budget_to_target_median is None
