"""Searches: ``sweep``, ``resume``, ``status`` and ``demo`` (the main job on the mini world)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robusttune.api.common import cache_directory, status_counts, trial_table
from robusttune.bounds import at_least, at_most
from robusttune.errors import DataError, Interrupted, ParameterError
from robusttune.methods import MergeName
from robusttune.experiment import (ExperimentLock, check_experiment, check_new_experiment, check_space_unchanged,
                                   claim_new_experiment, latest_by_trial, load_frozen_space, pareto_trials,
                                   read_heartbeats, read_manifest)
from robusttune.space import MAX_CONFIRM_SEEDS, MAX_CONFIRM_TOP, SearchSpace, load_space


@dataclass(frozen=True)
class Status:
    """An experiment's trials as its records say (one row per trial), without starting Ray."""

    experiment: Path
    space: str | None
    planned: int | None
    parameters: list[str]
    trials: list[dict[str, Any]]
    counts: dict[str, int]
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)  # running trials' latest heartbeats
    confirmation: dict[str, int] = field(default_factory=dict)  # the confirmation's runs recorded (and failed)
    ties: dict[str, list[str]] = field(default_factory=dict)  # front trials within each other's evaluation noise
    merges: dict[str, list[str]] = field(default_factory=dict)  # each recorded merge of the sweep's models: its trials
    warm_start: dict[str, Any] = field(default_factory=dict)  # where the first trials came from (sweep --warm-start)
    above_wise: dict[str, Any] = field(default_factory=dict)  # per method: its share above WiSE-FT (analysis.above_wise)
    cost: dict[str, Any] = field(default_factory=dict)  # each trial's measured cost, the totals, against the plan


@dataclass(frozen=True)
class SweepResult:
    """A finished (or interrupted-and-resumed) sweep: its directory, trial counts and Pareto-optimal trials."""

    experiment: Path
    space: SearchSpace
    counts: dict[str, int]
    pareto: list[dict[str, Any]]
    seconds: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    trackers: dict[str, str] = field(default_factory=dict)  # each experiment tracker's logs: where they are
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # the confirmation's, when the space asks for one
    sentences: list[str] = field(default_factory=list)  # one per verdict, for readers

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": str(self.experiment), "counts": self.counts, "pareto": self.pareto,
                "seconds": self.seconds, "trackers": self.trackers, "verdicts": self.verdicts,
                "sentences": self.sentences}


def _runner_for(manifest: Mapping[str, Any], cache: Path):
    """The trial runner an experiment was started with (its manifest says which)."""
    runner = manifest.get("runner") or {}
    if runner.get("kind") == "replay":
        from robusttune.bench.replay import ReplayRunner

        return ReplayRunner.from_manifest(runner)
    if runner.get("kind") == "train":
        from robusttune.search.trainable import TrainingRunner

        return TrainingRunner(cache, baselines=bool(runner.get("baselines", True)),
                              heartbeat_seconds=float(runner.get("heartbeat_seconds", 30.0)))
    raise DataError(f"manifest names no trial runner robusttune knows ({runner.get('kind')!r})")


def _finished(experiment: Path, space: SearchSpace, seconds: float) -> SweepResult:
    from robusttune.search.trackers import tracker_places

    rows = trial_table(experiment)
    front = pareto_trials(latest_by_trial(experiment), list(space.objective.keys),
                          [d.value for d in space.objective.directions])
    shown = {r["trial_id"]: r for r in rows}
    trackers = tracker_places(read_manifest(experiment).get("loggers", []), experiment)
    verdicts, sentences = _verdicts(experiment)
    return SweepResult(experiment, space, status_counts(rows), [shown[r["trial_id"]] for r in front],
                       round(seconds, 1), rows, trackers, verdicts, sentences)


def _verdicts(experiment: Path) -> tuple[list[dict[str, Any]], list[str]]:
    from robusttune.analysis.stats import sentence, verdicts

    rows = verdicts(experiment)
    return rows, [sentence(r) for r in rows]


