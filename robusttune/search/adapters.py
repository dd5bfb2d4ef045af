"""Thin adapters between Ray Tune, Optuna and the experiment directory."""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search import SearchGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from robusttune.cache import atomic_write_json
from robusttune.constraints import CONSTRAINTS, VIOLATION
from robusttune.experiment import append_record, end_status, heartbeats, trial_checkpoints, trial_files
from robusttune.metrics import OBJECTIVE, is_metric, is_wise_value
from robusttune.search import ray_compat as door
from robusttune.search.trainable import HEARTBEAT_KEYS

log = logging.getLogger(__name__)

RESULT_KEYS = (OBJECTIVE, "step", "epoch", "evaluation", "total_steps", "node_id", "failure", "loss_task", "loss_distill",
               "mask_fraction", "lr", "time_total_s", "eval_images", "eval_subset", CONSTRAINTS, VIOLATION, "cost")


class RobustOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about how a trial ended, by the records' own rule (``end_status``):
    COMPLETE when it ran to its last step, PRUNED when a scheduler stopped it early (Ray's OptunaSearch would store
    its partial values as COMPLETE, and samplers and optuna-dashboard would take them for finished trials), FAIL when
    it failed. On restore it marks trials that Optuna lists as RUNNING but no restored Tune trial owns (asked just
    before a crash) as FAIL."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not result.get("heartbeat"):  # a heartbeat is progress, not an intermediate value
            super().on_trial_result(trial_id, result)

    constraint_names: tuple[str, ...] = ()  # the space's constraints (their text), told to Optuna per trial

    budget: int | None = None  # set before a restore: the sweep's planned trials ...
    used_slots: frozenset[str] = frozenset()  # ... and the trials the records hold as ended (see budget_used)

    def suggest(self, trial_id: str) -> dict | None:
        """No trial beyond the budget as the records count it: Tune's restored state misses a trial that finished
        after its last save, and would run that trial's slot again."""
        asked = door.optuna_trials(self)
        if self.budget is not None and trial_id not in asked and len(self.used_slots | set(asked)) >= self.budget:
            return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._told_already(trial_id):  # a restored trial that had finished after Tune's last save, re-reported
            door.completed_trials(self).add(trial_id)
            return
        status = "failed" if error else end_status(result or {})
        if status != "failed":  # before it is told: the samplers read them as the trial's constraints
            from robusttune.search.constraints import tell_constraints

            tell_constraints(self, trial_id, result)
        if status == "failed":
            result, error = None, True
        elif status == "stopped-early":
            result, error = None, False  # OptunaSearch tells PRUNED for a trial without values and without error
        super().on_trial_complete(trial_id, result=result, error=error)

    journal: Path | None = None  # set before a restore: this experiment's journal (see point_at_journal)

    def _told_already(self, trial_id: str) -> bool:
        trial = door.optuna_trials(self).get(trial_id)
        if trial is None:
            return False
        return door.study_storage(door.optuna_study(self)).get_trial(door.storage_id(trial)).state.is_finished()

    def restore(self, checkpoint_path: str) -> None:
        journal, budget, used = self.journal, self.budget, self.used_slots
        super().restore(checkpoint_path)  # replaces every attribute with the pickled ones
        self.budget, self.used_slots = budget, used
        if journal is not None:
            self.point_at_journal(journal)
        self.fail_orphans()

    def point_at_journal(self, path: Path) -> None:
        """The pickled study names the journal where the sweep started; a moved or copied experiment must use its
        own."""
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        if not path.is_file():  # never fall back on the pickled study: it names another experiment's journal
            raise FileNotFoundError(f"{path}: the experiment's Optuna study is missing")
        storage = JournalStorage(JournalFileBackend(str(path)))
        study = optuna.load_study(study_name=door.optuna_study(self).study_name, storage=storage,
                                  sampler=door.searcher_sampler(self))
        door.use_study(self, storage, study)
        self.journal = path
        door.set_optuna_trials(self, {tid: optuna.trial.Trial(study, door.storage_id(trial))
                                      for tid, trial in door.optuna_trials(self).items()})

    def fail_orphans(self) -> int:
        import optuna

        told = door.completed_trials(self)
        live = {t.number for tid, t in door.optuna_trials(self).items() if tid not in told}
        study = door.optuna_study(self)
        orphans = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                   if t.number not in live]
        for trial in orphans:
            door.study_storage(study).set_trial_state_values(door.storage_id(trial), optuna.trial.TrialState.FAIL)
        if orphans:
            log.warning("marked %d Optuna trial(s) left RUNNING by the interruption as FAIL", len(orphans))
        return len(orphans)


