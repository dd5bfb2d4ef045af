"""Pareto fronts and 2-D hypervolume (maximisation); plain Python and numpy.

Reference point for the hypervolume: the caller's (robusttune reports use the zero-shot model's point when the
experiment has it, else the worst value of each objective among the complete trials). Only points that beat
the reference in both objectives add volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and strictly better somewhere (maximisation)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates. Exact duplicates are all kept (ties)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


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
