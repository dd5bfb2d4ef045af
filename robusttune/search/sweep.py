"""Running and resuming sweeps: Ray Tune drives trials, Optuna (multi-objective) suggests them.

What a trial does is injected as a ``TrialRunner``: ``robusttune.search.trainable.TrainingRunner`` fine-tunes
(the product), ``robusttune.bench.replay.ReplayRunner`` looks curves up in a tabulated benchmark. The runner
says how it runs in the manifest, so ``resume`` can build the same runner again (``robusttune.api``).
The study lives in ``optuna.journal`` inside the experiment directory, Ray Tune's state under ``tune/``, and our
own append-only ``records.jsonl`` is written by a driver-side callback.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from robusttune.bounds import at_least, check_max_failures, check_seed
from robusttune.errors import ConfigError, ParameterError, SweepError, storage_error
from robusttune.metrics import OBJECTIVE
from robusttune.experiment import (LOST_BEFORE_SAVE, MANIFEST_FORMAT, append_record, budget_used, end_torn_tail, journal,
                                   latest_by_trial, load_frozen_space, parse_space_text, read_manifest,
                                   scheduler_state, started_trials, tune_dir, write_manifest)
from robusttune.search.staging import check_worker_visibility
from robusttune.search.stopping import StopSignals
from robusttune.space import Confirm, SearchSpace

if TYPE_CHECKING:
    from robusttune.search.warm_start import WarmStart

log = logging.getLogger(__name__)


class TrialRunner(Protocol):
    """How the trials of a sweep run (the function Ray Tune calls per trial) and what runs after them."""

    def trainable(self, experiment: Path, space: SearchSpace, space_text: str) -> Callable[[dict[str, Any]], None]: ...

    def stopper(self, experiment: Path) -> Any | None: ...  # a ray.tune.Stopper for the whole search, or None

    def after_trials(self, experiment: Path, space: SearchSpace, space_text: str) -> None: ...

    def describe(self) -> dict[str, Any]: ...  # JSON for the manifest: {"kind": ..., ...}


@dataclass(frozen=True)
class SweepOptions:
    trials: int
    concurrency: int
    seed: int
    address: str | None = None
    max_failures: int = 0
    verbose: int = 1
    loggers: tuple[str, ...] = ()  # trackers: wandb, mlflow, tensorboard (robusttune.search.trackers)

    def __post_init__(self) -> None:  # the options' bounds, checked where they are built (the API, tabulate)
        at_least("trials", self.trials, 1)
        at_least("concurrency", self.concurrency, 1)
        check_seed(self.seed)
        check_max_failures(self.max_failures)


def check_runnable(space: SearchSpace, options: SweepOptions | None = None) -> int | None:
    """Everything that can be checked on this machine before anything is created or started: the model name, the
    sampler and its options, the seed, where Ray is. (Dataset folders are checked where trials run: they may live
    on the workers.) On this machine (no ``--address``) returns how many trials will really run at once, and says so
    in one warning when that is fewer than the concurrency asked for; None otherwise."""
    if space.task.imagenet is not None:
        from robusttune.models.clip import check_model_name
        from robusttune.models.pretrained import check_activation

        check_model_name(space.task.imagenet.model)
        imagenet = space.task.imagenet
        check_activation(imagenet.model, imagenet.pretrained, quick_gelu=imagenet.quick_gelu)  # stated, never guessed
    if options is None:
        return None
    from robusttune.search.samplers import BLIND_TO_STOPPED, make_sampler

    make_sampler(space, options.seed)  # bad sampler options fail here, not after the experiment exists
    if space.sampler.name in BLIND_TO_STOPPED and space.scheduler.name != "none":
        log.warning("space '%s': the %s sampler learns from complete trials only; a configuration the %s scheduler "
                    "stops early stays unknown to it and may be proposed again (prefer scheduler: none with it)",
                    space.name, space.sampler.name.value, space.scheduler.name)
    at_once = None
    if options.address is None:  # this machine is the whole cluster: a trial must fit on it
        import math

        ranks = space.max_workers()  # a data-parallel trial: resources per rank
        per = "per trial" if ranks == 1 else f"per worker ({ranks} per trial)"
        cpus = os.cpu_count() or 1
        if space.resources.cpu * ranks > cpus:
            raise ConfigError(f"space '{space.name}': resources.cpu is {space.resources.cpu} {per} but this machine "
                              f"has {cpus} CPU(s); lower it, or sweep on a cluster with `address`")
        fits = math.floor(cpus / (space.resources.cpu * ranks) + 1e-9)
        machine, trial = f"{cpus} CPU(s)", f"{space.resources.cpu * ranks:g} CPU(s)"
        if space.resources.gpu > 0:
            import torch

            gpus = torch.cuda.device_count()
            if space.resources.gpu * ranks > gpus:
                raise ConfigError(f"space '{space.name}': resources.gpu is {space.resources.gpu} {per} but this "
                                  f"machine has {gpus} GPU(s); set resources.gpu: 0, or sweep on a cluster with `address`")
            fits = min(fits, math.floor(gpus / (space.resources.gpu * ranks) + 1e-9))
            machine, trial = f"{machine} and {gpus} GPU(s)", f"{trial} + {space.resources.gpu * ranks:g} GPU(s)"
        wanted = min(options.concurrency, options.trials)
        at_once = min(wanted, fits)
        if at_once < wanted:
            log.warning("space '%s': %d trials at a time asked for, but this machine's %s fit %d trial(s) of %s: "
                        "%d will run at once (the others wait)", space.name, wanted, machine, fits, trial, at_once)
    exported = os.environ.get("RAY_ADDRESS")
    if options.address is None and exported:
        raise ParameterError("address", f"is not given but RAY_ADDRESS is set ({exported}): pass `address` {exported} "
                                        f"to sweep on that cluster, or unset RAY_ADDRESS to sweep on this machine")
    return at_once


def _callbacks(experiment: Path, space_text: str, options: SweepOptions) -> list:
    """The driver's callbacks: the records, the trackers asked for, and the console's lines (unless quiet)."""
    from robusttune.search.adapters import RecordsCallback
    from robusttune.search.console import HeartbeatPrinter, TrialEvents
    from robusttune.search.data_parallel import WorkerGroupReaper
    from robusttune.search.trackers import tracker_callbacks

    callbacks = [RecordsCallback(experiment.resolve(), space_text), WorkerGroupReaper(experiment.resolve()),
                 *tracker_callbacks(options.loggers, experiment)]
    if options.verbose > 0:
        space = parse_space_text(space_text)
        callbacks += [TrialEvents(space.objective.keys, list(space.parameters)), HeartbeatPrinter()]
    return callbacks


def _tune_verbosity(options: SweepOptions) -> int:
    """Ray Tune's own console (its boxed tables) only with ``--verbose``: the sweep prints one line per event. Tune's
    new console prints its configuration box and paths even when silent, its older one does not."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if options.verbose >= 2 else "0"
    return 1 if options.verbose >= 2 else 0


