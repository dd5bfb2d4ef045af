"""The tabular benchmark: every grid point of a space trained for real, with its full learning curve, in one
Parquet file (in the spirit of NAS-Bench / HPOBench tables and Syne Tune's simulator).

``tabulate`` runs the grid through the ordinary sweep path (Ray Tune + Optuna's grid sampler, records,
checkpoints; an interrupted tabulation resumes like any sweep) and turns the experiment's records into the table:
one row per (grid point, evaluation) with the point's parameters, every metric, the step and the trial's
wall-clock seconds so far. The file's metadata holds the space (YAML), the grid, the objective, how many
evaluations a full curve has, and how long tabulating took. ``replay`` (robusttune.bench.replay) reads it.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from robusttune.config import parse
from robusttune.errors import ConfigError, DataError
from robusttune.metrics import OBJECTIVE, is_metric
from robusttune.space import SearchSpace

META_KEY = b"robusttune.table"
FORMAT = "robusttune.table/1"


def grid_values(space: SearchSpace) -> dict[str, list[Any]]:
    """Each parameter's grid: its choices, or its ``grid`` values (numeric parameters must list them)."""
    values = {}
    for name, parameter in space.parameters.items():
        if parameter.when:
            raise ConfigError(f"space '{space.name}': tabulate does not take conditional parameters ('{name}' has 'when')")
        if parameter.type == "categorical":
            values[name] = list(parameter.choices)
        elif parameter.grid:
            values[name] = list(parameter.grid)
        else:
            raise ConfigError(f"space '{space.name}': parameters.{name} needs 'grid' values to be tabulated")
    if not values:
        raise ConfigError(f"space '{space.name}' has no parameters to tabulate")
    return values


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, combination)) for combination in itertools.product(*(grid[n] for n in names))]


def grid_space(space: SearchSpace) -> tuple[SearchSpace, str]:
    """The space as a grid sweep: Optuna's grid sampler, one trial per point, no early stopping."""
    grid = grid_values(space)
    data = space.to_dict()
    data.update(sampler={"name": "grid", "seed": space.sampler.seed}, scheduler={"name": "none"},
                budget={"trials": math.prod(len(v) for v in grid.values()), "concurrency": space.budget.concurrency})
    text = yaml.safe_dump(data, sort_keys=False)
    return parse(SearchSpace, data, f"grid of space '{space.name}'"), text


def random_space(space: SearchSpace, points: int) -> tuple[SearchSpace, str]:
    """The space as a random sweep of ``points`` trials (its own sampler seed), no early stopping: the points of
    a continuous benchmark (``robusttune.bench.surrogate``)."""
    data = space.to_dict()
    data.update(sampler={"name": "random", "seed": space.sampler.seed}, scheduler={"name": "none"},
                budget={"trials": points, "concurrency": space.budget.concurrency})
    text = yaml.safe_dump(data, sort_keys=False)
    return parse(SearchSpace, data, f"random points of space '{space.name}'"), text


@dataclass(frozen=True)
class Table:
    """A loaded table: ``frame`` (one row per point and evaluation) and ``meta``."""

    frame: Any  # pandas.DataFrame
    meta: dict[str, Any]

    @cached_property
    def space(self) -> SearchSpace:
        return parse(SearchSpace, yaml.safe_load(self.meta["space_yaml"]), "the table's search space")

    @property
    def grid(self) -> dict[str, list[Any]]:
        return self.meta["grid"]

    @property
    def evaluations(self) -> int:
        """Evaluations in a full learning curve (the unit of the benchmark's budget)."""
        return int(self.meta["evaluations"])

    @property
    def kind(self) -> str:
        """``grid`` (every grid point; replays look curves up) or ``points`` (random points and repeated seeds;
        replays query the surrogate fitted to them)."""
        return self.meta.get("kind", "grid")

    @cached_property
    def curves(self) -> dict[int, list[dict[str, Any]]]:
        """Point -> its evaluations in order (as dicts), at seed 0."""
        curves: dict[int, list[dict[str, Any]]] = {}
        frame = self.frame[self.frame["seed"] == 0] if "seed" in self.frame else self.frame
        for row in frame.sort_values(["point", "evaluation"]).to_dict("records"):
            curves.setdefault(int(row["point"]), []).append(row)
        return curves

    def point_of(self, config: dict[str, Any]) -> int:
        """The grid point nearest to a sampled config: categorical values exactly, numeric ones by distance
        (in log space for log-scale parameters)."""
        if self.kind != "grid":
            raise DataError("a table of random points has no grid: replays query its surrogate")
        index = 0
        for name, values in self.grid.items():
            value = config[name]
            parameter = self.space.parameters[name]
            if parameter.type == "categorical":
                if value not in values:
                    raise DataError(f"value {value!r} of '{name}' is not in the table's grid {values}")
                position = values.index(value)
            else:
                scale = (lambda v: math.log(v)) if parameter.log else (lambda v: v)
                position = min(range(len(values)), key=lambda i: abs(scale(values[i]) - scale(float(value))))
            index = index * len(values) + position
        return index

    def final_points(self) -> list[tuple[int, list[float]]]:
        """(point, objective values at its last evaluation) of every full curve."""
        metrics = self.meta["objective"]["metrics"]
        return [(point, [float(curve[-1][m]) for m in metrics]) for point, curve in sorted(self.curves.items())
                if len(curve) == self.evaluations and curve[-1]["status"] == "complete"]


