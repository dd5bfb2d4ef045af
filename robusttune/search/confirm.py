"""The confirmation stage: the front's configurations, vanilla fine-tuning and zero-shot trained again with more
seeds, each with its WiSE-FT curve, so that a report can tell a real gain from seed-to-seed noise.

Which configurations: the ``top`` complete trials ranked by non-dominated front on the objective, then by crowding
distance (or trials named by id), and vanilla fine-tuning (the baselines' reference config). Seeds ``0..K-1`` are
offsets from each config's own seed: seed 0 of a trial *is* the trial (its recorded final metrics and weights; no
retraining), seed 0 of vanilla FT is the baselines' run when it is there. Zero-shot has no seed (nothing is trained
and evaluation is deterministic): it is recorded once, as seed 0.

Each (configuration, seed) is one run and one Ray task with the space's per-trial resources, all submitted at once
(a cluster runs them side by side). A run appends its rows to ``records.jsonl`` as each exists, ``kind: confirm``
with ``config_key``, ``source`` (the trial id, ``vanilla-ft`` or ``zero-shot``), ``seed``, every metric and
``eval_images``: first the run's own weights (``alpha`` null), then each point of its WiSE-FT curve. A killed run
keeps what it recorded and its latest checkpoint (``confirm/<key>-s<seed>.latest.pt``): it continues from there,
and nothing recorded is computed twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robusttune.cache import stable_hash
from robusttune.errors import ConfigError
from robusttune.experiment import (CONFIRM_KIND, ZERO_SHOT, append_record, confirm_progress, confirm_weights, heads_dir,
                                   is_confirm_row, latest_by_trial, latest_checkpoint, parse_space_text, read_records,
                                   vanilla_checkpoint)
from robusttune.experiment import VANILLA_FT as VANILLA
from robusttune.space import SearchSpace

log = logging.getLogger(__name__)


def config_key(config: dict[str, Any]) -> str:
    """A configuration's key: the hash of its training config without the seed (so its seeds share it)."""
    return stable_hash({k: v for k, v in config.items() if k != "seed"}, length=12)


@dataclass(frozen=True)
class ConfirmRun:
    """One (configuration, seed) of the confirmation."""

    source: str  # a trial id, vanilla-ft or zero-shot
    config: dict[str, Any]  # the training config, with this run's seed
    seed: int  # the offset from the configuration's own seed (0: the trial itself)

    @property
    def key(self) -> str:
        return config_key(self.config)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "config": self.config, "seed": self.seed}


def select_trials(space: SearchSpace, latest: dict[str, dict[str, Any]], *, top: int,
                  trial_ids: list[str] | None = None) -> list[str]:
    """The trials to confirm: ``trial_ids`` (each must be a complete trial), else the ``top`` complete trials by
    non-dominated front on the objective, then by crowding distance."""
    from robusttune.pareto import multi_objective_ranking

    complete = {t: row for t, row in latest.items() if row.get("status") == "complete" and row.get("config")}
    if not complete:
        raise ConfigError("the experiment has no complete trial to confirm")
    if trial_ids:
        unknown = [t for t in trial_ids if t not in complete]
        if unknown:
            raise ConfigError(f"not a complete trial of this experiment: {', '.join(unknown)}")
        return list(dict.fromkeys(trial_ids))
    metrics, signs = list(space.objective.keys), [-1.0 if d.value == "min" else 1.0 for d in space.objective.directions]
    ids = sorted(complete)
    points = [[sign * float(complete[t][m]) for sign, m in zip(signs, metrics)] for t in ids]
    return [ids[i] for i in multi_objective_ranking(points, tie_break="crowding")[:top]]


def plan_runs(space: SearchSpace, latest: dict[str, dict[str, Any]], trial_ids: list[str], seeds: int) -> list[ConfirmRun]:
    """Every run of the confirmation: each trial's and vanilla FT's config at seeds 0..seeds-1, and zero-shot once."""
    from robusttune.search.baselines import vanilla_config

    vanilla = vanilla_config(space).to_dict()
    configs = [(t, dict(latest[t]["config"])) for t in trial_ids] + [(VANILLA, vanilla)]
    runs = [ConfirmRun(source, {**config, "seed": int(config.get("seed", 0)) + s}, s)
            for source, config in configs for s in range(seeds)]
    return [*runs, ConfirmRun(ZERO_SHOT, {**vanilla, "steps": 0}, 0)]


