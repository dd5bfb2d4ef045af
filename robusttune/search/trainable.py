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
from robusttune.config import TrainConfig
from robusttune.constraints import score
from robusttune.experiment import heads_dir, parse_space_text, trial_files
from robusttune.metrics import OBJECTIVE, WISE_CURVE
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
    return {**{m: nan for m in space.objective.keys}, **last, OBJECTIVE: nan, **fields, "trial_status": "failed"}


HEARTBEAT_KEYS = ("step", "total_steps", "epoch", "loss", "images_per_s", "eta_s")


def heartbeat_result(space: SearchSpace, last: dict[str, float], progress: dict[str, Any]) -> dict[str, Any]:
    """A progress report between evaluations: marked ``heartbeat``, without ``evaluation`` (the schedulers' time axis,
    so ASHA and MO-ASHA pass it by) and carrying the last evaluation's metrics (NaN before the first: Tune requires
    the searcher's metrics in every report). The searcher and the records skip it; trackers and the driver show it."""
    nan = float("nan")
    values = {**{m: nan for m in space.objective.keys}, **last}
    objective = space.objective.scalar(last) if last else nan
    return {**values, OBJECTIVE: objective, **{k: progress[k] for k in HEARTBEAT_KEYS}, "heartbeat": True,
            "trial_status": "running"}


def run_trial(config: dict[str, Any], *, space_yaml: str, cache_dir: str, experiment: str,
              heartbeat_seconds: float = 30.0) -> None:
    """One Tune trial: trains in this process, or on the trial's Ray Train workers when its config says
    ``workers > 1`` (``robusttune.search.data_parallel``)."""
    import ray
    import torch

    from robusttune.search.gpus import check_ray_gpus

    trial_id = tune.get_context().get_trial_id()
    check_ray_gpus(f"trial {trial_id}")  # GPUs given and unusable: fail now, not after building the task on the CPU
    space = parse_space_text(space_yaml)
    sampled = {k: v for k, v in config.items() if k in space.parameters}
    train_config = space.trial_config(sampled, seed=int(config.get(SEED_KEY, 0)))
    files = trial_files(experiment, trial_id)
    files.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(files.config, train_config.to_dict())  # built once, here: what every reader of the trial uses
    job = {"config": dict(config), "train_config": train_config.to_dict(), "space_yaml": space_yaml,
           "cache_dir": cache_dir, "experiment": experiment,
           "heartbeat_seconds": heartbeat_seconds, "trial_id": trial_id,
           "node_id": ray.get_runtime_context().get_node_id()}  # which node ran it (cluster tests, post-mortems)
    if train_config.workers > 1:
        from robusttune.search.data_parallel import run_on_workers

        from robusttune.search.data_parallel import heartbeat_queue

        # The resumed checkpoint's evaluation is re-reported from here, straight to Tune: a report Ray Train's
        # workers make just before the next one can be passed over.
        job["heartbeats"] = heartbeat_queue()
        if train_trial(job, report_to=tune.report, train=False):
            run_on_workers(trial_worker, job, workers=train_config.workers, space=space, experiment=experiment,
                           trial_id=trial_id)
        return
    torch.set_num_threads(trial_threads())
    train_trial(job, report_to=tune.report)


def trial_worker(job: dict[str, Any]) -> None:
    """One Ray Train worker of a data-parallel trial: its share of every step; its reports go through Ray Train."""
    import torch

    from robusttune.search.data_parallel import beat_through, record_worker_group, train_report
    from robusttune.search.gpus import check_ray_gpus
    from robusttune.training.distributed import Shard

    check_ray_gpus(f"trial {job['trial_id']} (a data-parallel worker)")
    torch.set_num_threads(max(1, int(parse_space_text(job["space_yaml"]).resources.cpu)))
    leader = Shard.current().leader
    if leader:
        record_worker_group(job["experiment"], job["trial_id"])
    train_trial(job, report_to=train_report, rereport=False,
                beat_to=beat_through(job["heartbeats"]) if leader else None)