def evaluation_row(record: dict[str, Any]) -> dict[str, Any]:
    """A table row's columns from one evaluation record: where it is in the curve, every metric, the objective,
    the trial's wall-clock seconds so far and whether the curve ends there."""
    return {"evaluation": int(record["evaluation"]), "step": int(record["step"]), "epoch": float(record.get("epoch", 0.0)),
            **{k: v for k, v in record.items() if is_metric(k)}, OBJECTIVE: record.get(OBJECTIVE),
            "time_s": float(record.get("time_total_s", float("nan"))),
            "status": "complete" if record["step"] >= record.get("total_steps", math.inf) else "running"}


def table_from_experiment(experiment: Path, space: SearchSpace, space_text: str, seconds: float) -> tuple[Any, dict[str, Any]]:
    """The experiment's records as the table (last report per trial and evaluation wins) and its metadata."""
    import pandas as pd

    from robusttune.experiment import is_evaluation, read_records

    grid = grid_values(space)
    names = list(grid)
    points = {json.dumps(p, sort_keys=True): i for i, p in enumerate(grid_points(grid))}
    metrics_seen: set[str] = set()
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for record in read_records(experiment):
        if not is_evaluation(record):
            continue
        sampled = {k: record["sampled"][k] for k in names if k in record.get("sampled", {})}
        key = json.dumps(sampled, sort_keys=True)
        if key not in points:
            continue
        row = evaluation_row(record)
        metrics_seen |= {k for k in row if is_metric(k)}
        rows[(record["trial_id"], int(record["evaluation"]))] = {"point": points[key], **sampled, **row}
    if not rows:
        raise DataError(f"{experiment}: no evaluations recorded; nothing to tabulate")
    frame = pd.DataFrame(list(rows.values())).sort_values(["point", "evaluation"]).reset_index(drop=True)
    frame = frame.drop_duplicates(["point", "evaluation"], keep="last")
    evaluations = int(frame.groupby("point")["evaluation"].max().max())
    meta = {"format": FORMAT, "space": space.name, "space_yaml": space_text, "grid": grid, "points": len(points),
            "evaluations": evaluations, "objective": space.objective.to_dict(),
            "metrics": sorted(metrics_seen), "tabulate_seconds": round(seconds, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "experiment": experiment.name}
    return frame, meta


def points_table_from_experiments(runs: list[tuple[Path, int]], space: SearchSpace, space_text: str,
                                  seconds: float) -> tuple[Any, dict[str, Any]]:
    """The records of a random-points tabulation (``runs``: its experiments and their training seeds; the first at
    seed 0 holds every point) as a table: one row per (point, seed, evaluation), a point numbered by its first
    appearance in the first experiment's records, a parameter a point does not use (its ``when`` is off) empty."""
    import pandas as pd

    from robusttune.experiment import is_evaluation, read_records

    names = list(space.parameters)
    points: dict[str, int] = {}
    metrics_seen: set[str] = set()
    rows: dict[tuple[int, int, int], dict[str, Any]] = {}
    for experiment, seed in runs:
        for record in read_records(experiment):
            if not is_evaluation(record):
                continue
            sampled = {k: record["sampled"][k] for k in names if k in record.get("sampled", {})}
            key = json.dumps(sampled, sort_keys=True)
            if key not in points:
                if seed != 0:
                    continue  # a repeated seed of a point the first experiment never reported
                points[key] = len(points)
            row = evaluation_row(record)
            metrics_seen |= {k for k in row if is_metric(k)}
            point = points[key]
            rows[(point, seed, int(record["evaluation"]))] = {"point": point, "seed": seed,
                                                              **{k: sampled.get(k) for k in names}, **row}
    if not rows:
        raise DataError(f"{runs[0][0]}: no evaluations recorded; nothing to tabulate")
    frame = pd.DataFrame(list(rows.values())).sort_values(["point", "seed", "evaluation"]).reset_index(drop=True)
    evaluations = int(frame["evaluation"].max())
    seeds = sorted({seed for _, seed in runs})
    repeated = int((frame[frame["seed"] > 0].groupby("point")["seed"].nunique() == len(seeds) - 1).sum()) if len(seeds) > 1 else 0
    meta = {"format": FORMAT, "kind": "points", "space": space.name, "space_yaml": space_text, "grid": None,
            "points": len(points), "evaluations": evaluations, "objective": space.objective.to_dict(),
            "metrics": sorted(metrics_seen), "seeds": seeds, "noise_points": repeated,
            # every trial's own wall-clock seconds, summed (one CPU each): what tabulating cost, resumes included
            "trial_seconds": round(float(frame.groupby(["point", "seed"])["time_s"].max().sum()), 1),
            "tabulate_seconds": round(seconds, 1), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "experiment": runs[0][0].name}
    return frame, meta


def write_table(frame: Any, meta: dict[str, Any], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    pq.write_table(arrow, temporary)
    temporary.replace(path)
    return path


def read_table(path: str | Path) -> Table:
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such table file")
    try:
        arrow = pq.read_table(path)
    except Exception as error:
        raise DataError(f"{path}: not a Parquet table ({type(error).__name__})") from None
    raw = (arrow.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise DataError(f"{path}: not a robusttune table (no '{META_KEY.decode()}' metadata; make one with "
                        f"`robusttune bench tabulate`)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: table format {meta.get('format')!r}, expected {FORMAT!r}")
    return Table(arrow.to_pandas(), meta)