def sweep(space: str | os.PathLike[str], *, storage: str | os.PathLike[str] = "runs", name: str | None = None,
          trials: int | None = None, concurrency: int | None = None, seed: int | None = None, address: str | None = None,
          max_failures: int = 0, overwrite: bool = False, cache_dir: str | os.PathLike[str] | None = None,
          verbose: int = 1, runner: Any = None, loggers: Sequence[str] = (), heartbeat_seconds: float = 30.0,
          warm_start: str | os.PathLike[str] | None = None, warm_top: int | None = None) -> SweepResult:
    """Run a multi-objective search over ``space`` (a built-in name or a YAML file) into ``storage/name``, then
    the baselines. ``runner`` replaces the fine-tuning trials (e.g. ``robusttune.bench.replay.ReplayRunner``).
    ``loggers``: experiment trackers (``wandb``, ``mlflow``, ``tensorboard``); trials report a heartbeat (step, loss,
    images/s, ETA) between evaluations at most every ``heartbeat_seconds``. ``verbose``: 0 quiet, 1 one line per
    trial event, 2 Ray Tune's tables too. ``warm_start``: an earlier experiment whose ``warm_top`` best complete
    trials (default: its Pareto front), mapped onto this space, are the first trials (robusttune.search.warm_start)."""
    from robusttune.search.sweep import SweepOptions, check_runnable, run_sweep
    from robusttune.search.trackers import check_loggers
    from robusttune.search.trainable import TrainingRunner

    # Validate everything first: nothing is created (or replaced) until all of it holds
    loaded, text = load_space(str(space))
    at_least("heartbeat_seconds", heartbeat_seconds, 0, " seconds")
    check_loggers(loggers)
    cache = cache_directory(cache_dir)
    options = SweepOptions(trials=loaded.budget.trials if trials is None else trials,  # the options check their bounds
                           concurrency=loaded.budget.concurrency if concurrency is None else concurrency,
                           seed=loaded.sampler.seed if seed is None else seed, address=address,
                           max_failures=max_failures, verbose=verbose, loggers=tuple(loggers))
    check_runnable(loaded, options)
    if runner is None and address is None:  # trials that train here: their peaks against this machine's GPU, if any
        from robusttune.search.memory import gpu_memory_of
        from robusttune.search.plan import check_space_fits

        gpu_memory, gpu = gpu_memory_of(local=True)
        check_space_fits(loaded, cache, gpu_memory=gpu_memory, gpu=gpu)
    warm = None
    if warm_start is not None:
        from robusttune.search.warm_start import load_warm_start

        warm = load_warm_start(warm_start, loaded, top=warm_top, trials=options.trials)
    elif warm_top is not None:
        raise ParameterError("warm_top", "needs `warm_start` (the experiment to start from)")
    name = name or f"{_plain_name(loaded.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_new_experiment(Path(storage), name, overwrite=overwrite)
    # made (or emptied, with overwrite) and locked in one step: the loser of two overwrites is refused naming the winner
    lock = claim_new_experiment(Path(storage), name, overwrite=overwrite, command=f"robusttune sweep {space}")
    experiment = lock.path.parent
    started = time.perf_counter()
    try:
        run_sweep(experiment, loaded, text, options, runner or TrainingRunner(cache, heartbeat_seconds=heartbeat_seconds),
                  warm_start=warm)
    except BaseException as error:
        if _remove_if_nothing_ran(lock) and isinstance(error, (Interrupted, KeyboardInterrupt)):
            number = getattr(error, "signal_number", None) or (error.exit_code - 128 if isinstance(error, Interrupted) else 2)
            raise Interrupted(f"{_signal_name(number)}: stopped before any trial ran; nothing was started "
                              f"({experiment} removed)", signal_number=number) from None
        raise
    finally:
        lock.release()
    return _finished(experiment, loaded, time.perf_counter() - started)


def _plain_name(space_name: str) -> str:
    """A folder name derived from a space's name (a file name may hold spaces or any letter): runs of characters an
    experiment name cannot hold become one '-' (``robusttune.experiment.check_experiment_name``)."""
    import re

    return re.sub(r"[^A-Za-z0-9._+-]+", "-", space_name).strip(".-") or "sweep"


def _remove_if_nothing_ran(lock: ExperimentLock) -> bool:
    """A sweep that failed before any trial reported or Tune saved any state leaves nothing to resume: remove the
    folder this call created (while still holding its lock), so the name is free again. True when removed."""
    from robusttune.experiment import RECORDS, remove_experiment, tune_dir

    experiment = lock.path.parent
    if lock.held and not (experiment / RECORDS).exists() and not tune_dir(experiment).exists():
        remove_experiment(lock)
        return True
    return False


def _signal_name(number: int) -> str:
    import signal

    return {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}.get(number, f"signal {number}")