# A busy machine (benchmarks/busy_machine.py): Ray starts its workers at nice 15, so a competing nice-0 process takes
# their cores almost entirely, and torch's OpenMP threads spin at every barrier waiting for the one that shares a core
# with it (10-15 images/s beside a one-core hog against ~250 alone on 2 cores). Trials run at the driver's priority and
# a waiting thread sleeps: the competing process costs its fair share. Set where the user has not set them.
TRIAL_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}  # every Ray worker (trials, baselines, confirmation), local or a cluster
LOCAL_RAY_ENV = {"RAY_worker_niceness": "0"}  # the raylet of a local Ray this driver starts: workers not niced


def _library_log(experiment: Path, verbose: int):
    """Ray's, Tune's and other libraries' words into the experiment's log, off the console (``console.LibraryLog``),
    unless ``--verbose`` (``verbose`` 2) or ``--debug`` asks for them."""
    from robusttune.search.console import LibraryLog

    return LibraryLog(experiment, enabled=verbose < 2 and LibraryLog.wanted())


def _init_ray(address: str | None, stop: StopSignals, *, log_to_driver: bool = False) -> None:
    """Connect to ``address`` or start a local Ray (which ``stop`` then shuts down when the driver ends)."""
    import ray

    # Save Tune's experiment state at most every 2 s (default: 10 s or more), so that an interrupted sweep
    # loses little: a trial started after the last save is re-run from scratch on resume.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if ray.is_initialized():  # a caller (a notebook, a test session) started Ray already: use it
        return
    from robusttune.search.data_parallel import QUIET_RAY

    trial_env = {name: os.environ.get(name, value) for name, value in TRIAL_ENV.items()}  # the user's, when set
    runtime_env = {**QUIET_RAY, "env_vars": {**QUIET_RAY.get("env_vars", {}), **trial_env}}
    try:
        if address:
            ray.init(address=address, log_to_driver=log_to_driver, runtime_env=runtime_env)
        else:
            # No dashboard. Ray 2.60 binds its GCS, raylet and worker ports to every interface whatever node IP it is
            # given (ray.init maps 127.0.0.1 to the node's address); its default token authentication for local
            # clusters (Ray >= 2.59) is what guards them, so robusttune never turns it off.
            stop.started_ray()
            for name, value in LOCAL_RAY_ENV.items():  # read by the raylet this ray.init starts
                os.environ.setdefault(name, value)
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=log_to_driver,
                     configure_logging=False, runtime_env=runtime_env)
        stop.claim()
        from robusttune.search.console import LibraryLog

        LibraryLog.after_ray_init()  # ray.init reset its logger and added its printer of workers' lines
    except SystemExit as exit_:  # ray.init's own SIGTERM handler (sys.exit(15)) rules until claim() takes it back
        if exit_.code != signal.SIGTERM:
            raise
        stop.signalled(signal.SIGTERM)  # ends as any stop signal does: said in one line, Ray shut down, nothing left
    except Exception as error:
        filename = getattr(error, "filename", None)
        translated = storage_error(error, filename or "Ray's session directory")
        detail = str(translated) if translated else f"{type(error).__name__}: {_first_line(error)}"
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise SweepError(f"could not start {where} ({detail}); nothing was run") from None


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def _after_trials(runner: TrialRunner, experiment: Path, space: SearchSpace, space_text: str) -> None:
    """The runner's work after the trials (baselines, merges, confirmation); a full or read-only experiment directory
    said in one line naming it (a Ray task's error carries the OSError only in its text)."""
    try:
        runner.after_trials(experiment, space, space_text)
    except SweepError:
        raise
    except Exception as error:
        translated = storage_error(error, experiment)
        if translated is None:
            raise
        raise translated from None


