"""The Python API: what the ``robusttune`` command does, callable from a notebook or a script.

    import robusttune as rt

    result = rt.sweep("demo", storage="runs", name="my-demo", trials=4)   # a SweepResult
    rt.status(result.experiment).counts                                     # {"complete": 3, ...}
    rt.report(result.experiment, gallery=False).files["index.html"]
    rt.resume(result.experiment)                                            # after an interruption

Every function validates its input first and raises one of ``robusttune.errors`` (one-line messages); the CLI is
a thin layer that parses flags, calls these and prints. Heavy libraries (torch, ray, optuna) are imported inside.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robusttune.cache import resolve_cache_dir
from robusttune.config import TaskSpec, TrainConfig, parse
from robusttune.errors import ConfigError, DataError
from robusttune.metrics import OBJECTIVE, is_metric
from robusttune.experiment import (STATUSES, RunFiles, ExperimentLock, check_experiment, check_new_experiment,
                                   check_space_unchanged, latest_by_trial, load_frozen_space, new_experiment_dir,
                                   pareto_trials, read_heartbeats, read_manifest, report_dir)
from robusttune.space import SearchSpace, load_space


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class TrainSummary:
    """One ``train`` run: its status, last evaluation and where its files are."""

    status: str  # complete | failed
    metrics: dict[str, float]
    steps: int
    seconds: float
    out: Path
    failure: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "failure": self.failure, "steps": self.steps, **self.metrics,
                "seconds": self.seconds, "out": str(self.out)}

    @classmethod
    def read(cls, out: Path) -> TrainSummary:
        """The summary a run wrote into ``out`` (``summary.json``)."""
        try:
            data = json.loads(RunFiles(out).summary.read_text())
        except (OSError, ValueError):
            raise DataError(f"{out}: the run wrote no readable summary.json") from None
        metrics = {k: v for k, v in data.items() if is_metric(k)}
        return cls(data["status"], metrics, int(data["steps"]), float(data["seconds"]), out, data.get("failure"))


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


@dataclass(frozen=True)
class SweepResult:
    """A finished (or interrupted-and-resumed) sweep: its directory, trial counts and Pareto-optimal trials."""

    experiment: Path
    space: SearchSpace
    counts: dict[str, int]
    pareto: list[dict[str, Any]]
    seconds: float
    trials: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ReportResult:
    files: dict[str, str]
    seconds: float
    summary: dict[str, Any]


# ---------------------------------------------------------------------------------------------- helpers


def cache_directory(value: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory (``value``, else ``$ROBUSTTUNE_CACHE_DIR``, else ``~/.cache/robusttune``)."""
    path = resolve_cache_dir(value)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: cache directory is a file")
    return path


def set_threads(threads: int | None) -> None:
    import torch

    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(max(1, threads or os.cpu_count() or 1))


def trial_table(experiment: Path) -> list[dict[str, Any]]:
    """One row per trial: status, step, metrics, failure and the searched values."""
    rows = []
    for trial_id, row in sorted(latest_by_trial(experiment).items()):
        sampled = row.get("sampled") if isinstance(row.get("sampled"), dict) else {}
        rows.append({"trial_id": trial_id, "status": row.get("status"), "step": row.get("step"),
                     **{k: v for k, v in row.items() if is_metric(k) or k in (OBJECTIVE, "failure")},
                     **{k: v for k, v in sampled.items() if k != "seed"}})
    return rows