def resume(experiment: str | os.PathLike[str], *, address: str | None = None, max_failures: int = 0,
           cache_dir: str | os.PathLike[str] | None = None, verbose: int = 1,
           allow_space_change: bool = False, loggers: Sequence[str] | None = None) -> SweepResult:
    """Continue an interrupted sweep: finished trials are kept, unfinished ones continue from their checkpoints,
    the rest of the budget runs, then the missing baselines. Refuses rather than starting afresh, refuses an
    edited ``space.yaml`` unless ``allow_space_change``, and refuses while another process runs the experiment.
    ``loggers`` (default: those the sweep started with) keep logging to the same trackers."""
    from robusttune.search.sweep import SweepOptions, resume_sweep
    from robusttune.search.trackers import check_loggers

    path = check_experiment(Path(experiment))
    manifest = read_manifest(path)
    check_space_unchanged(path, allow_change=allow_space_change)
    space, _ = load_frozen_space(path)
    options = SweepOptions(trials=int(manifest.get("trials") or space.budget.trials),
                           concurrency=int(manifest.get("concurrency") or space.budget.concurrency),
                           seed=int(manifest.get("seed", space.sampler.seed)), address=address,
                           max_failures=max_failures, verbose=verbose,
                           loggers=tuple(manifest.get("loggers", ()) if loggers is None else loggers))
    check_loggers(options.loggers)
    runner = _runner_for(manifest, cache_directory(cache_dir))
    started = time.perf_counter()
    with ExperimentLock(path, f"robusttune resume {experiment}"):
        resume_sweep(path, options, runner)
    return _finished(path, space, time.perf_counter() - started)


def status(experiment: str | os.PathLike[str], *, plan: bool = False,
           cache_dir: str | os.PathLike[str] | None = None) -> Status:
    """The experiment's trials from its records (works while the sweep runs; never starts Ray). ``plan``: also
    each trial's measured cost against ``plan``'s prediction for its frozen space (from the calibration cached in
    ``cache_dir``; measured first when none is)."""
    path = check_experiment(Path(experiment))
    manifest = read_manifest(path)
    rows = trial_table(path)
    running = {r["trial_id"] for r in rows if r["status"] == "running"}
    progress = {t: beat for t, beat in read_heartbeats(path).items() if t in running}
    return Status(path, manifest.get("space"), manifest.get("trials"), list(manifest.get("parameters", [])), rows,
                  status_counts(rows), progress, confirmation_counts(path), front_ties(path), recorded_merges(path),
                  dict(manifest.get("warm_start") or {}), share_above_wise(path), measured_cost(path, plan, cache_dir))


