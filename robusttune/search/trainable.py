"""The Ray Tune function trainable: one trial = one run of the engine's loop, reported to Tune.

It validates the flat trial config at this process edge, sets torch's threads to the CPUs Ray gave the
trial, resumes from the trial's own latest checkpoint (see ``trial_checkpoints``), and on every evaluation
calls ``ray.tune.report`` with all metrics, the scalar objective, the step and the epoch. It keeps no state between trials
(actors are reused). A non-finite loss is reported as ``trial_status: failed`` and the trial ends normally,
so the sweep goes on.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from robusttune.cache import atomic_write_json
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


def trial_checkpoints(experiment: str | Path, trial_id: str) -> Path:
    """``<experiment>/checkpoints/<trial_id>/``: ``latest.pt`` (every evaluation) and ``best.pt`` (best objective).

    We keep these ourselves instead of handing checkpoints to Tune: Tune deletes checkpoints it no longer
    ranks while its saved experiment state may still point at them, so a restore after ``kill -9`` could
    find its checkpoint gone. Ours are replaced atomically and found again by trial id."""
    return Path(experiment) / "checkpoints" / trial_id


def run_trial(config: dict[str, Any], *, space_yaml: str, cache_dir: str, experiment: str, no_op: bool = False) -> None:
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
    import ray

    node_id = ray.get_runtime_context().get_node_id()  # which node ran it (cluster tests, post-mortems)
    folder = trial_checkpoints(experiment, tune.get_context().get_trial_id())
    latest, best, best_meta = folder / "latest.pt", folder / "best.pt", folder / "best.json"
    resume = load_checkpoint(latest) if latest.is_file() else None
    best_objective = json.loads(best_meta.read_text())["objective"] if best_meta.is_file() else float("-inf")
    last: dict[str, float] = {}
    evaluations = len(json.loads(resume["history"])) if resume else 0

    def save(state: dict[str, Any]) -> None:
        nonlocal best_objective
        save_checkpoint(latest, state)
        history = json.loads(state["history"])
        objective = space.objective.scalar(history[-1]["metrics"])
        if objective > best_objective:
            best_objective = objective
            shutil.copyfile(latest, best.with_suffix(".tmp"))
            os.replace(best.with_suffix(".tmp"), best)
            atomic_write_json(best_meta, {"objective": objective, "step": state["step"]})

    def report(row: dict[str, Any]) -> None:
        nonlocal evaluations
        if row.get("status") == "failed":
            tune.report({**last, "step": row["step"], "epoch": row["epoch"], "total_steps": total, "evaluation": evaluations,
                         "trial_status": "failed", "failure": row["failure"]})
            return
        evaluations += 1
        metrics = row["metrics"]
        last.update(metrics)
        # 'evaluation' (not Tune's iteration counter, which restarts on resume) is the scheduler's time axis
        tune.report({**metrics, "objective": space.objective.scalar(metrics), "step": row["step"], "epoch": row["epoch"],
                     "evaluation": evaluations, "total_steps": total, "node_id": node_id,
                     "trial_status": "complete" if row["step"] >= total else "running"})

    if resume is not None:
        # The checkpoint's evaluation may not have reached Tune (a crash between saving and reporting, or a trial
        # that finished unseen by Tune's saved state): report it again. Readers keep the last row per
        # (trial, step) and the scheduler gives a re-reported rung its earlier decision.
        evaluations -= 1
        report(json.loads(resume["history"])[-1])
        if int(resume["step"]) >= total:
            return
    train(train_config, student, teacher, task, report=report, save_checkpoint=save, resume=resume)
