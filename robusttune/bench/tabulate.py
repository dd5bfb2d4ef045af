"""Tabulating a space through the ordinary sweep path, then writing it as a table: every grid point trained in
full, or (``points``) that many random points of a continuous space, with ``noise_points`` of them trained again
at ``noise_seeds`` more seeds to measure the training noise (robusttune.bench.surrogate)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from robusttune.bench.table import (grid_space, points_table_from_experiments, random_space, table_from_experiment,
                                    write_table)
from robusttune.errors import ConfigError
from robusttune.experiment import MANIFEST, latest_by_trial, load_frozen_space, new_experiment_dir
from robusttune.search.sweep import SweepOptions, resume_sweep, run_sweep
from robusttune.search.trainable import TrainingRunner
from robusttune.search.warm_start import WarmStart
from robusttune.space import SearchSpace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tabulation:
    table: Path
    experiment: Path
    points: int
    full_curves: int  # grid points whose curve reached the last evaluation
    rows: int
    evaluations_per_curve: int
    seconds: float
    resumed: bool


def tabulate(space: SearchSpace, out: Path, *, storage: Path, name: str | None = None, concurrency: int | None = None,
             address: str | None = None, cache_dir: Path, verbose: int = 1, points: int | None = None,
             noise_points: int = 0, noise_seeds: int = 0) -> Tabulation:
    """Train every grid point of ``space`` (or ``points`` random points, the first ``noise_points`` of them again
    at seeds 1..``noise_seeds``) into ``storage/name`` (an interrupted tabulation of the same space is continued)
    and write the table to ``out``."""
    if points is None:
        tabulated, text = grid_space(space)
    else:
        tabulated, text = random_space(space, points)
    experiment = Path(storage) / (name or f"tabulate-{space.name}")
    options = SweepOptions(trials=tabulated.budget.trials, concurrency=concurrency or tabulated.budget.concurrency,
                           seed=tabulated.sampler.seed, address=address, verbose=verbose)
    runner = TrainingRunner(cache_dir, baselines=False)
    started = time.perf_counter()
    resumed = (experiment / MANIFEST).is_file()
    experiment = _run(experiment, tabulated, text, options, runner)
    if points is None:
        seconds = time.perf_counter() - started
        frame, meta = table_from_experiment(experiment, tabulated, text, seconds)
    else:
        runs = [(experiment, 0)]
        if noise_points:
            repeated = _first_points(experiment, tabulated, noise_points)
            for seed in range(1, noise_seeds + 1):
                again = Path(storage) / f"{experiment.name}-seed{seed}"
                warm = WarmStart(experiment, tuple(repeated), ())
                seeded = SweepOptions(trials=len(repeated), concurrency=options.concurrency, seed=seed,
                                      address=address, verbose=verbose)
                runs.append((_run(again, tabulated, text, seeded, runner, warm_start=warm), seed))
        seconds = time.perf_counter() - started
        frame, meta = points_table_from_experiments(runs, tabulated, text, seconds)
    write_table(frame, meta, out)
    full = int((frame.groupby("point")["evaluation"].max() == meta["evaluations"]).sum())
    return Tabulation(out, experiment, meta["points"], full, len(frame), meta["evaluations"], round(seconds, 1), resumed)


def _run(experiment: Path, space: SearchSpace, text: str, options: SweepOptions, runner: TrainingRunner, *,
         warm_start: WarmStart | None = None) -> Path:
    """Run the tabulation's sweep into ``experiment``, or continue it there."""
    if (experiment / MANIFEST).is_file():
        frozen, _ = load_frozen_space(experiment)
        if frozen.to_dict() != space.to_dict():
            raise ConfigError(f"{experiment}: holds a tabulation of another space or grid; pass another `name`")
        log.info("resuming the tabulation in %s", experiment)
        resume_sweep(experiment, options, runner)
        return experiment
    experiment = new_experiment_dir(experiment.parent, experiment.name, overwrite=False)
    run_sweep(experiment, space, text, options, runner, warm_start=warm_start)
    return experiment


def _first_points(experiment: Path, space: SearchSpace, count: int) -> list[dict]:
    """The sampled values of the experiment's first ``count`` complete trials (in the records' order)."""
    complete = [row for row in latest_by_trial(experiment).values() if row.get("status") == "complete"]
    if len(complete) < count:
        raise ConfigError(f"{experiment}: {len(complete)} complete trial(s), fewer than the {count} noise points asked for")
    return [{k: v for k, v in row["sampled"].items() if k in space.parameters} for row in complete[:count]]
