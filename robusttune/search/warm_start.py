"""Warm starts: an earlier experiment's best configurations as the first trials of a new sweep.

The earlier experiment's complete trials are ranked by non-dominated sorting on its own objective (its Pareto front
first, then the front of the rest, ...; within a front by crowding distance, as the confirmation ranks), their sampled values are
mapped onto the new space (a value the new space cannot take is dropped with a warning: the new sampler draws it
instead) and enqueued in the new study, which asks them before sampling anything itself (``optuna``'s
``enqueue_trial``). E.g. a cheap ``paper_proxy`` sweep warm-starts a ``paper`` sweep.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robusttune.bounds import at_least
from robusttune.errors import DataError, ParameterError
from robusttune.experiment import check_experiment, journal, latest_by_trial, load_frozen_space
from robusttune.pareto import multi_objective_ranking, nondominated_fronts
from robusttune.space import Parameter, SearchSpace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStart:
    source: Path
    points: tuple[dict[str, Any], ...]  # the new study's first trials, in order
    dropped: tuple[str, ...]  # why values were dropped (one line each)

    def describe(self) -> dict[str, Any]:
        """For the manifest."""
        return {"source": str(self.source), "points": [dict(p) for p in self.points], "dropped": list(self.dropped)}


def ranked_trials(experiment: Path, space: SearchSpace) -> list[dict[str, Any]]:
    """The experiment's complete trials (latest record each), best first: by non-dominated front, then by crowding
    distance within a front (the order ``robusttune confirm --top`` takes)."""
    objective = space.objective
    rows = [row for row in latest_by_trial(experiment).values()
            if row.get("status") == "complete" and all(_finite(row.get(k)) for k in objective.keys)]
    return [rows[i] for i in multi_objective_ranking(_signed(space, rows), tie_break="crowding")]


def _signed(space: SearchSpace, rows: list[dict[str, Any]]) -> list[list[float]]:
    """The rows' objective values, each to be maximised."""
    signs = [1.0 if d.value == "max" else -1.0 for d in space.objective.directions]
    return [[sign * float(row[k]) for sign, k in zip(signs, space.objective.keys)] for row in rows]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def value_fits(parameter: Parameter, value: Any) -> bool:
    """Can ``parameter`` take ``value`` (a choice of it, or a number within its bounds)?"""
    if parameter.type == "categorical":
        return value in parameter.choices
    if not _finite(value):
        return False
    if parameter.type == "int" and float(value) != int(value):
        return False
    return parameter.low <= float(value) <= parameter.high


def active(space: SearchSpace, values: dict[str, Any]) -> dict[str, Any]:
    """The values whose ``when`` conditions hold among ``values`` (an inactive value is never asked for)."""
    kept: dict[str, Any] = {}
    for name in space.suggestion_order():
        parameter = space.parameters[name]
        if name not in values:
            continue
        if parameter.when and any(kept.get(parent, values.get(parent)) not in allowed
                                  for parent, allowed in parameter.when.items()):
            continue
        kept[name] = values[name]
    return kept


def load_warm_start(source: str | Path, space: SearchSpace, *, top: int | None = None,
                    trials: int | None = None) -> WarmStart:
    """The first trials a sweep of ``space`` takes from the experiment at ``source``: its ``top`` best complete
    trials (default: its Pareto front), mapped onto ``space``. Refuses (one line) a missing or non-experiment
    folder, an experiment without a complete trial, a space sharing no parameter with it, and more points than
    ``trials``."""
    if top is not None:
        at_least("warm_top", top, 1)
    try:
        path = check_experiment(Path(source))
    except DataError as error:
        raise ParameterError("warm_start", f"names no experiment: {error}") from None
    earlier, _ = load_frozen_space(path)
    shared = [name for name in earlier.parameters if name in space.parameters]
    if not shared:
        raise ParameterError("warm_start", f"{path}: its space '{earlier.name}' shares no searched parameter with space "
                          f"'{space.name}' (it searches {sorted(earlier.parameters)}, this one {sorted(space.parameters)})")
    ranked = ranked_trials(path, earlier)
    if not ranked:
        raise ParameterError("warm_start", f"{path}: no complete trial to start from")
    if top is None:
        top = len(nondominated_fronts(_signed(earlier, ranked))[0])
    points: list[dict[str, Any]] = []
    dropped: list[str] = []
    for row in ranked[:top]:
        values = {}
        for name in shared:
            if name not in (row.get("sampled") or {}):
                continue
            value = row["sampled"][name]
            if value_fits(space.parameters[name], value):
                values[name] = value
            else:
                dropped.append(f"trial {row['trial_id']}: {name}={value!r} is outside space '{space.name}' "
                               f"({_bounds(space.parameters[name])}); it is sampled afresh")
        values = active(space, values)
        if values and values not in points:
            points.append(values)
    for line in dropped:
        log.warning("warm start: %s", line)
    if not points:
        raise ParameterError("warm_start", f"{path}: none of its trials' values fit space '{space.name}'")
    if trials is not None and len(points) > trials:
        raise ParameterError("warm_start", f"{path}: {len(points)} configurations to start from but the sweep runs "
                                           f"{trials} trial(s); pass a smaller `warm_top` or more `trials`")
    return WarmStart(path, tuple(points), tuple(dropped))


def _bounds(parameter: Parameter) -> str:
    if parameter.type == "categorical":
        return f"choices {list(parameter.choices)}"
    return f"[{parameter.low:g}, {parameter.high:g}]"


def enqueue(experiment: Path, space: SearchSpace, warm: WarmStart) -> None:
    """Put the warm start's points in the experiment's (new) study as its first trials. Ray's OptunaSearch loads
    the same study (``load_if_exists``) and Optuna asks enqueued trials before sampling."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal(experiment.resolve()))))
    directions = [d.value + "imize" for d in space.objective.directions]
    study = optuna.create_study(storage=storage, study_name=experiment.name, directions=directions,
                                load_if_exists=True)
    for point in warm.points:
        study.enqueue_trial(dict(point))