def _counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {status: sum(1 for r in rows if r["status"] == status) for status in STATUSES}


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output path exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise ConfigError(f"{out}: output directory is not empty (pass --resume to continue it or --overwrite to replace it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"{out}: output directory is not writable ({error.strerror})") from None


# ------------------------------------------------------------------------------------------------ train


def train(config: TrainConfig | Mapping[str, Any] | None = None, *, out: str | os.PathLike[str],
          task: TaskSpec | Mapping[str, Any] | None = None, cache_dir: str | os.PathLike[str] | None = None,
          resume: bool = False, overwrite: bool = False, threads: int | None = None,
          on_evaluation: Callable[[dict[str, Any]], None] | None = None) -> TrainSummary:
    """Fine-tune once (the mini world unless ``task`` names ImageNet folders), writing into ``out``:
    ``config.json``, ``metrics.jsonl`` (one row per evaluation), ``checkpoint.pt`` (latest, resumable),
    ``final.pt`` (weights, config and task) and ``summary.json``. ``resume`` continues from ``checkpoint.pt``.
    With ``workers > 1`` in the config the run trains on that many local Ray Train workers (data parallel; rank 0
    writes the files; ``on_evaluation`` is not called)."""
    config = config if isinstance(config, TrainConfig) else parse(TrainConfig, dict(config or {}), "train config")
    spec = task if isinstance(task, TaskSpec) else parse(TaskSpec, dict(task or {}), "task")
    out = Path(out)
    cache = cache_directory(cache_dir)
    check_out_dir(out, resume=resume, overwrite=overwrite)
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if not resume:
        RunFiles(out).checkpoint.unlink(missing_ok=True)  # a fresh run (--overwrite) never continues another's checkpoint
    if config.workers > 1:
        from robusttune.search.data_parallel import train_on_workers

        train_on_workers(config.to_dict(), spec.to_dict(), str(cache), str(out), threads=threads)
    else:
        from robusttune.training.train_dir import train_into

        set_threads(threads)
        train_into(config, spec, cache, out, on_evaluation=on_evaluation)
    return TrainSummary.read(out)


def wise(finetuned: str | os.PathLike[str], *, zero_shot: str | os.PathLike[str] | None = None,
         alphas: Sequence[float] | None = None, cache_dir: str | os.PathLike[str] | None = None,
         threads: int | None = None, device: str = "auto", precision: str = "auto") -> list[dict[str, Any]]:
    """The WiSE-FT curve of a ``train`` run's ``final.pt``: one row ``{alpha, metric: accuracy, ...}`` per alpha,
    evaluated on ``device`` under ``precision`` (as ``TrainConfig``'s keys). ``zero_shot``: the weights at alpha 0
    (default: the task's own zero-shot model); a checkpoint that carries its task must carry ``finetuned``'s.
    Weights holding NaN/inf are refused before anything is built or evaluated."""
    from robusttune.method.wise import DEFAULT_ALPHAS
    from robusttune.training.checkpoint import load_checkpoint
    from robusttune.training.tasks import build_task
    from robusttune.training.device import Placement
    from robusttune.training.evaluate import Evaluator
    from robusttune.training.wise import check_same_task, checkpoint_weights, wise_curve

    alphas = tuple(DEFAULT_ALPHAS if alphas is None else alphas)
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ConfigError(f"alphas must lie in [0, 1], got {list(alphas)}")
    payload = load_checkpoint(finetuned)
    if "task" not in payload:
        raise ConfigError(f"{finetuned}: not a final checkpoint of 'robusttune train' (no task); use its final.pt")
    spec = parse(TaskSpec, json.loads(payload["task"]), str(finetuned))
    weights = checkpoint_weights(payload, str(finetuned))
    base = None
    if zero_shot:
        start = load_checkpoint(zero_shot)
        if "task" in start:  # a final.pt: the same task, or its weights mean nothing next to these
            check_same_task(spec, parse(TaskSpec, json.loads(start["task"]), str(zero_shot)), str(finetuned), str(zero_shot))
        base = checkpoint_weights(start, str(zero_shot))  # a plain state dict: interpolate checks keys and shapes
    placement_config = parse(TrainConfig, {"device": device, "precision": precision}, "wise")
    set_threads(threads)
    model, task = build_task(spec, cache_directory(cache_dir))
    if base is None:
        base = {k: v.clone() for k, v in model.state_dict().items()}
    evaluator = Evaluator(task.eval_sets, num_workers=task.num_workers,
                          placement=Placement.of(placement_config.device, placement_config.precision))
    return wise_curve(model, base, weights, evaluator, alphas=alphas)


# ------------------------------------------------------------------------------------------------ sweeps


def _runner_for(manifest: Mapping[str, Any], cache: Path):
    """The trial runner an experiment was started with (its manifest says which)."""
    runner = manifest.get("runner")
    if runner is None:  # experiments written before runners were recorded
        runner = ({"kind": "replay", "table": manifest["replay_table"], "max_evaluations": manifest.get("max_evaluations")}
                  if manifest.get("replay_table") else {"kind": "train"})
    if runner.get("kind") == "replay":
        from robusttune.bench.replay import ReplayRunner

        return ReplayRunner.from_manifest(runner)
    if runner.get("kind") == "train":
        from robusttune.search.trainable import TrainingRunner

        return TrainingRunner(cache, baselines=bool(runner.get("baselines", True)),
                              heartbeat_seconds=float(runner.get("heartbeat_seconds", 30.0)))
    raise DataError(f"manifest names an unknown trial runner {runner.get('kind')!r}")


def _finished(experiment: Path, space: SearchSpace, seconds: float) -> SweepResult:
    rows = trial_table(experiment)
    front = pareto_trials(latest_by_trial(experiment), list(space.objective.metrics),
                          [d.value for d in space.objective.directions])
    shown = {r["trial_id"]: r for r in rows}
    return SweepResult(experiment, space, _counts(rows), [shown[r["trial_id"]] for r in front], round(seconds, 1), rows)


def sweep(space: str | os.PathLike[str], *, storage: str | os.PathLike[str] = "runs", name: str | None = None,
          trials: int | None = None, concurrency: int | None = None, seed: int | None = None, address: str | None = None,
          max_failures: int = 0, overwrite: bool = False, cache_dir: str | os.PathLike[str] | None = None,
          verbose: int = 1, runner: Any = None, loggers: Sequence[str] = (), heartbeat_seconds: float = 30.0) -> SweepResult:
    """Run a multi-objective search over ``space`` (a built-in name or a YAML file) into ``storage/name``, then
    the baselines. ``runner`` replaces the fine-tuning trials (e.g. ``robusttune.bench.replay.ReplayRunner``).
    ``loggers``: experiment trackers (``wandb``, ``mlflow``, ``tensorboard``); trials report a heartbeat (step, loss,
    images/s, ETA) between evaluations at most every ``heartbeat_seconds``."""
    from robusttune.search.sweep import SweepOptions, check_runnable, run_sweep
    from robusttune.search.trackers import check_loggers
    from robusttune.search.trainable import TrainingRunner

    # Validate everything first: nothing is created (or replaced) until all of it holds
    loaded, text = load_space(str(space))
    for flag, value in (("trials", trials), ("concurrency", concurrency)):
        if value is not None and value < 1:
            raise ConfigError(f"--{flag} must be >= 1, got {value}")
    if max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {max_failures}")
    if heartbeat_seconds < 0:
        raise ConfigError(f"--heartbeat must be >= 0 seconds, got {heartbeat_seconds}")
    check_loggers(loggers)
    cache = cache_directory(cache_dir)
    options = SweepOptions(trials=trials or loaded.budget.trials, concurrency=concurrency or loaded.budget.concurrency,
                           seed=loaded.sampler.seed if seed is None else seed, address=address,
                           max_failures=max_failures, verbose=verbose, loggers=tuple(loggers))
    check_runnable(loaded, options)
    name = name or f"{loaded.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_new_experiment(Path(storage), name, overwrite=overwrite)
    experiment = new_experiment_dir(Path(storage), name, overwrite=overwrite)
    started = time.perf_counter()
    try:
        with ExperimentLock(experiment, f"robusttune sweep {space}"):
            run_sweep(experiment, loaded, text, options, runner or TrainingRunner(cache, heartbeat_seconds=heartbeat_seconds))
    except BaseException:
        _remove_if_nothing_ran(experiment)
        raise
    return _finished(experiment, loaded, time.perf_counter() - started)


def _remove_if_nothing_ran(experiment: Path) -> None:
    """A sweep that failed before any trial reported or Tune saved any state leaves nothing to resume: remove the
    folder this call created, so the name is free again."""
    import shutil

    from robusttune.experiment import RECORDS, tune_dir

    if not (experiment / RECORDS).exists() and not tune_dir(experiment).exists():
        shutil.rmtree(experiment, ignore_errors=True)


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
    if max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {max_failures}")
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


def plan(space: str | os.PathLike[str], *, trials: int | None = None, calibrate: bool = False,
         cache_dir: str | os.PathLike[str] | None = None):
    """What a sweep of ``space`` will cost (``robusttune.search.plan.Plan``): device-hours per trial and for the
    sweep by term (startup, training, evaluation, checkpoint writes, the serial tail of baselines and WiSE-FT curves)
    and the dominant one, what bounds a trial (device or loader), the evaluation share, storage and the scheduler's
    expected saving, from measurements on this machine (steps at the trial's micro-batch or a line through two
    sizes, the loader, the storage's write rate; cached, ``calibrate`` measures again)."""
    from robusttune.search.plan import plan as make_plan

    loaded, _ = load_space(str(space))
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    return make_plan(loaded, cache_directory(cache_dir), trials=trials, calibrate_again=calibrate)


def status(experiment: str | os.PathLike[str]) -> Status:
    """The experiment's trials from its records (works while the sweep runs; never starts Ray)."""
    path = check_experiment(Path(experiment))
    manifest = read_manifest(path)
    rows = trial_table(path)
    running = {r["trial_id"] for r in rows if r["status"] == "running"}
    progress = {t: beat for t, beat in read_heartbeats(path).items() if t in running}
    return Status(path, manifest.get("space"), manifest.get("trials"), list(manifest.get("parameters", [])), rows,
                  _counts(rows), progress)


def report(experiment: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None,
           formats: Sequence[str] = ("html", "png", "csv"), logit_axes: bool = False, gallery: bool = True,
           cache_dir: str | os.PathLike[str] | None = None) -> ReportResult:
    """Write the Pareto-front report (``index.html``, PNGs, CSVs) into ``out`` (default ``EXPERIMENT/report``).
    ``gallery`` re-computes the counterfactual gallery from the trials' checkpoints (needs torch)."""
    from robusttune.analysis.report import FORMATS, write_report

    path = check_experiment(Path(experiment))
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"--format must be a comma-separated subset of {','.join(FORMATS)}, got {','.join(formats)!r}")
    target = Path(out) if out else report_dir(path)
    galleries: dict[str, str] = {}
    if gallery and ("png" in formats or "html" in formats):
        from robusttune.gallery import write_galleries

        target.mkdir(parents=True, exist_ok=True)
        galleries = write_galleries(path, target, cache_dir=cache_directory(cache_dir))
    summary = write_report(path, target, formats, logit_axes=logit_axes)
    files = {**summary["files"], **(galleries if "png" in formats else {})}
    return ReportResult(files, float(summary["seconds"]), {**summary, "files": files})