def _fit(tuner, experiment: Path, stop: StopSignals):
    """``tuner.fit()`` with the stop signals' safe point; a full or read-only experiment directory said in one line."""
    try:
        with stop.tune_running():
            return tuner.fit()
    except SweepError:
        raise
    except Exception as error:
        translated = storage_error(error, experiment)
        if translated is None and _nearly_full(experiment):
            translated = storage_error(OSError(28, "No space left on device"), experiment)
        if translated is None:
            raise
        raise translated from None


def _nearly_full(place: Path) -> bool:
    """Ray reports a write that a full disk cut short in words that never say so ('Ran out of input')."""
    import shutil

    try:
        return shutil.disk_usage(place).free < 1 << 20
    except OSError:
        return False


def _tune_trainable(runner: TrialRunner, experiment: Path, space: SearchSpace, space_text: str):
    from ray import tune

    function = runner.trainable(experiment.resolve(), space, space_text)
    function.__name__ = "robusttune_trial"  # Tune names trials after it
    from robusttune.search.data_parallel import stoppable, trial_resources, uses_workers

    return tune.with_resources(stoppable(function) if uses_workers(space) else function, trial_resources(space))


def run_sweep(experiment: Path, space: SearchSpace, space_text: str, options: SweepOptions, runner: TrialRunner,
              warm_start: WarmStart | None = None):
    """Run a new sweep into ``experiment`` (already created and empty), its first trials ``warm_start``'s points.
    Returns Tune's ResultGrid."""
    with _library_log(experiment, options.verbose), StopSignals(experiment) as stop:
        write_manifest(experiment, space, space_text, seed=options.seed, trials=options.trials,
                       concurrency=options.concurrency, runner=runner.describe(), loggers=list(options.loggers),
                       warm_start=warm_start.describe() if warm_start else None)
        if warm_start is not None:  # in the study once, before Tune starts: a resume finds them there
            from robusttune.search.warm_start import enqueue

            enqueue(experiment, space, warm_start)
        return _search(experiment, space, space_text, options, runner, stop, trials=options.trials)


