"""A space's constraints in the search: what Optuna's study is told, the references the bounds need.

Every evaluation reports its constraint values (``robusttune.constraints.score``, computed where the trial runs).
When a trial ends, ``tell_constraints`` sets its last values on its Optuna trial before it is told, through
``optuna.trial.Trial.set_constraint`` (one per constraint, named by its text: the study stores them as system
attributes ``constraints:<text>``), which is how Optuna 5 takes them: its TPE, NSGA-II and GP samplers (and
BoTorch's) read ``FrozenTrial.constraints`` whoever set them. (The samplers' ``constraints_func`` argument is
deprecated in Optuna 5.0, to be removed in 7.0; it would also need the trial's metrics, which a searcher only sees
in Tune's results.) Random and grid sampling ignore them; the study holds them all the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from robusttune.constraints import CONSTRAINTS, references_from_rows, references_needed
from robusttune.errors import DataError
from robusttune.experiment import read_records

log = logging.getLogger(__name__)

UNKNOWN = 1.0  # a trial that ended without a value (a stopped one with no report): infeasible by a whole accuracy


def tell_constraints(searcher: Any, trial_id: str, result: dict[str, Any] | None) -> None:
    """Before the trial is told: its last reported constraint values onto its Optuna trial, named by the searcher's
    ``constraint_names`` (nothing for a space without constraints)."""
    from robusttune.search import ray_compat as door

    names = tuple(getattr(searcher, "constraint_names", ()) or ())
    trial = door.optuna_trials(searcher).get(trial_id)
    if trial is None or not names:
        return
    found = (result or {}).get(CONSTRAINTS)
    if not isinstance(found, list | tuple) or len(found) != len(names):
        found = [UNKNOWN] * len(names)
    for name, value in zip(names, found):
        trial.set_constraint(name, float(value))


def reference_values(space: Any, experiment: str | Path) -> dict[str, dict[str, float]]:
    """The references the space's constraints name, from the experiment's records; refuses (DataError) when one is
    missing: a trial never runs with a bound it cannot compute."""
    needed = references_needed(space.objective.bounds)
    if not needed:
        return {}
    found = references_from_rows(read_records(experiment))
    missing = sorted(needed - set(found))
    if missing:
        raise DataError(f"{experiment}: the constraints need {', '.join(missing)}'s metrics, which the records do not "
                        f"hold (the sweep measures them before its first trial)")
    return found


def measure_references_first(runner: Any, experiment: Path, space: Any, space_text: str) -> None:
    """Zero-shot and vanilla FT (and its WiSE-FT curve) before the first trial, when a constraint is bounded by
    them; a runner that cannot measure them (a replay, ``baselines=False``) is refused."""
    if not references_needed(space.objective.bounds):
        return
    before = getattr(runner, "before_trials", None)
    if before is None:
        raise DataError(f"space '{space.name}': its constraints are bounded by "
                        f"{', '.join(sorted(references_needed(space.objective.bounds)))}, which this kind of run does "
                        "not measure: bound them by numbers")
    log.info("constraints bounded by references: zero-shot and vanilla FT run first")
    before(experiment, space, space_text)
