"""Comparing searchers over replicated searches, with the statistics multi-objective HPO studies use (YAHPO Gym's
suite: ranks per replication, a Friedman test; Optuna's sampler comparisons: a one-sided Mann-Whitney U test).

A search's result is its hypervolume curve (``(evaluations used, hypervolume)`` after each completed trial, see
``robusttune.bench.replay.hypervolume_by_budget``); every figure here is a function of those curves, so it is
tested without running a search.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Curve = Sequence[tuple[int, float]]


def hypervolume_at(curve: Curve, budget: int) -> float:
    """The hypervolume of the trials complete once ``budget`` evaluations were used (0 before the first)."""
    return max([hv for used, hv in curve if used <= budget], default=0.0)


def hypervolume_at_mean(curves: Sequence[Curve], budget: int) -> float:
    """The mean over searches of their hypervolume at ``budget``."""
    return statistics.fmean(hypervolume_at(curve, budget) for curve in curves)


def budget_to_reach(curve: Curve, target: float) -> int | None:
    """The evaluations used when the hypervolume first reached ``target``; None if it never did."""
    return next((used for used, hv in curve if hv >= target), None)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and its Student-t interval over replications (a single value: the value, no width)."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def mann_whitney_greater(first: Sequence[float], second: Sequence[float]) -> float:
    """One-sided Mann-Whitney U test: the p-value of ``first`` being stochastically greater than ``second``
    (independent replications: arms' seeds are separate searches, not pairs)."""
    from scipy.stats import mannwhitneyu

    if statistics.pstdev([*first, *second]) == 0:
        return 1.0  # all equal: no evidence either way
    return float(mannwhitneyu(first, second, alternative="greater").pvalue)


def mean_ranks(values_by_arm: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Each arm's mean rank over replications (1 = the largest value of its replication; ties share the mean
    rank). Replication i of every arm is ranked together, so every arm needs the same number of them."""
    from scipy.stats import rankdata

    arms = list(values_by_arm)
    count = {len(v) for v in values_by_arm.values()}
    if len(count) != 1:
        raise ValueError("every arm needs the same number of replications to be ranked")
    ranks = {arm: [] for arm in arms}
    for i in range(count.pop()):
        for arm, rank in zip(arms, rankdata([-values_by_arm[a][i] for a in arms])):
            ranks[arm].append(float(rank))
    return {arm: statistics.fmean(r) for arm, r in ranks.items()}


def friedman_p(values_by_arm: Mapping[str, Sequence[float]]) -> float | None:
    """Friedman's test that all arms rank alike over the replications (None with fewer than 3 arms)."""
    from scipy.stats import friedmanchisquare

    if len(values_by_arm) < 3:
        return None
    columns = list(values_by_arm.values())
    if all(statistics.pstdev(column) == 0 for column in zip(*columns)):
        return 1.0
    return float(friedmanchisquare(*columns).pvalue)


@dataclass(frozen=True)
class ArmFigures:
    """One arm's figures over its replications."""

    arm: str
    seeds: int
    hv_by_seed: list[float]  # at the compared budget
    hv_mean: float
    hv_low: float  # 95% Student-t interval of the mean
    hv_high: float
    budget_to_target_by_seed: list[int | None]  # evaluations to reach the target hypervolume (None: never)
    budget_to_target_median: float | None  # None when half the seeds or more never got there

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def arm_figures(arm: str, curves: Sequence[Curve], budget: int, target: float) -> ArmFigures:
    hvs = [hypervolume_at(curve, budget) for curve in curves]
    mean, low, high = mean_interval(hvs)
    reached = [budget_to_reach(curve, target) for curve in curves]
    median = statistics.median([math.inf if r is None else r for r in reached])
    return ArmFigures(arm, len(curves), hvs, mean, low, high, reached, None if median == math.inf else median)


def hypervolume_over_budget(curves: Sequence[Curve], budgets: Sequence[int]) -> list[tuple[float, float, float]]:
    """Mean and 95% interval of the hypervolume at each budget (for the figure)."""
    return [mean_interval([hypervolume_at(curve, b) for curve in curves]) for b in budgets]
