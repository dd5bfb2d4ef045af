"""The tabular search benchmark: ``tabulate`` a space's grid, ``replay`` searches against the table."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robusttune.api.common import cache_directory
from robusttune.bounds import at_least, check_seed
from robusttune.errors import ParameterError

BUDGET_LIMIT = 10.0  # a replay's budget, as a fraction of training the full grid once


def tabulate(space: str | os.PathLike[str], *, out: str | os.PathLike[str], storage: str | os.PathLike[str] = "runs",
             name: str | None = None, concurrency: int | None = None, address: str | None = None,
             overwrite: bool = False, cache_dir: str | os.PathLike[str] | None = None, verbose: int = 1,
             points: int | None = None, noise_points: int = 0, noise_seeds: int = 0):
    """Train every grid point of ``space`` in full into ``storage/name`` (default ``tabulate-<space>``; an
    interrupted tabulation of the same space is continued) and write the learning curves to the Parquet file
    ``out`` (``robusttune.bench.tabulate.Tabulation``). With ``points``: that many random points instead of the
    grid, the first ``noise_points`` of them again at seeds 1..``noise_seeds`` (a continuous benchmark)."""
    from robusttune.bench.tabulate import tabulate as run_tabulation
    from robusttune.space import load_space

    at_least("concurrency", concurrency, 1)
    at_least("points", points, 1)
    at_least("noise_points", noise_points, 0)
    at_least("noise_seeds", noise_seeds, 0)
    if points is None and (noise_points or noise_seeds):
        raise ParameterError("noise_points", "repeats random points: it needs `points`")
    if points is not None and noise_points > points:
        raise ParameterError("noise_points", f"must be at most points ({points}), got {noise_points}")
    if bool(noise_points) != bool(noise_seeds):
        raise ParameterError("noise_seeds", "and noise_points go together (both 0, or both at least 1)")
    target = Path(out)
    if target.exists() and not overwrite:
        raise ParameterError("out", f"{target} exists (pass `overwrite` to replace it)")
    loaded, _ = load_space(str(space))
    return run_tabulation(loaded, target, storage=Path(storage), name=name, concurrency=concurrency, address=address,
                          cache_dir=cache_directory(cache_dir), verbose=verbose, points=points,
                          noise_points=noise_points, noise_seeds=noise_seeds)


@dataclass(frozen=True)
class ReplayResult:
    """Searches of one arm against a table, one per seed: each run's trials, evaluations, hypervolume (and its
    fraction of the table's) at the budget, and the budget it needed to reach 95% of the table's hypervolume."""

    table: Path
    arm: str
    budget_evaluations: int
    full_grid_evaluations: int
    table_hypervolume: float
    runs: list[dict[str, Any]]
    storage: Path

    def to_dict(self) -> dict[str, Any]:
        return {"table": str(self.table), "arm": self.arm, "budget_evaluations": self.budget_evaluations,
                "full_grid_evaluations": self.full_grid_evaluations, "table_hypervolume": self.table_hypervolume,
                "runs": self.runs}


def replay(table: str | os.PathLike[str], *, sampler: str = "tpe", scheduler: str = "mo_asha", budget: float = 0.4,
           seeds: Sequence[int] = (0,), grace_period: int = 1, reduction_factor: float = 3.0,
           storage: str | os.PathLike[str] | None = None, pace: float = 0.0) -> ReplayResult:
    """Replay one search per seed of ``sampler`` + ``scheduler`` against ``table`` (a Parquet table, or
    ``mini_full`` for the shipped one) through Ray Tune, Optuna and the scheduler, each spending ``budget`` x the
    evaluations of training every tabulated point once; experiments go to ``storage`` (default: a temporary folder)."""
    from robusttune.bench.compare import budget_to_reach, hypervolume_at
    from robusttune.bench.replay import Arm, resolve_table, run_replay, table_reference
    from robusttune.bench.table import read_table

    seeds = [check_seed(int(s), "seeds") for s in seeds]
    if not seeds:
        raise ParameterError("seeds", "names no seed")
    if not 0 < budget <= BUDGET_LIMIT:
        raise ParameterError("budget", f"is a fraction of the table's compute (every point trained once) in (0, {BUDGET_LIMIT:g}], got {budget}")
    at_least("pace", pace, 0, " seconds")
    if sampler == "paper_grid" and scheduler != "none":
        raise ParameterError("scheduler", "must be none for the paper's grid (it runs every config in full)")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # replays are many short searches: no progress tables
    path = resolve_table(str(table))
    stored = read_table(path)
    full_grid = len(stored.curves) * stored.evaluations  # the compute of training every grid point in full
    arm = Arm.of(sampler, scheduler, grace_period=grace_period, reduction_factor=reduction_factor)
    evaluations = max(1, round(budget * full_grid))
    _, table_hv = table_reference(stored)
    where = Path(storage) if storage else Path(tempfile.mkdtemp(prefix="robusttune-replay-"))
    runs = []
    for seed in seeds:
        run = run_replay(path, arm, seed, evaluations, where, name=f"{arm.name}-seed{seed}", pace=pace)
        reached = budget_to_reach(run.curve, 0.95 * table_hv)
        hv = hypervolume_at(run.curve, evaluations)
        runs.append({"seed": seed, "trials": run.trials, "evaluations": run.used,
                     "hv": round(hv, 6), "hv_fraction": round(hv / table_hv, 4),
                     "budget_fraction_to_95pct": None if reached is None else round(reached / full_grid, 4),
                     "seconds": round(run.seconds, 1), "experiment": str(run.experiment)})
    return ReplayResult(path, arm.name, evaluations, full_grid, table_hv, runs, where)


@dataclass(frozen=True)
class SurrogateResult:
    """A continuous benchmark's surrogate, fitted to its table: its held-out quality per target, the measured
    training noise, and the hypervolumes a search is measured against."""

    table: Path
    points: int
    rows: int
    evaluations: int
    trial_seconds: float | None  # what tabulating the points cost (each trial's seconds, summed)
    quality: dict[str, dict[str, float]]  # per target: r2, spearman, r2_final, spearman_final
    noise: dict[str, Any]  # sd per metric and evaluation, correlation per metric, points held at several seeds
    reference: list[float]
    table_hypervolume: float  # of the tabulated points' last evaluations
    front_hypervolume: float  # of the surrogate's noiseless front (the benchmark's best)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "table": str(self.table)}


def surrogate(table: str | os.PathLike[str]) -> SurrogateResult:
    """Fit the surrogate of a table of random points (``tabulate(..., points=N)``, or ``mini_continuous`` for the
    shipped one) and measure it: held-out R^2 and rank correlation (grouped 5-fold cross-validation), the noise."""
    from robusttune.bench.replay import resolve_table, table_reference
    from robusttune.bench.surrogate import Surrogate
    from robusttune.bench.table import read_table
    from robusttune.errors import DataError

    path = resolve_table(str(table))
    stored = read_table(path)
    if stored.kind != "points":
        raise DataError(f"{path}: a grid table; a surrogate is fitted to a table of random points (tabulated with `points`)")
    model = Surrogate(stored)
    reference, table_hv = table_reference(stored)
    return SurrogateResult(path, len(stored.curves), len(stored.frame), stored.evaluations,
                           stored.meta.get("trial_seconds"), model.quality, model.noise.to_dict(), list(reference),
                           table_hv, model.front_hypervolume(reference))
