"""Replaying searches against a tabulated benchmark through the real sweep path.

A replay is an ordinary sweep (Ray Tune + the Optuna sampler + the scheduler + records) whose trainable looks
the sampled config up in the table instead of training: it reports the grid point's stored learning curve one
evaluation at a time, with the curve's wall-clock seconds as simulated time (``sim_time_s``). Continuous samples
go to the nearest grid value (log scale where the parameter is), categorical ones must be in the grid.

Budget: evaluations (one evaluation interval of one trial), counted over the whole search; the search stops once
it has used ``max_evaluations``. Trials run one at a time, so a replay is deterministic for a given seed and the
order of the records is the order in which the budget was spent.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from robusttune.config import parse
from robusttune.errors import ConfigError, DataError
from robusttune.experiment import (is_evaluation, latest_by_trial, new_experiment_dir, parse_space_text, read_records,
                                   reported_evaluations, trial_files)
from robusttune.constraints import references_needed, score
from robusttune.pareto import hypervolume_2d, hypervolume_over_trials, worst_point
from robusttune.search.sweep import SweepOptions, run_sweep
from robusttune.search.trainable import failure_result
from robusttune.search.warm_start import WarmStart
from robusttune.space import SearchSpace
from robusttune.bench.table import Table, read_table

PAPER_LR, PAPER_W_DISTILL = 3e-4, 1.0  # the paper's grid: its strategies x thresholds at one lr and weight

_TABLES: dict[str, Table] = {}


def _table(path: str) -> Table:
    if path not in _TABLES:  # actors are reused: read the file once per process
        _TABLES[path] = read_table(path)
    return _TABLES[path]


def replay_trial(config: dict[str, Any], *, table: str, space_yaml: str, experiment: str, pace: float = 0.0,
                 fidelity: int | None = None, surrogate: Any = None) -> None:
    """Ray Tune trainable: report the stored curve of the grid point nearest to ``config`` (the surrogate's curve
    on a continuous benchmark), its first ``fidelity`` evaluations only when given (a cheaper, shorter study)."""
    from robusttune.cache import atomic_write_json

    stored = _table(table)
    space = parse_space_text(space_yaml)
    sampled = {k: v for k, v in config.items() if k in space.parameters}
    if stored.kind == "points":  # a continuous benchmark: the surrogate's curve, with the noise of this seed
        from robusttune.bench.surrogate import surrogate_of

        model = surrogate or surrogate_of(table, stored)  # fitted by the driver, once per replay (Ray's object store)
        point, curve = None, model.curve(sampled, seed=int(config.get("seed", 0)))
    else:
        point = stored.point_of({**space.fixed, **sampled})
        curve = stored.curves.get(point, [])
    total = int(stored.frame["step"].max())
    if fidelity is not None and len(curve) >= fidelity:  # a low-fidelity trial: it ends at its fidelity-th evaluation
        curve = curve[:fidelity]
        total = int(curve[-1]["step"])
    files = trial_files(experiment, tune.get_context().get_trial_id())
    progress = files.replay
    if not files.config.is_file():  # what the records show as the trial's config, as a training trial writes it
        files.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(files.config, space.trial_config(sampled, seed=int(config.get("seed", 0))).to_dict())
    start = json.loads(progress.read_text())["evaluation"] if progress.is_file() else 0  # resumed after a crash
    metrics = stored.meta["metrics"]
    # Resumed: report the last recorded evaluation again, as the training trainable does (it may not have reached
    # Tune; and a finished trial that returned without reporting would give Tune a result without the metrics)
    for row in curve[max(start - 1, 0):]:
        if pace:
            time.sleep(pace)  # lets tests interrupt a replay mid-search
        values = {m: float(row[m]) for m in metrics if m in row and not _missing(row[m])}
        atomic_write_json(progress, {"evaluation": int(row["evaluation"])})
        tune.report({**values, **score(space.objective, values), "step": int(row["step"]),
                     "epoch": float(row["epoch"]), "evaluation": int(row["evaluation"]), "total_steps": total,
                     "sim_time_s": float(row["time_s"]), **({} if point is None else {"table_point": point}),
                     "trial_status": "complete" if int(row["step"]) >= total else "running"})
    if len(curve) < (fidelity or stored.evaluations):
        last = {m: float(curve[-1][m]) for m in metrics if curve and m in curve[-1] and not _missing(curve[-1][m])}
        tune.report(failure_result(space, last, step=int(curve[-1]["step"]) if curve else 0, evaluation=len(curve),
                                   total_steps=total, failure=f"grid point {point} has no full curve in the table"))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class EvaluationBudget(tune.Stopper):
    """Stops the whole search once its trials have reported ``limit`` evaluations in total. Tune restores the
    copy it pickled at the start, so on a resume the count is rebuilt from the experiment's records."""

    def __init__(self, limit: int, experiment: str | Path | None = None):
        self.limit, self.experiment = int(limit), experiment
        self.seen = reported_evaluations(Path(experiment)) if experiment else set()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.experiment:
            self.seen = reported_evaluations(Path(self.experiment))

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        # Tune repeats a function trainable's last result when it returns: count each evaluation once
        if "evaluation" in result and result.get("trial_status") != "failed":
            self.seen.add((trial_id, int(result["evaluation"])))
        return False

    def stop_all(self) -> bool:
        return len(self.seen) >= self.limit


