"""One trial on many workers: Ray Train's ``TorchTrainer`` inside a Ray Tune trial (Ray's Train-inside-Tune pattern).

A trial whose config says ``workers: N > 1`` runs its fine-tuning on N Ray Train workers (one process each, a GPU each
when the space gives GPUs; NCCL on GPUs, gloo on CPUs) placed as one group; the Tune trial's own process only waits
for them (``trial_resources``). Each worker trains its share of every step (``robusttune.training.distributed``):
gradients are summed in one all-reduce before clipping, evaluations are sharded with their counts summed. Rank 0
writes the trial's checkpoints (``latest.pt``, ``best.pt``) and its reports reach Tune (Ray Train's
``TuneReportCallback``), so the searcher, the schedulers, the records and the heartbeats see one trial. Heartbeats
come from rank 0 alone, through the same queue into the Tune trial's session (a report through Ray Train would make
every rank wait for the others). Every rank reads ``latest.pt`` on resume. A lost worker fails the trial's Ray Train
run (no retries of its own), hence the Tune trial: ``--max-failures`` retries it from its checkpoint.

A trial MO-ASHA stops ends the Tune trial's process, and with it Ray Train's controller, which then never removes its
workers' placement group (Ray Train's own cleaner asks Ray's state API, which a local Ray without a dashboard does not
serve, and polls it for ever): the workers would keep their CPUs and GPUs until the sweep ended and the next
data-parallel trial would wait for them for ever. So rank 0 records the group (``experiment.worker_group_record``);
when Tune stops the trial, the trial's own cleanup removes it, which ends the workers, and waits for Ray Train's run
to end as failed runs end, cleaner included (``stoppable``); the driver removes a group still recorded when a trial
ends, for a trial process that ended without its cleanup (``WorkerGroupReaper``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from robusttune.cache import atomic_write_text
from robusttune.experiment import train_runs_dir, worker_group_record
from robusttune.space import SearchSpace

log = logging.getLogger(__name__)

# The Tune trial's own process, beside its Ray Train workers: it only waits for them.
WAITING_CPU = 0.01
STOP_WAIT_SECONDS = 60.0  # how long a stopped trial's cleanup waits for its Ray Train run to end
# Ray Train's own INFO lines (each worker's every report, with all its metrics; a stopped trial's "failure") repeat
# what the sweep prints; its warnings and errors still reach the console
TRAIN_LOG_LEVEL = "WARNING"
QUIET_RAY = {"worker_process_setup_hook": "robusttune.search.data_parallel.quiet_ray_train"}

class _InFlight:
    """This process's Ray Train run, while ``run_on_workers`` waits for it."""

    def __init__(self, record: Path):
        self.record, self.ended, self.stopping = record, threading.Event(), False


_in_flight: _InFlight | None = None


def trial_workers(space: SearchSpace, config: dict[str, Any]) -> int:
    """How many data-parallel workers the trial with sampled ``config`` trains on (``SearchSpace.workers``)."""
    return space.workers(config)


def uses_workers(space: SearchSpace) -> bool:
    """Whether some trial of ``space`` may train on several workers (``SearchSpace.uses_workers``)."""
    return space.uses_workers


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
    from ray.train import LoggingConfig, ScalingConfig
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
                                       failure_config=ray.train.FailureConfig(max_failures=0),
                                       logging_config=LoggingConfig(log_level=TRAIN_LOG_LEVEL)),
    )
    global _in_flight
    run = _in_flight = _InFlight(worker_group_record(experiment, trial_id))
    try:
        trainer.fit()
    except Exception:
        if not run.stopping:  # a run Tune stopped ends as failed: its workers were ended on purpose
            raise
    finally:
        _in_flight = None
        run.ended.set()


def quiet_ray_train() -> None:
    """Every Ray worker process's setup hook (``QUIET_RAY``, given to ``ray.init``): Ray Train's noisy loggers quiet,
    its cleaner's thread and a worker Ray ends with SIGTERM (Tune ends each data-parallel space's trial actor) end
    without a traceback on the console."""
    from robusttune.search.ray_compat import TRAIN_CLEANER_THREAD, TRAIN_LOGGERS_TO_QUIET, train_reports_logger_name

    # the cleaner's warnings (Ray's state API is not served by a local Ray without a dashboard; stopped trials' groups
    # are removed here instead, see above), a stopped run's backend shutdown, each worker's every report (INFO)
    quiet = dict.fromkeys(TRAIN_LOGGERS_TO_QUIET, logging.ERROR)
    reports = train_reports_logger_name()
    if reports is not None:
        quiet[reports] = logging.WARNING
    for name, level in quiet.items():
        # a filter, not a level: Ray Train's logging setup resets its loggers' levels (logging.config.dictConfig)
        logging.getLogger(name).addFilter(lambda record, level=level: record.levelno >= level)
    uncaught = threading.excepthook

    def excepthook(args) -> None:  # the cleaner's thread dies quietly where its state query cannot work
        if args.thread is None or args.thread.name != TRAIN_CLEANER_THREAD:
            uncaught(args)

    threading.excepthook = excepthook
    unraisable = sys.unraisablehook

    def unraisablehook(args) -> None:  # Ray's SIGTERM handler ending a worker (an actor Tune ended) mid-callback
        if not isinstance(args.exc_value, SystemExit):
            unraisable(args)

    sys.unraisablehook = unraisablehook


