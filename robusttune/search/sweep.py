"""Running and resuming sweeps: Ray Tune drives trials, Optuna (multi-objective) suggests them.

The study lives in ``optuna.journal`` inside the experiment directory; Ray Tune's state and trial
checkpoints under ``tune/``; our own append-only ``records.jsonl`` is written by a driver-side callback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robusttune.errors import RobustTuneError
from robusttune.experiment import JOURNAL, MANIFEST, SPACE, TUNE_DIR, latest_by_trial, read_manifest
from robusttune.search.space import SearchSpace

log = logging.getLogger(__name__)


class SweepError(RobustTuneError):
    """A sweep could not run or be restored (exit code 1)."""

    exit_code = 1


@dataclass(frozen=True)
class SweepOptions:
    trials: int
    concurrency: int
    seed: int
    address: str | None
    cache_dir: Path
    max_failures: int = 0
    no_op: bool = False  # benchmarks only: the trainable skips training
    baselines: bool = True  # zero-shot / vanilla FT / WiSE-FT rows after the sweep
    replay_table: str | None = None  # a tabulated benchmark: trials look their curves up (robusttune.search.replay)
    replay_pace: float = 0.0  # seconds a replayed evaluation waits (tests interrupt replays mid-search)
    max_evaluations: int | None = None  # stop the search once its trials have reported this many evaluations
    verbose: int = 1


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ["robusttune", "torch", "open_clip_torch", "ray", "optuna", "pandas"]
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:
            found[name] = "unknown"
    return {"python": platform.python_version(), **found}


def write_manifest(experiment: Path, space: SearchSpace, space_text: str, options: SweepOptions) -> None:
    from robusttune.cache import atomic_write_json, atomic_write_text

    atomic_write_text(experiment / SPACE, space_text or json.dumps(space.to_dict(), indent=2))
    atomic_write_json(experiment / MANIFEST, {
        "format": "robusttune.experiment/1", "name": experiment.name, "space": space.name,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "seed": options.seed,
        "trials": options.trials, "concurrency": options.concurrency, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(), "cache_dir": str(options.cache_dir), "objective": space.objective.to_dict(),
        "parameters": list(space.parameters), "replay_table": options.replay_table,
        "max_evaluations": options.max_evaluations,
    })


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    # Save Tune's experiment state at most every 2 s (default: 10 s or more), so that an interrupted sweep
    # loses little: a trial started after the last save is re-run from scratch on resume.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)


def _trainable(experiment: Path, space_text: str, options: SweepOptions, space: SearchSpace):
    from ray import tune

    from robusttune.search.trainable import run_trial

    if options.replay_table:
        from robusttune.search.replay import replay_trial

        function = functools.partial(replay_trial, table=str(Path(options.replay_table).resolve()), space_yaml=space_text,
                                     experiment=str(experiment.resolve()), pace=options.replay_pace)
    else:
        function = functools.partial(run_trial, space_yaml=space_text, cache_dir=str(options.cache_dir),
                                     experiment=str(experiment.resolve()), no_op=options.no_op)
    function.__name__ = "robusttune_trial"  # Tune names trials after it
    return tune.with_resources(function, {"cpu": space.resources.cpu, "gpu": space.resources.gpu})


def _frozen_space(experiment: Path) -> tuple[SearchSpace, str]:
    text = (experiment / SPACE).read_text()
    import yaml

    from robusttune.config import parse

    return parse(SearchSpace, yaml.safe_load(text), str(experiment / SPACE)), text


def run_sweep(experiment: Path, space: SearchSpace, space_text: str, options: SweepOptions):
    """Run a new sweep into ``experiment`` (already created and empty). Returns Tune's ResultGrid."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from robusttune.search.adapters import RobustOptunaSearch
    from robusttune.search.space import make_sampler

    write_manifest(experiment, space, space_text, options)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(experiment / JOURNAL)))
    objective = space.objective
    searcher = RobustOptunaSearch(
        space=space.define_by_run, metric=list(objective.metrics) if space.multi_objective else objective.metrics[0],
        mode=[d.value for d in objective.directions] if space.multi_objective else objective.directions[0].value,
        sampler=make_sampler(space, options.seed), storage=storage, study_name=experiment.name,
    )
    seeded = ConcurrencyLimiter(searcher, max_concurrent=options.concurrency)
    scheduler = make_scheduler(space, experiment)
    _init_ray(options.address)
    tuner = tune.Tuner(
        _trainable(experiment, space_text, options, space),
        param_space={"seed": options.seed},
        tune_config=tune.TuneConfig(search_alg=seeded, scheduler=scheduler, num_samples=options.trials,
                                    reuse_actors=True),  # the ConcurrencyLimiter bounds concurrent trials
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(experiment.resolve()), verbose=options.verbose,
            callbacks=[_records_callback(experiment, space_text)],
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            stop=_stopper(options, experiment),
        ),
    )
    results = tuner.fit()
    _baselines(experiment, space, space_text, options)
    return results