def _search(experiment: Path, space: SearchSpace, space_text: str, options: SweepOptions, runner: TrialRunner,
            stop: StopSignals, *, trials: int):
    """A fresh Tune run of ``trials`` trials into the experiment's study, then what the runner does after them."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from robusttune.search.adapters import RobustOptunaSearch
    from robusttune.search.data_parallel import uses_workers
    from robusttune.search.samplers import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal(experiment.resolve()))))
    objective = space.objective
    searcher = RobustOptunaSearch(
        space=space.define_by_run, metric=list(objective.keys) if space.multi_objective else objective.keys[0],
        mode=[d.value for d in objective.directions] if space.multi_objective else objective.directions[0].value,
        sampler=make_sampler(space, options.seed), storage=storage, study_name=experiment.name,
    )
    searcher.fail_orphans()  # trials a killed driver had asked for (nothing when the study is new)
    searcher.constraint_names = tuple(c.text for c in objective.bounds)  # Optuna is told each trial's values
    limited = ConcurrencyLimiter(searcher, max_concurrent=options.concurrency)
    callbacks = _callbacks(experiment, space_text, options)
    _init_ray(options.address, stop, log_to_driver=options.verbose > 0)  # trials' warnings reach the console
    if options.address:  # a cluster: can the nodes that run trials see the data and the experiment?
        check_worker_visibility(space, experiment)
    from robusttune.search.constraints import measure_references_first

    measure_references_first(runner, experiment, space, space_text)  # constraints bounded by zero-shot / vanilla FT
    tuner = tune.Tuner(
        _tune_trainable(runner, experiment, space, space_text),
        param_space={"seed": options.seed},
        tune_config=tune.TuneConfig(search_alg=limited, scheduler=make_scheduler(space, experiment),
                                    num_samples=trials, reuse_actors=not uses_workers(space)),
        run_config=tune.RunConfig(
            name=tune_dir(experiment).name, storage_path=str(experiment.resolve()), verbose=_tune_verbosity(options),
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            stop=runner.stopper(experiment.resolve()),
        ),
    )
    results = _fit(tuner, experiment, stop)
    _after_trials(runner, experiment, space, space_text)
    return results


def make_scheduler(space: SearchSpace, experiment: Path):
    """The space's early-stopping scheduler; MO-ASHA keeps its rungs in the experiment directory."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from robusttune.search.mo_asha import MultiObjectiveASHA

    config = space.scheduler
    max_t = config.max_t or 10_000  # default: never cut a trial short of its own length
    if config.name == "asha":
        return ASHAScheduler(metric=OBJECTIVE, mode="max", time_attr="evaluation", grace_period=config.grace_period,
                             reduction_factor=config.reduction_factor, max_t=max_t)
    if config.name == "mo_asha":
        return MultiObjectiveASHA(list(space.objective.keys), [d.value for d in space.objective.directions],
                                  time_attr="evaluation", grace_period=config.grace_period,
                                  reduction_factor=config.reduction_factor, max_t=max_t, tie_break=config.tie_break,
                                  state_file=scheduler_state(experiment.resolve()))
    return FIFOScheduler()