@dataclass(frozen=True)
class ReplayRunner:
    """Trials replay the table's curves (``replay_trial``); the search stops after ``max_evaluations``; no
    baselines (a table has no weights)."""

    table: str
    pace: float = 0.0  # seconds a replayed evaluation waits (to watch a replay live, or interrupt it)
    max_evaluations: int | None = None
    fidelity: int | None = None  # evaluations per trial (a low-fidelity study); None: the full curve

    def trainable(self, experiment: Path, space: SearchSpace, space_text: str):
        function = functools.partial(replay_trial, table=self.table, space_yaml=space_text, experiment=str(experiment),
                                     pace=self.pace, fidelity=self.fidelity)
        stored = _table(self.table)
        if stored.kind != "points":
            return function
        from robusttune.bench.surrogate import surrogate_of

        # the surrogate is fitted here once per process (seconds) and shipped to the trials, not refitted by each
        return tune.with_parameters(function, surrogate=surrogate_of(self.table, stored))

    def stopper(self, experiment: Path) -> EvaluationBudget | None:
        return None if self.max_evaluations is None else EvaluationBudget(self.max_evaluations, experiment)

    def after_trials(self, experiment: Path, space: SearchSpace, space_text: str) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": "replay", "table": self.table, "pace": self.pace, "max_evaluations": self.max_evaluations,
                "fidelity": self.fidelity}

    @classmethod
    def from_manifest(cls, runner: dict[str, Any]) -> ReplayRunner:
        return cls(table=str(runner["table"]), pace=float(runner.get("pace") or 0.0),
                   max_evaluations=runner.get("max_evaluations"), fidelity=runner.get("fidelity"))


# ---------------------------------------------------------------------------------------------- arms


@dataclass(frozen=True)
class Arm:
    """One search strategy of the benchmark: an Optuna sampler (or the paper's grid) and a scheduler."""

    name: str
    sampler: str  # random | tpe | nsga2 | gp | botorch | paper_grid
    scheduler: str = "none"  # none | asha | mo_asha
    grace_period: int = 1
    reduction_factor: float = 3.0
    options: tuple[tuple[str, Any], ...] = ()  # the sampler's options (space.sampler.options)

    @classmethod
    def of(cls, sampler: str, scheduler: str, *, grace_period: int = 1, reduction_factor: float = 3.0,
           options: dict[str, Any] | None = None, label: str | None = None) -> Arm:
        """The arm named ``<label>+<scheduler>`` (just ``<label>`` without a scheduler; the label defaults to the
        sampler's name)."""
        label = label or sampler
        return cls(f"{label}+{scheduler}" if scheduler != "none" else label, sampler, scheduler, grace_period,
                   reduction_factor, tuple(sorted((options or {}).items())))


def replay_space(table: Table, arm: Arm, seed: int, trials: int) -> tuple[SearchSpace, str]:
    """The table's space as ``arm`` searches it, one trial at a time."""
    if table.space.objective.wise is not None:
        raise ConfigError("a table holds trials' own evaluations, not their WiSE-FT curves: its space cannot set "
                          "objective.wise")
    if references_needed(table.space.objective.bounds):
        raise ConfigError("a table holds no zero-shot or vanilla FT run: a replay's constraints are bounded by numbers")
    data = table.space.to_dict()
    if arm.sampler == "paper_grid":
        if table.kind != "grid":
            raise ConfigError("the paper's grid replays on a grid table (mini_full), not on a continuous benchmark")
        missing = [k for k in ("region", "refill", "mask_threshold", "lr", "w_distill") if k not in table.grid]
        if missing:
            raise ConfigError(f"the paper's grid needs a table that searches {missing}")
        parameters = {k: v for k, v in data["parameters"].items() if k in ("region", "refill", "mask_threshold")}
        data["fixed"] = {**data["fixed"], "lr": _nearest(table.grid["lr"], PAPER_LR),
                         "w_distill": _nearest(table.grid["w_distill"], PAPER_W_DISTILL)}
        data["parameters"] = parameters
        sampler = {"name": "grid", "seed": seed}
        trials = math.prod(len(table.grid[k]) for k in parameters)
    else:
        sampler = {"name": arm.sampler, "seed": seed, "options": dict(arm.options)}
    data.update(sampler=sampler, budget={"trials": trials, "concurrency": 1}, resources={"cpu": 1, "gpu": 0},
                scheduler={"name": arm.scheduler, "grace_period": arm.grace_period,
                           "reduction_factor": arm.reduction_factor})
    text = yaml.safe_dump(data, sort_keys=False)
    return parse(SearchSpace, data, f"replay space ({arm.name})"), text