FAILED = "failed"  # in ``recorded``: the run failed (it is not run again)


def recorded(experiment: Path) -> dict[tuple[str, int], set[float | str | None]]:
    """``(config_key, seed)`` -> the alphas (None: the run's own weights; ``FAILED``: it failed) in the records."""
    done: dict[tuple[str, int], set[float | str | None]] = {}
    for row in read_records(experiment):
        if is_confirm_row(row):
            alpha = row.get("alpha")
            done.setdefault((row["config_key"], int(row["seed"])), set()).update(
                [None if alpha is None else round(float(alpha), 6), *([FAILED] if row.get("status") == FAILED else [])])
    return done


def missing_alphas(run: ConfirmRun, space: SearchSpace, done: dict[tuple[str, int], set[float | str | None]]) -> list[float | None]:
    """What the run still has to record: None (its own weights) and the curve's alphas (none for zero-shot, nothing
    for a run that failed: a resume does not train it again)."""
    have = done.get((run.key, run.seed), set())
    if FAILED in have:
        return []
    wanted: list[float | None] = [None, *([] if run.source == ZERO_SHOT else [float(a) for a in space.baselines.wise_alphas])]
    return [a for a in wanted if (None if a is None else round(a, 6)) not in have]


def confirm_one(experiment: str, space_yaml: str, cache_dir: str, run: dict[str, Any], threads: int) -> int:
    """Compute and record what one run lacks (a Ray task, or in-process); returns the rows written."""
    import torch

    from robusttune.config import TrainConfig, parse
    from robusttune.training.checkpoint import load_checkpoint, save_checkpoint
    from robusttune.training.device import Placement
    from robusttune.training.evaluate import Evaluator
    from robusttune.training.run import prepare_run
    from robusttune.training.tasks import build_task
    from robusttune.training.wise import wise_curve

    torch.set_num_threads(max(1, threads))
    exp, space = Path(experiment), parse_space_text(space_yaml)
    this = ConfirmRun(run["source"], dict(run["config"]), int(run["seed"]))
    todo = missing_alphas(this, space, recorded(exp))
    if not todo:
        return 0
    config = parse(TrainConfig, this.config, f"confirmation run {this.source} seed {this.seed}")
    student, task = build_task(space.task, Path(cache_dir), head_folders=[heads_dir(exp)])
    zero_shot = {k: v.detach().clone() for k, v in student.state_dict().items()}
    placement = Placement.of(config.device, config.precision)
    evaluator = Evaluator(task.eval_sets, batch_size=config.eval_batch_size, num_workers=task.num_workers,
                          placement=placement)
    common = {"kind": CONFIRM_KIND, "config_key": this.key, "source": this.source, "seed": this.seed,
              "eval_images": dict(evaluator.sizes)}
    written = 0

    def record(row: dict[str, Any]) -> None:
        nonlocal written
        alpha = row.get("alpha")
        if (None if alpha is None else round(float(alpha), 6)) in recorded(exp).get((this.key, this.seed), set()):
            return  # a task of a killed driver, still finishing, wrote it meanwhile
        append_record(exp, {**common, **row})
        written += 1

    if this.source == ZERO_SHOT:
        record({"alpha": None, "config": config.to_dict(), **evaluator(student)})
        return written
    weights, metrics = _reused(exp, this)
    reused = weights is not None
    if weights is None:
        final = confirm_weights(exp, this.key, this.seed)
        if final.is_file():
            saved = load_checkpoint(final)
            weights, metrics = saved["model"], json.loads(saved["metrics"])
        else:
            progress = confirm_progress(exp, this.key, this.seed)
            progress.parent.mkdir(parents=True, exist_ok=True)
            result = prepare_run(config, space.task, Path(cache_dir), checkpoint=progress, built=(student, task),
                                 placement=placement).train()
            if result.status != "complete":  # recorded as failed (the statistics leave it out and say so)
                record({"alpha": None, "config": config.to_dict(), "status": FAILED, "failure": result.failure})
                return written
            weights = {k: v.detach().clone() for k, v in student.state_dict().items()}
            metrics = result.metrics
            save_checkpoint(final, {"model": weights, "config": json.dumps(config.to_dict()), "metrics": json.dumps(metrics)})
            progress.unlink(missing_ok=True)
            student.load_state_dict(zero_shot)
    if None in todo:
        record({"alpha": None, "config": config.to_dict(), **metrics})
    known = _recorded_curve(exp, this) if reused else {}
    for alpha in [a for a in todo if a is not None]:  # one row at a time: a kill loses at most this point
        if round(alpha, 6) in known:  # the baselines evaluated this very point of the same weights
            record({**known[round(alpha, 6)], "alpha": alpha})
            continue
        (row,) = wise_curve(student, zero_shot, weights, evaluator, alphas=(alpha,))
        record(row)
    return written