def stoppable(function):
    """Tune's trainable for ``function`` (Tune's own wrapper), whose cleanup, when Tune stops a trial training on
    workers, first ends the workers (removes their placement group) and waits for Ray Train's run to end."""
    from ray.tune.trainable.function_trainable import wrap_function

    class DataParallelTrial(wrap_function(function)):
        def cleanup(self):
            end_workers()
            super().cleanup()

    return DataParallelTrial


def end_workers() -> None:
    """End this process's Ray Train run, if one is in flight: remove its workers' placement group (which ends them;
    Ray Train then ends the run as failed, and removes its cleaner) and wait for it."""
    run = _in_flight
    if run is None:
        return
    run.stopping = True
    remove_worker_group(run.record)
    if not run.ended.wait(STOP_WAIT_SECONDS):
        log.warning("a stopped trial's Ray Train run did not end within %.0f s", STOP_WAIT_SECONDS)


def train_report(metrics: dict[str, Any]) -> None:
    """A worker's report: every rank calls it at the same points (Ray Train waits for all of them); rank 0's reaches
    Tune."""
    import ray.train

    ray.train.report(metrics)


def heartbeat_queue():
    """The queue through which Ray Train hands its workers' reports to this Tune trial's session (Ray's
    ``TuneReportCallback`` uses the same one): rank 0 puts its heartbeats there."""
    from robusttune.search.ray_compat import train_report_queue

    return train_report_queue()


def beat_through(queue):
    """``beat(result)`` for rank 0: the heartbeat goes into ``queue`` unless a report is still waiting there (a
    heartbeat is never worth holding up a step)."""
    from ray.util.queue import Full

    def beat(result: dict[str, Any]) -> None:
        try:
            queue.put(result, block=False)
        except Full:
            pass

    return beat


def record_worker_group(experiment: str, trial_id: str) -> None:
    """Rank 0, as it starts: the placement group its workers run in, for the driver to remove when the trial ends."""
    from ray.util import get_current_placement_group

    group = get_current_placement_group()
    if group is not None:
        atomic_write_text(worker_group_record(experiment, trial_id), group.id.hex())


class WorkerGroupReaper(Callback):
    """Removes an ended data-parallel trial's worker group, when Ray Train has not (see the module's docstring)."""

    def __init__(self, experiment: Path):
        self.experiment = Path(experiment)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # Not on errors: Tune retries the trial at once, and its new workers' group may already be the recorded one.
        # A failed Ray Train run removes its group itself.
        remove_worker_group(worker_group_record(self.experiment, trial.trial_id))


def remove_worker_group(record: Path) -> None:
    """Remove the placement group ``record`` names, unless Ray removed it already; then the record."""
    import ray
    from ray.util import placement_group_table, remove_placement_group
    from ray.util.placement_group import PlacementGroup

    try:
        group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(record.read_text().strip())))
    except (OSError, ValueError):  # not a data-parallel trial, or nothing recorded
        return
    if placement_group_table(group).get("state") != "REMOVED":
        remove_placement_group(group)
    record.unlink(missing_ok=True)


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
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True, configure_logging=False,
                 runtime_env=QUIET_RAY)
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        per_worker = min(float(threads or cpus), 0.95 * cpus / workers)  # a sliver stays for Ray Train's controller
        gpus = int(ray.cluster_resources().get("GPU", 0)) if config.get("device", "auto") != "cpu" else 0
        trainer = TorchTrainer(
            _train_worker, train_loop_config={"config": config, "task": task, "cache_dir": cache_dir, "out": out,
                                              "threads": max(1, int(per_worker))},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus >= workers,
                                         resources_per_worker={"CPU": per_worker, **({"GPU": 1} if gpus >= workers else {})}),
            run_config=ray.train.RunConfig(name="ray_train", storage_path=str(Path(out).resolve()),
                                           failure_config=ray.train.FailureConfig(max_failures=0),
                                           logging_config=ray.train.LoggingConfig(log_level=TRAIN_LOG_LEVEL)))
        trainer.fit()
    finally:
        if started:
            ray.shutdown()


def _train_worker(job: dict[str, Any]) -> None:
    import torch

    from robusttune.config import TaskSpec, TrainConfig
    from robusttune.search.gpus import check_ray_gpus
    from robusttune.training.train_dir import train_into

    check_ray_gpus("a data-parallel worker of robusttune train")
    torch.set_num_threads(job["threads"])
    train_into(TrainConfig.model_validate(job["config"]), TaskSpec.model_validate(job["task"]), Path(job["cache_dir"]),
               Path(job["out"]))
