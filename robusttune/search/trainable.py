"""The Ray Tune function trainable: one trial = one fine-tuning run (``robusttune.training.run``), reported to Tune.

It validates the flat trial config at this process edge, sets torch's threads to the CPUs Ray gave the
trial, resumes from the trial's own latest checkpoint (``robusttune.experiment.trial_checkpoints``), and on every
evaluation calls ``ray.tune.report`` with all metrics, the scalar objective, the step and the epoch. It keeps no
state between trials (actors are reused). A non-finite loss is reported as ``trial_status: failed`` and the trial
ends normally, so the sweep goes on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from robusttune.cache import atomic_write_json
from robusttune.experiment import heads_dir, parse_space_text, trial_checkpoints
from robusttune.space import SearchSpace

log = logging.getLogger(__name__)

SEED_KEY = "seed"


def trial_threads() -> int:
    """The CPUs Ray reserved for this trial (at least 1)."""
    try:
        resources = tune.get_context().get_trial_resources()
        cpus = resources.required_resources.get("CPU", 1)
    except Exception:  # outside a Tune session (e.g. a direct call in a test)
        cpus = os.cpu_count() or 1
    return max(1, int(cpus))


def failure_result(space: SearchSpace, last: dict[str, float], **fields: Any) -> dict[str, Any]:
    """A failed trial's report: the searcher's and the scheduler's metrics must be present in every report (Ray
    Tune's strict metric check would end the whole sweep otherwise), so the ones never measured are NaN. The
    searcher tells Optuna FAIL and the records say failed, whatever the values."""
    nan = float("nan")
    return {**{m: nan for m in space.objective.metrics}, **last, "objective": nan, **fields, "trial_status": "failed"}


HEARTBEAT_KEYS = ("step", "total_steps", "epoch", "loss", "images_per_s", "eta_s")


def heartbeat_result(space: SearchSpace, last: dict[str, float], progress: dict[str, Any]) -> dict[str, Any]:
    """A progress report between evaluations: marked ``heartbeat``, without ``evaluation`` (the schedulers' time axis,
    so ASHA and MO-ASHA pass it by) and carrying the last evaluation's metrics (NaN before the first: Tune requires
    the searcher's metrics in every report). The searcher and the records skip it; trackers and the driver show it."""
    nan = float("nan")
    values = {**{m: nan for m in space.objective.metrics}, **last}
    objective = space.objective.scalar(last) if last else nan
    return {**values, "objective": objective, **{k: progress[k] for k in HEARTBEAT_KEYS}, "heartbeat": True,
            "trial_status": "running"}