def _stopper(options: SweepOptions, experiment: Path):
    if options.max_evaluations is None:
        return None
    from robusttune.search.replay import EvaluationBudget

    return EvaluationBudget(options.max_evaluations, experiment.resolve())


def make_scheduler(space: SearchSpace, experiment: Path):
    """The space's early-stopping scheduler; MO-ASHA keeps its rungs in the experiment directory."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from robusttune.search.mo_asha import STATE_FILE, MultiObjectiveASHA

    config = space.scheduler
    max_t = config.max_t or 10_000  # default: never cut a trial short of its own length
    if config.name == "asha":
        return ASHAScheduler(metric="objective", mode="max", time_attr="evaluation", grace_period=config.grace_period,
                             reduction_factor=config.reduction_factor, max_t=max_t)
    if config.name == "mo_asha":
        return MultiObjectiveASHA(list(space.objective.metrics), [d.value for d in space.objective.directions],
                                  time_attr="evaluation", grace_period=config.grace_period,
                                  reduction_factor=config.reduction_factor, max_t=max_t, tie_break=config.tie_break,
                                  state_file=experiment.resolve() / STATE_FILE)
    return FIFOScheduler()


def _baselines(experiment: Path, space: SearchSpace, space_text: str, options: SweepOptions) -> None:
    """Zero-shot, vanilla FT and WiSE-FT curves (vanilla FT's and each Pareto trial's), once per experiment."""
    if options.no_op or options.replay_table or not options.baselines:
        return
    from robusttune.analysis.pareto import non_dominated
    from robusttune.search.baselines import run_baselines

    metrics = list(space.objective.metrics)
    complete = [(tid, row) for tid, row in latest_by_trial(experiment).items()
                if row.get("status") == "complete" and all(m in row for m in metrics)]
    front = [complete[i][0] for i in non_dominated([[row[m] for m in metrics] for _, row in complete])]
    log.info("WiSE-FT baselines: zero-shot, vanilla FT and %d Pareto trial(s)", len(front))
    run_baselines(experiment, space_text, options.cache_dir, front, cpu=space.resources.cpu, gpu=space.resources.gpu)


def _records_callback(experiment: Path, space_text: str):
    from robusttune.search.adapters import RecordsCallback

    return RecordsCallback(experiment.resolve(), space_text)


def resume_sweep(experiment: Path, options: SweepOptions):
    """Continue an interrupted sweep; refuses (SweepError) rather than silently starting a fresh one."""
    from ray import tune

    manifest = read_manifest(experiment)
    space, space_text = _frozen_space(experiment)
    tune_dir = (experiment / TUNE_DIR).resolve()
    if not tune_dir.is_dir() or not tune.Tuner.can_restore(str(tune_dir)):
        raise SweepError(f"{experiment}: no restorable Ray Tune state in {tune_dir}; nothing was changed")
    recorded = latest_by_trial(experiment)
    restored = _saved_trial_ids(tune_dir)
    if recorded and not restored:
        raise SweepError(f"{experiment}: the saved Tune state has no trials but {len(recorded)} were recorded; "
                         f"refusing to continue as a fresh sweep")
    _close_lost_trials(experiment, recorded, restored)
    _init_ray(options.address)
    options = SweepOptions(**{**options.__dict__, "seed": manifest.get("seed", options.seed),
                              "replay_table": manifest.get("replay_table")})
    try:
        tuner = tune.Tuner.restore(str(tune_dir), trainable=_trainable(experiment, space_text, options, space),
                                   resume_unfinished=True, resume_errored=True, restart_errored=False)
    except Exception as error:
        raise SweepError(f"{experiment}: Ray Tune could not restore the sweep ({type(error).__name__}: {str(error)[:200]})") from None
    results = tuner.fit()
    _baselines(experiment, space, space_text, options)
    return results


def _close_lost_trials(experiment: Path, recorded: dict[str, dict[str, Any]], restored: set[str]) -> None:
    """Trials that started after Tune's last state save cannot be resumed: record them as failed (their
    budget slot is run again by the searcher) so that no trial stays 'running' forever."""
    from robusttune.experiment import append_record

    for trial_id, row in recorded.items():
        if trial_id in restored:
            continue
        if row.get("final"):
            log.warning("trial %s finished after Tune's last state save; its result is kept in the records", trial_id)
            continue
        append_record(experiment, {"trial_id": trial_id, "status": "failed", "final": True, "config": row.get("config"),
                                   "sampled": row.get("sampled"), "step": row.get("step"),
                                   "failure": "interrupted before Ray Tune saved this trial; its budget slot is run again"})


def _saved_trial_ids(tune_dir: Path) -> set[str]:
    """Trial ids in Tune's saved experiment state (read before restoring, so a fresh start is detectable)."""
    from ray.tune import ExperimentAnalysis

    try:
        return {trial.trial_id for trial in ExperimentAnalysis(str(tune_dir)).trials}
    except Exception as error:
        raise SweepError(f"{tune_dir}: cannot read the saved Ray Tune state ({type(error).__name__})") from None
