"""Multi-objective asynchronous successive halving (MO-ASHA, Schmucker et al. 2021) as a Ray Tune scheduler.

Rungs sit at ``grace_period * reduction_factor**k`` evaluations. When a trial reaches a rung, its objective
vector joins the rung; the rung's trials are ranked by non-dominated sorting, ties inside a front broken by an
epsilon-net (farthest-first) or by crowding distance, and the trial goes on only if it ranks in the top
``ceil(n / reduction_factor)`` of the ``n`` trials recorded there (so the first trial at a rung always goes on,
as in Ray's ASHA). Otherwise it is stopped; the records call it stopped-early.

Ray Tune does not save a scheduler's state with the experiment (ray#30838: a resumed ASHA starts with empty
rungs). This one writes its rungs and decisions to a JSON file in the experiment directory after every change,
and reads it back when Tune unpickles it on ``Tuner.restore``: a resumed sweep keeps its rungs, and a trial
that re-reports a rung after a crash gets the decision it got before.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from robusttune.cache import atomic_write_json
from robusttune.errors import ConfigError, DataError
from robusttune.experiment import SCHEDULER_STATE
from robusttune.constraints import VIOLATION, infeasible_vector
from robusttune.pareto import multi_objective_ranking

log = logging.getLogger(__name__)

STATE_FILE = SCHEDULER_STATE


def milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """Rung levels (in evaluations) below ``max_t``: grace, grace*eta, grace*eta^2, ..."""
    levels, k = [], 0
    while (level := int(round(grace_period * reduction_factor**k))) < max_t:
        if not levels or level > levels[-1]:
            levels.append(level)
        k += 1
    return levels


class MultiObjectiveASHA(FIFOScheduler):
    def __init__(self, metrics: list[str], modes: list[str], *, time_attr: str = "evaluation", grace_period: int = 1,
                 reduction_factor: float = 3.0, max_t: int = 10_000, tie_break: str = "eps_net",
                 state_file: str | Path | None = None):
        super().__init__()
        if len(metrics) != len(modes) or any(m not in ("max", "min") for m in modes):
            raise ConfigError("MultiObjectiveASHA needs one mode ('max' or 'min') per metric")
        multi_objective_ranking([], tie_break)  # validates the name
        self.metrics, self.signs = list(metrics), [1.0 if m == "max" else -1.0 for m in modes]
        self.time_attr, self.reduction_factor, self.max_t, self.tie_break = time_attr, reduction_factor, max_t, tie_break
        self.levels = milestones(grace_period, reduction_factor, max_t)
        self.state_file = str(state_file) if state_file else None
        # level -> {trial_id: signed objective vector}, in arrival order; (level, trial_id) -> promoted?
        self.rungs: dict[int, dict[str, list[float]]] = {level: {} for level in self.levels}
        self.decisions: dict[tuple[int, str], bool] = {}
        self.log: list[dict[str, Any]] = []
        self._load()

    # Ray Tune hooks -------------------------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True  # our metrics are our own; Tune's single metric/mode is not needed

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("heartbeat") or self.time_attr not in result or any(m not in result for m in self.metrics):
            return TrialScheduler.CONTINUE
        t = result[self.time_attr]
        if t >= self.max_t:
            return TrialScheduler.STOP
        reached = [level for level in self.levels if t >= level]
        if not reached:
            return TrialScheduler.CONTINUE
        level = reached[-1]
        values = [sign * float(result[m]) for sign, m in zip(self.signs, self.metrics)]
        if float(result.get(VIOLATION) or 0.0) > 0:  # infeasible: below every feasible result, less violation higher
            values = infeasible_vector(len(values), float(result[VIOLATION]))
        promoted = self.decide(trial.trial_id, level, values)
        return TrialScheduler.CONTINUE if promoted else TrialScheduler.STOP

    def debug_string(self) -> str:
        sizes = ", ".join(f"{level}: {len(self.rungs[level])}" for level in self.levels)
        return f"MultiObjectiveASHA ({self.tie_break}); trials per rung {{{sizes}}}"

    # The decision, independent of Ray (unit-tested on hand-built results) ---------------------------------------
    def decide(self, trial_id: str, level: int, values: list[float]) -> bool:
        """Record ``values`` (signed: larger is better) at rung ``level`` and say whether the trial goes on."""
        if (level, trial_id) in self.decisions:  # re-reported after a restore: same answer as before
            return self.decisions[(level, trial_id)]
        rung = self.rungs.setdefault(level, {})
        rung[trial_id] = list(values)
        ids = list(rung)
        ranking = multi_objective_ranking([rung[i] for i in ids], self.tie_break)
        position = ranking.index(ids.index(trial_id))
        keep = math.ceil(len(ids) / self.reduction_factor)
        promoted = position < keep
        self.decisions[(level, trial_id)] = promoted
        self.log.append({"trial_id": trial_id, "level": level, "rung_size": len(ids), "rank": position, "keep": keep,
                         "promoted": promoted})
        self._save()
        return promoted

    # Persistence ---------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"format": "robusttune.mo_asha/1", "metrics": self.metrics, "signs": self.signs, "levels": self.levels,
                "reduction_factor": self.reduction_factor, "tie_break": self.tie_break,
                "rungs": {str(level): rung for level, rung in self.rungs.items()}, "decisions": self.log}

    def _save(self) -> None:
        if self.state_file:
            atomic_write_json(Path(self.state_file), self.state())

    def _load(self) -> None:
        path = Path(self.state_file) if self.state_file else None
        if path is None or not path.is_file():
            return
        saved = json.loads(path.read_text())
        if saved.get("levels") != self.levels or saved.get("metrics") != self.metrics:
            raise DataError(f"{path}: saved rungs {saved.get('levels')} over {saved.get('metrics')} do not match "
                             f"this scheduler's {self.levels} over {self.metrics}")
        self.rungs = {int(level): {tid: list(v) for tid, v in rung.items()} for level, rung in saved["rungs"].items()}
        self.log = list(saved["decisions"])
        self.decisions = {(d["level"], d["trial_id"]): d["promoted"] for d in self.log}
        log.info("MO-ASHA: restored %d rung decision(s) from %s", len(self.log), path)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Tune pickles the scheduler when the sweep starts and unpickles that copy on restore: reload the rungs
        self.__dict__.update(state)
        self._load()