def resume_sweep(experiment: Path, options: SweepOptions, runner: TrialRunner):
    """Continue an interrupted sweep; refuses (SweepError) rather than silently starting a fresh one."""
    with _library_log(experiment, options.verbose), StopSignals(experiment) as stop:
        return _resume(experiment, options, runner, stop)


def _resume(experiment: Path, options: SweepOptions, runner: TrialRunner, stop: StopSignals):
    from ray import tune

    manifest = read_manifest(experiment)
    space, space_text = load_frozen_space(experiment)
    saved = tune_dir(experiment).resolve()
    options = replace(options, seed=manifest.get("seed", options.seed))
    if not saved.is_dir() or not tune.Tuner.can_restore(str(saved)):
        if manifest.get("format") != MANIFEST_FORMAT or not manifest.get("trials"):
            raise SweepError(f"{experiment}: no restorable Ray Tune state in {saved}; nothing was changed")
        return _restart_unsaved(experiment, space, space_text, options, runner, stop, planned=int(manifest["trials"]))
    if not journal(experiment).is_file():  # the pickled study names the journal the sweep started with: never use it
        raise SweepError(f"{journal(experiment)}: the experiment's Optuna study is missing (a partial copy?); "
                         f"the sweep cannot continue without it; nothing was changed")
    restored = _saved_trial_ids(saved)
    if restored is None:  # e.g. torn by a full disk: the records, the study and the checkpoints still hold
        log.warning("%s: Ray Tune's saved state is unreadable (torn by a full disk?); continuing from the records", saved)
        return _restart_unsaved(experiment, space, space_text, options, runner, stop, planned=options.trials)
    recorded = started_trials(experiment, latest_by_trial(experiment), restored)
    if recorded and not restored:
        raise SweepError(f"{experiment}: the saved Tune state has no trials but {len(recorded)} were recorded; "
                         f"refusing to continue as a fresh sweep")
    end_torn_tail(journal(experiment))  # a crash mid-append must not corrupt the study's next write
    _close_lost_trials(experiment, recorded, restored)
    _init_ray(options.address, stop, log_to_driver=options.verbose > 0)
    if options.address:
        check_worker_visibility(space, experiment)
    from robusttune.search.constraints import measure_references_first

    measure_references_first(runner, experiment, space, space_text)  # a kill may have come before they were recorded
    try:
        tuner = tune.Tuner.restore(str(saved), trainable=_tune_trainable(runner, experiment, space, space_text),
                                   resume_unfinished=True, resume_errored=True, restart_errored=False)
    except Exception as error:
        raise SweepError(f"{experiment}: Ray Tune could not restore the sweep ({type(error).__name__}: {str(error)[:200]})") from None
    _point_at(tuner, experiment, space, space_text, options, runner,
              used=budget_used({t: r for t, r in latest_by_trial(experiment).items() if t in recorded}))
    results = _fit(tuner, experiment, stop)
    _after_trials(runner, experiment, space, space_text)
    return results


def confirm_experiment(experiment: Path, space: SearchSpace, space_text: str, cache_dir: Path, settings: Confirm, *,
                       trial_ids: list[str] | None = None, address: str | None = None) -> int:
    """The confirmation stage of a finished (or interrupted) sweep on its own (``robusttune confirm``): what the
    records lack, as Ray tasks on ``address`` or a local Ray. Returns the rows written."""
    from robusttune.search.confirm import run_confirmation, select_trials

    select_trials(space, latest_by_trial(experiment), top=settings.top, trial_ids=trial_ids)  # refuse before Ray starts
    with _library_log(experiment, 1), StopSignals(experiment) as stop:
        _init_ray(address, stop)
        return run_confirmation(experiment, space, space_text, cache_dir, settings, trial_ids=trial_ids)


