"""The Ray Tune function trainable: one trial = one run of the engine's loop, reported to Tune.

It validates the flat trial config at this process edge, sets torch's threads to the CPUs Ray gave the
trial, resumes from ``ray.tune.get_checkpoint()``, and on every evaluation calls ``ray.tune.report`` with
all metrics, the scalar objective, the step, the epoch and a checkpoint. It keeps no state between trials
(actors are reused). A non-finite loss is reported as ``trial_status: failed`` and the trial ends normally,
so the sweep goes on.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from robusttune.config import parse

SEED_KEY = "seed"


def trial_threads() -> int:
    """The CPUs Ray reserved for this trial (at least 1)."""
    try:
        resources = tune.get_context().get_trial_resources()
        cpus = resources.required_resources.get("CPU", 1)
    except Exception:  # outside a Tune session (e.g. a direct call in a test)
        cpus = os.cpu_count() or 1
    return max(1, int(cpus))


def run_trial(config: dict[str, Any], *, space_yaml: str, cache_dir: str, no_op: bool = False) -> None:
    import torch

    from robusttune.models.classifier import frozen_copy
    from robusttune.search.space import SearchSpace
    from robusttune.training.checkpoint import load_checkpoint, save_checkpoint
    from robusttune.training.loop import total_steps, train
    from robusttune.training.tasks import build_task

    space = parse(SearchSpace, yaml.safe_load(space_yaml), "frozen search space")
    sampled = {k: v for k, v in config.items() if k in space.parameters}
    train_config = space.trial_config(sampled, seed=int(config.get(SEED_KEY, 0)))
    torch.set_num_threads(trial_threads())
    if no_op:  # benchmarks/sweep_overhead.py: our whole path, training swapped out
        tune.report({"id_val_acc": 0.5, "ood_mean": 0.5, "objective": 0.5, "step": 1, "epoch": 1.0,
                     "total_steps": 1, "trial_status": "complete"})
        return
    student, task = build_task(space.task, Path(cache_dir))
    teacher = frozen_copy(student)
    total = total_steps(train_config, len(task.train))
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder) / "checkpoint.pt")
    pending: dict[str, Any] = {}
    last: dict[str, float] = {}

    def report(row: dict[str, Any]) -> None:
        if row.get("status") == "failed":
            tune.report({**last, "step": row["step"], "epoch": row["epoch"], "total_steps": total,
                         "trial_status": "failed", "failure": row["failure"]})
            return
        metrics = row["metrics"]
        last.update(metrics)
        payload = {**metrics, "objective": space.objective.scalar(metrics), "step": row["step"], "epoch": row["epoch"],
                   "total_steps": total, "trial_status": "complete" if row["step"] >= total else "running"}
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder) / "checkpoint.pt", pending.pop("state"))
            tune.report(payload, checkpoint=tune.Checkpoint.from_directory(folder))

    train(train_config, student, teacher, task, report=report, save_checkpoint=lambda state: pending.update(state=state),
          resume=resume)