def _recorded_curve(experiment: Path, run: ConfirmRun) -> dict[float, dict[str, float]]:
    """The baselines' WiSE-FT points of the same weights (seed 0 of a front trial or of vanilla FT), by alpha."""
    from robusttune.metrics import is_metric

    return {round(float(row["alpha"]), 6): {k: v for k, v in row.items() if is_metric(k)}
            for row in read_records(experiment)
            if row.get("kind") == "wise" and row.get("source") == run.source and isinstance(row.get("alpha"), int | float)}


def _reused(experiment: Path, run: ConfirmRun) -> tuple[dict | None, dict[str, float] | None]:
    """Seed 0 of a trial is the trial (its final weights and metrics), seed 0 of vanilla FT the baselines' run, when
    their weights are on disk and their config is this run's; (None, None) otherwise."""
    from robusttune.metrics import is_metric
    from robusttune.training.checkpoint import load_checkpoint

    if run.seed != 0:
        return None, None
    if run.source == VANILLA:
        path = vanilla_checkpoint(experiment)
        if path.is_file():
            saved = load_checkpoint(path)
            if json.loads(saved.get("config", "{}")) == run.config and "metrics" in saved:
                return saved["model"], json.loads(saved["metrics"])
        return None, None
    row = latest_by_trial(experiment).get(run.source, {})
    path = latest_checkpoint(experiment, run.source)
    if path is None or row.get("config") != run.config:
        return None, None
    return load_checkpoint(path)["model"], {k: v for k, v in row.items() if is_metric(k)}


def run_confirmation(experiment: Path, space: SearchSpace, space_text: str, cache_dir: Path, *, top: int, seeds: int,
                     trial_ids: list[str] | None = None, use_ray: bool = True) -> int:
    """Plan the runs and compute what the records lack; returns the number of rows written. With Ray: one task per
    run with the space's per-trial resources, submitted together."""
    latest = latest_by_trial(experiment)
    chosen = select_trials(space, latest, top=top, trial_ids=trial_ids)
    runs = plan_runs(space, latest, chosen, seeds)
    done = recorded(experiment)
    todo = [r for r in runs if missing_alphas(r, space, done)]
    log.info("confirmation: %d configuration(s) x %d seed(s) and zero-shot; %d run(s) to do", len(chosen) + 1, seeds,
             len(todo))
    cpu, gpu = space.resources.cpu, space.resources.gpu
    jobs = [(str(experiment.resolve()), space_text, str(cache_dir), r.to_dict(), max(1, int(cpu))) for r in todo]
    from robusttune import progress

    with progress.bar("confirmation", len(jobs), unit="run") as bar:  # the command line's view (none under --json)
        if not (use_ray and jobs):
            written = 0
            for job in jobs:
                written += confirm_one(*job)
                bar.update(1)
            return written
        import ray

        task = ray.remote(num_cpus=cpu, num_gpus=gpu, max_retries=0)(confirm_one)
        pending, written = [task.remote(*job) for job in jobs], 0
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            written += int(ray.get(done[0]))
            bar.update(1)
        return written