def _restart_unsaved(experiment: Path, space: SearchSpace, space_text: str, options: SweepOptions, runner: TrialRunner,
                     stop: StopSignals, *, planned: int):
    """The driver died before Ray Tune first saved its state, or a full disk tore it: nothing can be restored, and
    nothing finished can be lost either (a trial that reported is in the records). Record the unsaved trials as failed, fail their Optuna
    trials, and run the rest of the budget as a fresh Tune run into the same experiment and study."""
    import shutil

    recorded = started_trials(experiment, latest_by_trial(experiment))
    _close_lost_trials(experiment, recorded, restored=set())
    end_torn_tail(journal(experiment))
    remaining = max(0, planned - len(budget_used({t: r for t, r in latest_by_trial(experiment).items() if t in recorded})))
    log.warning("%s: no Ray Tune state to restore; running the %d remaining trial(s) afresh",
                experiment, remaining)
    if tune_dir(experiment).exists():
        shutil.rmtree(tune_dir(experiment))  # never saved, or unreadable: nothing in it can be restored
    if remaining == 0:
        _after_trials(runner, experiment, space, space_text)
        return None
    return _search(experiment, space, space_text, options, runner, stop, trials=remaining)


def _point_at(tuner, experiment: Path, space: SearchSpace, space_text: str, options: SweepOptions,
              runner: TrialRunner, *, used: set[str]) -> None:
    """Tune restores the callbacks, scheduler, stopper and failure settings it pickled when the sweep started,
    with the paths they held then: a moved or copied experiment would write into the original. Give the restored
    run fresh ones for this experiment directory (MO-ASHA and the budget reload their state from it) and this
    call's ``max_failures``; tell the searcher which journal to use once Tune has restored it, and the budget as
    the records count it (``used``: a trial that finished after Tune's last state save is in the records only)."""
    from ray import tune

    from robusttune.search.adapters import RelocatedSearchGenerator, RobustOptunaSearch

    from robusttune.search import ray_compat as door

    internal = door.restored_tuner(tuner)
    if internal is None:
        raise SweepError(f"{experiment}: this Ray version restores sweeps in a way robusttune does not know; "
                         f"nothing was changed")
    door.set_run_config(internal, replace(door.run_config(internal),
                                          callbacks=_callbacks(experiment, space_text, options),
                                          verbose=_tune_verbosity(options), stop=runner.stopper(experiment.resolve()),
                                          failure_config=tune.FailureConfig(max_failures=options.max_failures)))
    settings = door.tune_config(internal)
    settings.scheduler = make_scheduler(space, experiment)
    searcher = settings.search_alg
    while hasattr(searcher, "searcher"):  # the ConcurrencyLimiter around it
        searcher = searcher.searcher
    if not isinstance(searcher, RobustOptunaSearch):
        raise SweepError(f"{experiment}: the restored search algorithm is {type(searcher).__name__}, not robusttune's")
    searcher.journal = journal(experiment.resolve())
    searcher.budget, searcher.used_slots = options.trials, frozenset(used)
    settings.search_alg = RelocatedSearchGenerator(settings.search_alg,
                                                                storage_path=str(experiment.resolve()))


def _close_lost_trials(experiment: Path, recorded: dict[str, dict[str, Any]], restored: set[str]) -> None:
    """Trials that started after Tune's last state save cannot be resumed: record them as failed (their
    budget slot is run again by the searcher) so that no trial stays 'running' forever."""
    for trial_id, row in recorded.items():
        if trial_id in restored:
            continue
        if row.get("final"):
            log.warning("trial %s finished after Tune's last state save; its result is kept in the records and counts "
                        "against the budget", trial_id)
            continue
        append_record(experiment, {"trial_id": trial_id, "status": "failed", "final": True, "config": row.get("config"),
                                   "sampled": row.get("sampled"), "step": row.get("step"),
                                   "failure": LOST_BEFORE_SAVE})


def _saved_trial_ids(saved: Path) -> set[str] | None:
    """Trial ids in Tune's saved experiment state (read before restoring, so a fresh start is detectable); None when
    the state cannot be read."""
    from ray.tune import ExperimentAnalysis

    try:
        return {trial.trial_id for trial in ExperimentAnalysis(str(saved)).trials}
    except Exception as error:
        log.debug("cannot read %s: %s", saved, error)
        return None
