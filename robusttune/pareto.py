"""Pareto fronts, non-dominated sorting and 2-D hypervolume (maximisation); plain Python and numpy.

Shared by the search (MO-ASHA's rungs, the baselines' choice of trials) and ``robusttune.analysis`` (reports).

Reference point for the hypervolume: the caller's (robusttune's report uses the worst value of each objective among
the complete trials: a fine-tuned trial often loses OOD accuracy to the zero-shot model, which as a reference would
leave a volume of zero; the benchmark's replays use the table's worst final point). Only points that beat the
reference in both objectives add volume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from robusttune.errors import ConfigError


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and strictly better somewhere (maximisation)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def _domination_matrix(points: Sequence[Sequence[float]]) -> np.ndarray:
    """``[i, j]``: point i dominates point j (vectorised ``dominates``; NaN never dominates nor is dominated)."""
    array = np.asarray(points, dtype=float).reshape(len(points), -1)
    at_least = (array[:, None, :] >= array[None, :, :]).all(axis=-1)
    better = (array[:, None, :] > array[None, :, :]).any(axis=-1)
    return at_least & better


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates. Exact duplicates are all kept (ties)."""
    if not len(points):
        return []
    return [int(i) for i in np.flatnonzero(~_domination_matrix(points).any(axis=0))]


def front(rows: Sequence[Mapping[str, Any]], axes: Sequence[str], directions: Sequence[str] | None = None) -> list[int]:
    """The Pareto front of a table's rows on ``axes`` (each ``max`` unless ``directions`` says ``min``): indices of
    the complete rows (``status == "complete"``) with a number on every axis that no other such row dominates,
    best on the first axis first. Stopped-early, failed and running trials never enter a front. The one front
    function: the search's (the objective's metrics) and the report's (ID test vs OOD mean) differ only in axes."""
    signs = [-1.0 if d == "min" else 1.0 for d in (directions or ["max"] * len(axes))]
    eligible = [i for i, row in enumerate(rows) if row.get("status") == "complete" and all(_is_number(row.get(a)) for a in axes)]
    kept = non_dominated([[sign * float(rows[i][a]) for sign, a in zip(signs, axes)] for i in eligible])
    return sorted((eligible[k] for k in kept), key=lambda i: -signs[0] * float(rows[i][axes[0]]))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Area dominated by ``points`` and bounded below by ``reference`` (both objectives maximised)."""
    rx, ry = reference
    above = sorted({(float(x), float(y)) for x, y in points if x > rx and y > ry}, key=lambda p: (-p[0], -p[1]))
    area, best_y = 0.0, ry
    for x, y in above:  # sweep from the largest x down; each new height adds a slab
        if y > best_y:
            area += (x - rx) * (y - best_y)
            best_y = y
    return area


def hypervolume_over_trials(points: Sequence[Sequence[float]], reference: Sequence[float]) -> list[float]:
    """The hypervolume after each point in order (is the search still improving?)."""
    return [hypervolume_2d(points[: i + 1], reference) for i in range(len(points))]


def worst_point(points: Sequence[Sequence[float]]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.min(np.asarray(points, dtype=float), axis=0))


def nondominated_fronts(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """Non-dominated sorting (maximisation): the first front, then the front of what is left, and so on."""
    if not len(points):
        return []
    matrix, fronts = _domination_matrix(points), []
    remaining = np.ones(len(points), dtype=bool)
    while remaining.any():
        alive = np.flatnonzero(remaining)
        front = alive[~matrix[np.ix_(alive, alive)].any(axis=0)]
        fronts.append([int(i) for i in front])
        remaining[front] = False
    return fronts


def _normalised(points: Sequence[Sequence[float]]) -> np.ndarray:
    """Each objective scaled to [0, 1] over ``points`` (a constant objective becomes 0)."""
    array = np.asarray(points, dtype=float).reshape(len(points), -1)
    low, span = array.min(axis=0), np.ptp(array, axis=0)
    return (array - low) / np.where(span > 0, span, 1.0)


def crowding_distance(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II crowding distance of each point within its set: the extremes of every objective get infinity."""
    array, n = _normalised(points), len(points)
    distance = np.zeros(n)
    if n <= 2:
        return [float("inf")] * n
    for column in array.T:
        order = np.argsort(column, kind="stable")
        distance[order[0]] = distance[order[-1]] = float("inf")
        distance[order[1:-1]] += column[order[2:]] - column[order[:-2]]
    return [float(d) for d in distance]


def eps_net_order(points: Sequence[Sequence[float]]) -> list[int]:
    """Farthest-first order of a set (the epsilon-net selection of MO-ASHA): start from the best point of the first
    objective, then repeatedly take the point farthest (normalised Euclidean) from those already taken."""
    array = _normalised(points)
    if not len(array):
        return []
    order = [int(np.argmax(array[:, 0]))]  # argmax takes the first of ties: earlier points win
    nearest = np.linalg.norm(array - array[order[0]], axis=1)
    while len(order) < len(array):
        nearest[order] = -1.0
        chosen = int(np.argmax(nearest))
        order.append(chosen)
        nearest = np.minimum(nearest, np.linalg.norm(array - array[chosen], axis=1))
    return order


def multi_objective_ranking(points: Sequence[Sequence[float]], tie_break: str = "eps_net") -> list[int]:
    """Indices of ``points`` best first: by non-dominated front, then within a front by ``tie_break``
    (``eps_net``: farthest-first; ``crowding``: larger crowding distance first). Remaining ties keep input order."""
    if tie_break not in ("eps_net", "crowding"):
        raise ConfigError(f"tie_break must be eps_net or crowding, got {tie_break!r}")
    ranking: list[int] = []
    for front in nondominated_fronts(points):
        members = [points[i] for i in front]
        if tie_break == "crowding":
            distance = crowding_distance(members)
            local = sorted(range(len(front)), key=lambda k: -distance[k])  # stable: input order on ties
        else:
            local = eps_net_order(members)
        ranking.extend(front[k] for k in local)
    return ranking
