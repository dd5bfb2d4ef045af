"""Tabulating a space: every grid point trained in full through the ordinary sweep path, then written as a table."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from robusttune.bench.table import grid_space, table_from_experiment, write_table
from robusttune.errors import ConfigError
from robusttune.experiment import MANIFEST, load_frozen_space, new_experiment_dir
from robusttune.search.sweep import SweepOptions, resume_sweep, run_sweep
from robusttune.search.trainable import TrainingRunner
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
             address: str | None = None, cache_dir: Path, verbose: int = 1) -> Tabulation:
    """Train every grid point of ``space`` into ``storage/name`` (an interrupted tabulation of the same grid is
    continued) and write the table to ``out``."""
    grid, grid_text = grid_space(space)
    experiment = Path(storage) / (name or f"tabulate-{space.name}")
    options = SweepOptions(trials=grid.budget.trials, concurrency=concurrency or grid.budget.concurrency,
                           seed=grid.sampler.seed, address=address, verbose=verbose)
    runner = TrainingRunner(cache_dir, baselines=False)
    started = time.perf_counter()
    resumed = (experiment / MANIFEST).is_file()
    if resumed:
        frozen, _ = load_frozen_space(experiment)
        if frozen.to_dict() != grid.to_dict():
            raise ConfigError(f"{experiment}: holds a tabulation of another space or grid; pass another `name`")
        log.info("resuming the tabulation in %s", experiment)
        resume_sweep(experiment, options, runner)
    else:
        experiment = new_experiment_dir(Path(storage), experiment.name, overwrite=False)
        run_sweep(experiment, grid, grid_text, options, runner)
    seconds = time.perf_counter() - started
    frame, meta = table_from_experiment(experiment, grid, grid_text, seconds)
    write_table(frame, meta, out)
    full = int((frame.groupby("point")["evaluation"].max() == meta["evaluations"]).sum())
    return Tabulation(out, experiment, meta["points"], full, len(frame), meta["evaluations"], round(seconds, 1), resumed)