def run_trial(config: dict[str, Any], *, space_yaml: str, cache_dir: str, experiment: str,
              heartbeat_seconds: float = 30.0) -> None:
    import ray
    import torch

    from robusttune.training.checkpoint import save_checkpoint
    from robusttune.training.run import prepare_run

    space = parse_space_text(space_yaml)
    sampled = {k: v for k, v in config.items() if k in space.parameters}
    train_config = space.trial_config(sampled, seed=int(config.get(SEED_KEY, 0)))
    torch.set_num_threads(trial_threads())
    folder = trial_checkpoints(experiment, tune.get_context().get_trial_id())
    latest, best, best_meta = folder / "latest.pt", folder / "best.pt", folder / "best.json"
    run = prepare_run(train_config, space.task, Path(cache_dir), checkpoint=latest, head_folders=[heads_dir(experiment)])
    node_id = ray.get_runtime_context().get_node_id()  # which node ran it (cluster tests, post-mortems)
    total = run.total_steps
    best_saved = json.loads(best_meta.read_text()) if best_meta.is_file() else {}
    best_objective, best_subset = best_saved.get("objective", float("-inf")), best_saved.get("subset")
    last: dict[str, float] = {}
    evaluations = len(run.history)

    def keep_best(state: dict[str, Any]) -> None:
        """``best.pt``: the weights (only) of the best evaluation among those on the same images (with
        ``eval_subset``, the subset ones: the last, full evaluation is not compared with them)."""
        nonlocal best_objective, best_subset
        row = json.loads(state["history"])[-1]
        objective = space.objective.scalar(row["metrics"])
        subset = "eval_subset" in row
        if best_subset is not None and best_subset != subset:
            return
        if objective > best_objective:
            best_objective, best_subset = objective, subset
            save_checkpoint(best, {"model": state["model"], "step": state["step"], "config": state["config"]})
            atomic_write_json(best_meta, {"objective": objective, "step": state["step"], "subset": subset})

    def report(row: dict[str, Any]) -> None:
        nonlocal evaluations
        if row.get("status") == "failed":
            log.warning("trial %s failed: %s", tune.get_context().get_trial_id(), row["failure"])  # reaches the console
            tune.report(failure_result(space, last, step=row["step"], epoch=row["epoch"], total_steps=total,
                                       evaluation=evaluations, failure=row["failure"]))
            return
        evaluations += 1
        metrics = row["metrics"]
        last.update(metrics)
        # 'evaluation' (not Tune's iteration counter, which restarts on resume) is the scheduler's time axis
        tune.report({**metrics, "objective": space.objective.scalar(metrics), "step": row["step"], "epoch": row["epoch"],
                     "evaluation": evaluations, "total_steps": total, "node_id": node_id,
                     **{k: row[k] for k in ("eval_images", "eval_subset") if k in row},
                     "trial_status": "complete" if row["step"] >= total else "running"})

    if run.resume is not None:
        # The checkpoint's evaluation may not have reached Tune (a crash between saving and reporting, or a trial
        # that finished unseen by Tune's saved state): report it again. Readers keep the last row per
        # (trial, evaluation) and the scheduler gives a re-reported rung its earlier decision.
        evaluations -= 1
        report(run.history[-1])
        if run.finished or "optimizer" not in run.resume:  # finished, or ended early and kept without optimizer state
            return
    last_beat = time.monotonic()

    def heartbeat(progress: dict[str, Any]) -> None:
        nonlocal last_beat
        if time.monotonic() - last_beat >= heartbeat_seconds and progress["step"] < total:
            last_beat = time.monotonic()
            tune.report(heartbeat_result(space, last, progress))

    run.train(report=report, after_save=keep_best, on_step=heartbeat)


@dataclass(frozen=True)
class TrainingRunner:
    """Trials fine-tune for real; after them, the experiment's baselines (zero-shot, vanilla FT, WiSE-FT curves)."""

    cache_dir: Path
    baselines: bool = True
    heartbeat_seconds: float = 30.0  # a progress report between evaluations at most this often

    def trainable(self, experiment: Path, space: SearchSpace, space_text: str):
        return functools.partial(run_trial, space_yaml=space_text, cache_dir=str(self.cache_dir),
                                 experiment=str(experiment), heartbeat_seconds=self.heartbeat_seconds)

    def stopper(self, experiment: Path) -> None:
        return None

    def after_trials(self, experiment: Path, space: SearchSpace, space_text: str) -> None:
        if not self.baselines:
            return
        from robusttune.experiment import latest_by_trial, pareto_trials
        from robusttune.search.baselines import run_baselines

        front = [row["trial_id"] for row in pareto_trials(latest_by_trial(experiment), list(space.objective.metrics),
                                                          [d.value for d in space.objective.directions])]
        log.info("WiSE-FT baselines: zero-shot, vanilla FT and %d Pareto trial(s)", len(front))
        run_baselines(experiment, space_text, self.cache_dir, front, cpu=space.resources.cpu, gpu=space.resources.gpu)

    def describe(self) -> dict[str, Any]:
        return {"kind": "train", "baselines": self.baselines, "heartbeat_seconds": self.heartbeat_seconds}