def _nearest(values: list[float], target: float) -> float:
    return min(values, key=lambda v: abs(math.log(v) - math.log(target)))


# ------------------------------------------------------------------------------------------ measuring


REFERENCE_MARGIN = 0.01  # one accuracy point below the table's worst, so that no complete trial adds zero volume


def table_reference(table: Table) -> tuple[list[float], float]:
    """The reference point (the worst final value of each objective over the whole table, less one accuracy
    point) and the table's hypervolume over it: what a search is measured against."""
    finals = [values for _, values in table.final_points()]
    if not finals:
        raise DataError("the table has no full learning curve")
    reference = [v - REFERENCE_MARGIN for v in worst_point(finals)]
    return reference, hypervolume_2d(finals, reference)


def hypervolume_by_budget(experiment: Path, metrics: list[str], reference: list[float]) -> list[tuple[int, float]]:
    """(evaluations used, hypervolume of the trials complete by then) after each completion, in record order.
    Stopped-early and failed trials never count, as in the reports."""
    seen: set[tuple[str, int]] = set()  # an evaluation re-reported after a resume counts once
    spent, finished = [], []
    for row in read_records(experiment):
        if is_evaluation(row):
            seen.add((row["trial_id"], int(row["evaluation"])))
        if row.get("final") and row.get("status") == "complete" and all(m in row for m in metrics):
            spent.append(len(seen))
            finished.append([float(row[m]) for m in metrics])
    return list(zip(spent, hypervolume_over_trials(finished, reference)))


# ---------------------------------------------------------------------------------------------- running


def resolve_table(name_or_path: str) -> Path:
    """A table file, or the name of a built-in space whose table ships with robusttune (``mini_full``)."""
    from importlib import resources

    path = Path(name_or_path)
    if path.suffix == ".parquet" or path.exists():
        return path
    shipped = resources.files("robusttune.search_spaces") / f"{name_or_path}.parquet"
    if shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(f"no table '{name_or_path}': give a .parquet file (from `robusttune bench tabulate`) or a space "
                      f"with a shipped table (mini_full, mini_continuous)")


@dataclass(frozen=True)
class ReplayRun:
    arm: str
    seed: int
    curve: list[tuple[int, float]]  # (evaluations used, hypervolume) after each completed trial
    used: int  # evaluations the search spent
    trials: int
    seconds: float
    experiment: Path


def run_replay(table_path: Path, arm: Arm, seed: int, max_evaluations: int, storage: Path, *,
               pace: float = 0.0, name: str | None = None, fidelity: int | None = None,
               warm_start: WarmStart | None = None) -> ReplayRun:
    """One search of ``arm`` against the table, ``max_evaluations`` at most, as an experiment in ``storage``;
    trials of ``fidelity`` evaluations (default: full curves), the first ones ``warm_start``'s."""
    table = read_table(table_path)
    space, text = replay_space(table, arm, seed, trials=max_evaluations)
    experiment = new_experiment_dir(storage, name or f"{arm.name}-seed{seed}", overwrite=False)
    options = SweepOptions(trials=space.budget.trials, concurrency=1, seed=seed, verbose=0)
    runner = ReplayRunner(table=str(Path(table_path).resolve()), pace=pace, max_evaluations=max_evaluations,
                          fidelity=fidelity)
    started = time.perf_counter()
    run_sweep(experiment, space, text, options, runner, warm_start=warm_start)
    seconds = time.perf_counter() - started
    reference, _ = table_reference(table)
    curve = hypervolume_by_budget(experiment, list(space.objective.metrics), reference)
    used = len(reported_evaluations(experiment))
    return ReplayRun(arm.name, seed, curve, used, len(latest_by_trial(experiment)), seconds, experiment)