def train_trial(job: dict[str, Any], *, report_to, train: bool = True, rereport: bool = True,
                beat_to=tune.report) -> bool:
    """The trial's fine-tuning in this process (all of it, or this rank's share): resumes from the trial's
    ``latest.pt``, reports every evaluation through ``report_to`` and heartbeats through ``beat_to`` (None: none);
    the leader (rank 0) keeps the checkpoints. ``rereport``: report the resumed checkpoint's evaluation again first;
    ``train=False``: only that. Returns whether training is left to do."""
    from robusttune.training.checkpoint import save_checkpoint
    from robusttune.training.distributed import Shard
    from robusttune.training.run import prepare_run
    from robusttune.training.wise import WiseProbe

    space = parse_space_text(job["space_yaml"])
    experiment = job["experiment"]
    from robusttune.search.constraints import reference_values

    references = reference_values(space, experiment)  # the constraints' bounds that zero-shot / vanilla FT set
    train_config = TrainConfig.model_validate(job["train_config"])  # the one run_trial built
    shard = Shard.current()
    files = trial_files(experiment, job["trial_id"])
    from robusttune.training.cost import COST, CostMeter

    meter = CostMeter.start(files.folder / "cost.json", workers=train_config.workers)  # what this trial spends
    latest, best, best_meta = files.latest, files.best, files.best_meta
    # the waiting process of a data-parallel trial re-reports from the checkpoint alone, never building the task (the
    # zero-shot head: hours on its one thread); its workers build it where they train
    run = (None if train else Resumed.read(train_config, latest)) or prepare_run(
        train_config, space.task, Path(job["cache_dir"]), checkpoint=latest, head_folders=[heads_dir(experiment)])
    node_id, heartbeat_seconds = job["node_id"], float(job["heartbeat_seconds"])
    total = run.total_steps
    best_saved = json.loads(best_meta.read_text()) if best_meta.is_file() else {}
    best_objective, best_subset = best_saved.get(OBJECTIVE, float("-inf")), best_saved.get("subset")
    last: dict[str, float] = {}
    evaluations = len(run.history)

    def keep_best(state: dict[str, Any]) -> None:
        """``best.pt``: the weights (only) of the best evaluation among those on the same images (with
        ``eval_subset``, the subset ones: the last, full evaluation is not compared with them)."""
        nonlocal best_objective, best_subset
        row = json.loads(state["history"])[-1]
        objective = score(space.objective, space.objective.reported(row["metrics"], row.get(WISE_CURVE, ())),
                          references)[OBJECTIVE]  # the best feasible evaluation, else the least infeasible
        subset = "eval_subset" in row
        if best_subset is not None and best_subset != subset:
            return
        if objective > best_objective:
            best_objective, best_subset = objective, subset
            save_checkpoint(best, {"model": state["model"], "step": state["step"], "config": state["config"]})
            atomic_write_json(best_meta, {OBJECTIVE: objective, "step": state["step"], "subset": subset})

    def report(row: dict[str, Any], again: bool = False) -> None:
        nonlocal evaluations
        if row.get("status") == "failed":
            if shard.leader:
                log.warning("trial %s failed: %s", job["trial_id"], row["failure"])  # reaches the experiment's robusttune.log
            report_to(failure_result(space, last, step=row["step"], epoch=row["epoch"], total_steps=total,
                                     evaluation=evaluations, failure=row["failure"], cost=meter.to_dict()))
            return
        evaluations += 1
        metrics = space.objective.reported(row["metrics"], row.get(WISE_CURVE, ()))
        last.update(metrics)
        if not again and shard.leader:  # a re-reported evaluation cost nothing now
            images = sum((row.get("eval_images") or {}).values()) * (1 + len(row.get(WISE_CURVE) or ()))
            meter.evaluated(eval_seconds=float(row.get("eval_s", 0.0)), images=images,
                            trained_images=int(row["step"]) * train_config.batch_size)
            meter.note_device(run.placement.device)
            meter.save(files.folder / "cost.json")
        # 'evaluation' (not Tune's iteration counter, which restarts on resume) is the scheduler's time axis
        report_to({**metrics, **score(space.objective, metrics, references), "step": row["step"], "epoch": row["epoch"],
                   "evaluation": evaluations, "total_steps": total, "node_id": node_id,
                   **{k: row[k] for k in ("eval_images", "eval_subset") if k in row}, COST: meter.to_dict(),
                   "trial_status": "complete" if row["step"] >= total else "running"})

    if run.resume is not None:
        # The checkpoint's evaluation may not have reached Tune (a crash between saving and reporting, or a trial
        # that finished unseen by Tune's saved state): report it again. Readers keep the last row per
        # (trial, evaluation) and the scheduler gives a re-reported rung its earlier decision.
        if rereport:
            evaluations -= 1
            report(run.history[-1], again=True)
        if run.finished or "optimizer" not in run.resume:  # finished, or ended early and kept without optimizer state
            return False
    if not train:
        return True
    last_beat = time.monotonic()

    def heartbeat(progress: dict[str, Any]) -> None:
        nonlocal last_beat
        if time.monotonic() - last_beat >= heartbeat_seconds and progress["step"] < total:
            last_beat = time.monotonic()
            beat_to(heartbeat_result(space, last, progress))

    wise = space.objective.wise
    meter.training_starts()
    run.train(report=report, after_save=keep_best if shard.leader else None,
              on_step=heartbeat if beat_to is not None else None, shard=shard,
              probe=WiseProbe(wise.alphas) if wise is not None else None)
    return False


