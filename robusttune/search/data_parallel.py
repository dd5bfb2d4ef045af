"""One trial on many workers: Ray Train's ``TorchTrainer`` inside a Ray Tune trial (Ray's Train-inside-Tune pattern).

A trial whose config says ``workers: N > 1`` runs its fine-tuning on N Ray Train workers (one process each, a GPU each
when the space gives GPUs; NCCL on GPUs, gloo on CPUs) placed as one group; the Tune trial's own process only waits
for them (``trial_resources``). Each worker trains its share of every step (``robusttune.training.distributed``):
gradients are summed in one all-reduce before clipping, evaluations are sharded with their counts summed. Rank 0
writes the trial's checkpoints (``latest.pt``, ``best.pt``) and its reports reach Tune (Ray Train's
``TuneReportCallback``), so the searcher, the schedulers (MO-ASHA stops such a trial like any other), the records and
the heartbeats see one trial. Every rank reads ``latest.pt`` on resume. A lost worker fails the trial's Ray Train run
(no retries of its own), hence the Tune trial: ``--max-failures`` retries it from its checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from robusttune.experiment import train_runs_dir
from robusttune.space import SearchSpace

# The Tune trial's own process, beside its Ray Train workers: it only waits for them.
WAITING_CPU = 0.01


def trial_workers(space: SearchSpace, config: dict[str, Any]) -> int:
    """How many data-parallel workers the trial with sampled ``config`` trains on."""
    return int(config.get("workers", space.fixed.get("workers", space.resources.workers)))


def uses_workers(space: SearchSpace) -> bool:
    """Whether some trial of ``space`` may train on several workers."""
    return space.resources.workers > 1 or "workers" in space.parameters or space.fixed.get("workers", 1) > 1


def trial_resources(space: SearchSpace):
    """What Tune reserves for a trial: its CPUs and GPUs when it trains in its own process, a sliver when Ray Train's
    workers (who get ``space.resources`` each) do the training."""
    from ray.tune import PlacementGroupFactory

    single = PlacementGroupFactory([{"CPU": space.resources.cpu, "GPU": space.resources.gpu}])
    if not uses_workers(space):
        return single
    waiting = PlacementGroupFactory([{"CPU": WAITING_CPU}])
    return lambda config: waiting if trial_workers(space, config) > 1 else single


def run_on_workers(worker, worker_config: dict[str, Any], *, workers: int, space: SearchSpace, experiment: str,
                   trial_id: str) -> None:
    """Run ``worker(worker_config)`` on ``workers`` Ray Train workers and wait; raises when the run fails (a worker
    died or raised), so that Tune's retries (``--max-failures``) take over."""
    import ray.train
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    gpu = space.resources.gpu
    trainer = TorchTrainer(
        worker, train_loop_config=worker_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu > 0,
                                     resources_per_worker={"CPU": space.resources.cpu, **({"GPU": gpu} if gpu else {})}),
        # a fresh name per attempt: Ray Train continues a run folder it finds, and would take this attempt's first
        # report for one it had already seen (and drop it)
        run_config=ray.train.RunConfig(name=f"{trial_id}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                                       storage_path=str(train_runs_dir(Path(experiment))),
                                       callbacks=[TuneReportCallback()],
                                       failure_config=ray.train.FailureConfig(max_failures=0)),
    )
    trainer.fit()


def train_report(metrics: dict[str, Any]) -> None:
    """A worker's report: every rank calls it at the same points (Ray Train waits for all of them); rank 0's reaches
    Tune."""
    import ray.train

    ray.train.report(metrics)


def train_on_workers(config: dict[str, Any], task: dict[str, Any], cache_dir: str, out: str, *,
                     threads: int | None = None) -> None:
    """``robusttune train`` with ``workers > 1``: the same data-parallel path as a sweep's trial, on a local Ray
    (started here unless one is running; shut down afterwards if started here). Rank 0 writes ``out``."""
    import os

    import ray
    import ray.train
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    workers = int(config["workers"])
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True, configure_logging=False)
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        per_worker = min(float(threads or cpus), 0.95 * cpus / workers)  # a sliver stays for Ray Train's controller
        gpus = int(ray.cluster_resources().get("GPU", 0))
        trainer = TorchTrainer(
            _train_worker, train_loop_config={"config": config, "task": task, "cache_dir": cache_dir, "out": out,
                                              "threads": max(1, int(per_worker))},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus >= workers,
                                         resources_per_worker={"CPU": per_worker, **({"GPU": 1} if gpus >= workers else {})}),
            run_config=ray.train.RunConfig(name="ray_train", storage_path=str(Path(out).resolve()),
                                           failure_config=ray.train.FailureConfig(max_failures=0)))
        trainer.fit()
    finally:
        if started:
            ray.shutdown()


def _train_worker(job: dict[str, Any]) -> None:
    import torch

    from robusttune.config import TaskSpec, TrainConfig
    from robusttune.training.train_dir import train_into

    torch.set_num_threads(job["threads"])
    train_into(TrainConfig.model_validate(job["config"]), TaskSpec.model_validate(job["task"]), Path(job["cache_dir"]),
               Path(job["out"]))