class RelocatedSearchGenerator(SearchGenerator):
    """Tune's search generator, for a restored sweep: the state Tune saved holds the experiment spec with the
    storage path the sweep started in, from which new trials take their folders; for a moved or copied experiment
    that path is set to the directory being resumed, so no new trial points into the original."""

    def __init__(self, searcher, storage_path: str):
        super().__init__(searcher)
        self.storage_path = storage_path  # the folder holding the experiment's tune/ (Ray's storage_path)

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        storage = getattr(door.generator_experiment(self), "storage", None)
        if storage is not None:  # the spec new trials are made from shares this object
            storage.storage_fs_path = self.storage_path


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The result's metrics for a record; NaN (never measured: a trial that failed before its first evaluation)
    is left out, so records stay strict JSON."""
    return {k: v for k, v in result.items()
            if (is_metric(k) or is_wise_value(k) or k in RESULT_KEYS) and not (isinstance(v, float) and v != v)}


class RecordsCallback(Callback):
    """Appends every reported evaluation and every trial end to ``records.jsonl`` (driver side); heartbeats are not
    evaluations and are left out."""

    def __init__(self, experiment: Path, space_yaml: str):
        self.experiment = Path(experiment)
        self.space_yaml = space_yaml
        self._configs: dict[str, dict[str, Any]] = {}  # trial id -> its config.json
        self._beats: dict[str, dict[str, Any]] = {}
        self._beats_written = 0.0

    def _keep_heartbeat(self, trial, result: dict[str, Any]) -> None:
        """The latest heartbeat per trial in ``heartbeats.json`` (at most every 2 s), for ``robusttune status``."""
        self._beats[trial.trial_id] = {**{k: result.get(k) for k in HEARTBEAT_KEYS}, "time": time.time()}
        if time.monotonic() - self._beats_written >= 2.0:
            self._beats_written = time.monotonic()
            try:
                atomic_write_json(heartbeats(self.experiment), self._beats)
            except OSError as error:  # a progress view must never stop the sweep
                log.warning("cannot write %s: %s", heartbeats(self.experiment), error)

    def _full_config(self, trial) -> dict[str, Any]:
        """The config the trial trains with: the file its trainable wrote before training (read once per trial);
        the sampled values where there is none (a trial that failed before it started)."""
        configs = self.__dict__.setdefault("_configs", {})  # a callback restored by Tune keeps its own dict
        if trial.trial_id not in configs:
            path = trial_files(self.experiment, trial.trial_id).config
            try:
                configs[trial.trial_id] = json.loads(path.read_text())
            except (OSError, ValueError):
                return dict(trial.config)
        return configs[trial.trial_id]

    def _row(self, trial, status: str, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"trial_id": trial.trial_id, "status": status, "config": self._full_config(trial),
                "sampled": dict(trial.config), **_metrics(result), **extra}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("heartbeat"):  # progress between evaluations: for trackers, the console and status, not records
            self._keep_heartbeat(trial, result)
            return
        status = "failed" if result.get("trial_status") == "failed" else "running"
        append_record(self.experiment, self._row(trial, status, result))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        status = end_status(result)
        row = self._row(trial, status, result, final=True)
        append_record(self.experiment, row)
        if status in ("complete", "stopped-early"):  # it never trains again: its checkpoints policy applies
            from robusttune.training.checkpoint import keep_checkpoints

            try:
                keep_checkpoints(trial_checkpoints(self.experiment, trial.trial_id), row["config"].get("checkpoints", "best"))
            except Exception as error:  # a full disk or a damaged file: the sweep goes on with the files as they are
                log.warning("trial %s: checkpoints left as they are (%s)", trial.trial_id, error)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        """A trial crashed (e.g. its node died) and Tune retries it: it resumes from its own latest checkpoint."""
        append_record(self.experiment, self._row(trial, "running", trial.last_result or {}, retry=True,
                                                 failure="trial crashed (node lost?); retried from its last checkpoint"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        append_record(self.experiment, self._row(trial, "failed", trial.last_result or {}, failure=error_reason(trial),
                                                 final=True, errored=True))


def error_reason(trial) -> str:
    """Why a trial raised, in one line: the last line of its error file (our own errors are one line already)."""
    reason = "trial raised an error"
    error_file = getattr(trial, "error_file", None)
    try:
        if error_file and Path(error_file).is_file():
            lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()]
            reason = lines[-1][:500] if lines else reason
            if reason.startswith("robusttune.errors."):  # our own errors are already one line for people
                reason = reason.split(": ", 1)[-1]
    except OSError:
        reason = traceback.format_exc(limit=1)[-300:]
    return reason