def measured_cost(experiment: Path, plan: bool, cache_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """``{trials: {id: cost}, total: ..., plan: ...}`` from the records (``robusttune.analysis.costs``); empty when
    no trial recorded a cost."""
    from robusttune.analysis.costs import against_plan, totals, trial_costs
    from robusttune.experiment import SPACE

    costs = trial_costs(experiment)
    if not costs:
        return {}
    found: dict[str, Any] = {"trials": costs, "total": totals(costs)}
    if plan:
        from robusttune.api.reports import plan as make_plan

        found["plan"] = against_plan(costs, make_plan(experiment / SPACE, cache_dir=cache_dir).to_dict())
    return found


def share_above_wise(experiment: Path) -> dict[str, Any]:
    """Per method, the share of its complete trials above vanilla FT's WiSE-FT curve at equal ID
    (``robusttune.analysis.above_wise``, with a sentence per method; empty before the first complete trial)."""
    from robusttune.analysis.above_wise import sentence, share_above_wise as shares

    found = shares(experiment)
    return found | {"sentences": [sentence(row) for row in found["rows"]]} if found else found


def recorded_merges(experiment: Path) -> dict[str, list[str]]:
    """The merges of the sweep's models the records hold (``robusttune.search.merges``): method -> its trials."""
    from robusttune.experiment import MERGE_KIND, read_records

    return {r["method"]: list(r.get("members", [])) for r in read_records(experiment) if r.get("kind") == MERGE_KIND}


def front_ties(experiment: Path) -> dict[str, list[str]]:
    """The front's trials on the space's objective, each with the others it is tied with: within the 95% interval
    of its own evaluation (``robusttune.analysis.stats.ties``) on every objective."""
    from robusttune.analysis.stats import ties

    try:
        space, _ = load_frozen_space(experiment)
    except Exception:  # a status must work on a half-written experiment too: no space, no front
        return {}
    metrics = list(space.objective.keys)
    front = pareto_trials(latest_by_trial(experiment), metrics, [d.value for d in space.objective.directions])
    return ties(front, metrics) if len(front) > 1 else {}


def confirmation_counts(experiment: Path) -> dict[str, int]:
    """The confirmation runs the records hold: ``runs`` with their own point, ``failed`` among them, and
    ``curve_points`` of their WiSE-FT curves (empty when the experiment has no confirmation)."""
    from robusttune.experiment import is_confirm_row, read_records

    rows = [r for r in read_records(experiment) if is_confirm_row(r)]
    if not rows:
        return {}
    points = [r for r in rows if r.get("alpha") is None]
    return {"runs": len(points), "failed": sum(1 for r in points if r.get("status") == "failed"),
            "curve_points": len(rows) - len(points)}


@dataclass(frozen=True)
class DemoResult:
    """The main job: the mini world, the sweep of the built-in ``demo`` space over it, and its report."""

    world: Any  # robusttune.api.data.WorldResult
    sweep: SweepResult
    report: Any  # robusttune.api.reports.ReportResult
    seconds: float


DEMO_SPACE = "demo"


def demo(*, storage: str | os.PathLike[str] = "runs", name: str | None = None, trials: int | None = None,
         seed: int | None = None, cache_dir: str | os.PathLike[str] | None = None, verbose: int = 1,
         on_ready: Callable[[Any], None] | None = None) -> DemoResult:
    """Prepare the mini world (``on_ready`` gets it, before the sweep starts), sweep the built-in ``demo`` space
    over it into ``storage/name`` (default ``demo-<time>``) and write the experiment's report."""
    from robusttune.api.data import prepare_world
    from robusttune.api.reports import report

    started = time.perf_counter()
    world = prepare_world(cache_dir=cache_dir)
    if on_ready is not None:
        on_ready(world)
    swept = sweep(DEMO_SPACE, storage=storage, name=name or f"demo-{time.strftime('%Y%m%d-%H%M%S')}", trials=trials,
                  seed=seed, cache_dir=cache_dir, verbose=verbose)
    written = report(swept.experiment, cache_dir=cache_dir)
    seconds = round(time.perf_counter() - started, 1)
    return DemoResult(world, replace(swept, seconds=seconds), written, seconds)


@dataclass(frozen=True)
class ConfirmResult:
    """A confirmation: the rows it wrote, and one verdict row per configuration (``robusttune.analysis.stats``)."""

    experiment: Path
    written: int
    verdicts: list[dict[str, Any]]
    sentences: list[str]  # one per verdict row, for readers
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": str(self.experiment), "written": self.written, "verdicts": self.verdicts,
                "sentences": self.sentences, "seconds": self.seconds}


def confirm(experiment: str | os.PathLike[str], *, seeds: int | None = None, top: int | None = None,
            trials: Sequence[str] | None = None, per_method: bool | None = None, merges: Sequence[str] | None = None,
            address: str | None = None, cache_dir: str | os.PathLike[str] | None = None) -> ConfirmResult:
    """Train the front's ``top`` configurations (``per_method``: the ``top`` of each method; or the named
    ``trials``), vanilla FT and zero-shot with ``seeds`` seeds each, each with its WiSE-FT curve, and the recorded
    ``merges`` at the same seeds, as Ray tasks (defaults: the space's ``confirm`` key, else 3 seeds, top 5, no merge);
    then the verdicts against vanilla FT's WiSE-FT at equal ID. Resumable: what the records hold is not redone.
    Refuses while another process runs the experiment."""
    from robusttune.search.sweep import confirm_experiment
    from robusttune.space import Confirm

    path = check_experiment(Path(experiment))
    space, text = load_frozen_space(path)
    defaults = space.confirm or Confirm()
    unknown = [m for m in merges or () if m not in set(MergeName)]
    if unknown:
        raise ParameterError("merge", f"must be one of {', '.join(MergeName)}, got {unknown[0]!r}")
    settings = defaults.model_copy(update={
        "seeds": defaults.seeds if seeds is None else at_most("seeds", at_least("seeds", seeds, 1), MAX_CONFIRM_SEEDS),
        "top": defaults.top if top is None else at_most("top", at_least("top", top, 1), MAX_CONFIRM_TOP),
        "per_method": defaults.per_method if per_method is None else bool(per_method),
        "merges": defaults.merges if merges is None else tuple(MergeName(m) for m in dict.fromkeys(merges))})
    started = time.perf_counter()
    with ExperimentLock(path, f"robusttune confirm {experiment}"):
        written = confirm_experiment(path, space, text, cache_directory(cache_dir), settings,
                                     trial_ids=list(trials) if trials else None, address=address)
    rows, sentences = _verdicts(path)
    return ConfirmResult(path, written, rows, sentences, round(time.perf_counter() - started, 1))