@dataclass(frozen=True)
class Resumed:
    """What a data-parallel trial's waiting process needs of its run (``train_trial(train=False)``): the checkpoint it
    resumes from and the run's length as the loop recorded it in the checkpoint; never the task."""

    resume: dict[str, Any] | None
    total_steps: int = 0
    placement: Any = None  # a re-reported evaluation measures nothing here

    @property
    def history(self) -> list[dict[str, Any]]:
        return json.loads(self.resume["history"]) if self.resume is not None else []

    @property
    def finished(self) -> bool:
        return self.resume is not None and int(self.resume["step"]) >= self.total_steps

    @classmethod
    def read(cls, config: TrainConfig, checkpoint: Path) -> Resumed | None:
        """The run as ``checkpoint`` holds it (resume None: no checkpoint yet); None when only the task can tell (a
        checkpoint written before it recorded its length, or with another config: ``prepare_run`` says why)."""
        from robusttune.training.checkpoint import load_checkpoint

        if not checkpoint.is_file():
            return cls(None)
        state = load_checkpoint(checkpoint)
        if "total_steps" not in state or not config.resumes(json.loads(state["config"])):
            return None
        return cls(state, int(state["total_steps"]))


@dataclass(frozen=True)
class TrainingRunner:
    """Trials fine-tune for real; after them, the experiment's baselines (zero-shot, vanilla FT, WiSE-FT curves), the
    merges of its models (soups, Model Stock) and, when the space asks, the confirmation stage."""

    cache_dir: Path
    baselines: bool = True
    heartbeat_seconds: float = 30.0  # a progress report between evaluations at most this often

    def trainable(self, experiment: Path, space: SearchSpace, space_text: str):
        return functools.partial(run_trial, space_yaml=space_text, cache_dir=str(self.cache_dir),
                                 experiment=str(experiment), heartbeat_seconds=self.heartbeat_seconds)

    def stopper(self, experiment: Path) -> None:
        return None

    def before_trials(self, experiment: Path, space: SearchSpace, space_text: str) -> None:
        """Zero-shot, vanilla FT and its WiSE-FT curve, before any trial (constraints bounded by them need them)."""
        if not self.baselines:
            from robusttune.errors import DataError

            raise DataError(f"space '{space.name}': its constraints need zero-shot's or vanilla FT's metrics, and "
                            "this run measures no baselines: bound them by numbers")
        from robusttune.search.baselines import run_baselines

        run_baselines(experiment, space_text, self.cache_dir, [], cpu=space.resources.cpu, gpu=space.resources.gpu)

    def after_trials(self, experiment: Path, space: SearchSpace, space_text: str) -> None:
        if not self.baselines:
            return
        from robusttune.experiment import latest_by_trial, pareto_trials
        from robusttune.search.baselines import run_baselines

        front = [row["trial_id"] for row in pareto_trials(latest_by_trial(experiment), list(space.objective.keys),
                                                          [d.value for d in space.objective.directions])]
        log.info("WiSE-FT baselines: zero-shot, vanilla FT and %d Pareto trial(s)", len(front))
        run_baselines(experiment, space_text, self.cache_dir, front, cpu=space.resources.cpu, gpu=space.resources.gpu)
        from robusttune.search.merges import run_merges

        run_merges(experiment, space_text, self.cache_dir, cpu=space.resources.cpu, gpu=space.resources.gpu)
        if space.confirm is not None and front:  # the space asks for it (and there is a front to confirm)
            from robusttune.search.confirm import run_confirmation

            run_confirmation(experiment, space, space_text, self.cache_dir, space.confirm)

    def describe(self) -> dict[str, Any]:
        return {"kind": "train", "baselines": self.baselines, "heartbeat_seconds": self.heartbeat_seconds}
