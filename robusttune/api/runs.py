"""Single runs, no search: ``train``, ``wise`` and the mini world's reference ``baselines``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robusttune.api.common import cache_directory, check_out_dir, check_out_file, set_threads
from robusttune.bounds import at_least, check_alphas, check_threads
from robusttune.config import TaskSpec, TrainConfig, parse
from robusttune.errors import ConfigError, DataError
from robusttune.experiment import RunFiles
from robusttune.metrics import is_metric


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


def train(config: TrainConfig | Mapping[str, Any] | None = None, *, out: str | os.PathLike[str],
          task: TaskSpec | Mapping[str, Any] | None = None, cache_dir: str | os.PathLike[str] | None = None,
          resume: bool = False, overwrite: bool = False, threads: int | None = None,
          on_evaluation: Callable[[dict[str, Any]], None] | None = None) -> TrainSummary:
    """Fine-tune once (the mini world unless ``task`` names ImageNet folders), writing into ``out`` the files of
    ``robusttune.experiment.RunFiles``: ``config.json``, ``metrics.jsonl`` (one row per evaluation),
    ``checkpoint.pt`` (latest, resumable), ``final.pt`` (weights, config and task) and ``summary.json``.
    ``resume`` continues from ``checkpoint.pt``. With ``workers > 1`` in the config the run trains on that many
    local Ray Train workers (data parallel; rank 0 writes the files; ``on_evaluation`` is not called)."""
    config = config if isinstance(config, TrainConfig) else parse(TrainConfig, dict(config or {}), "train config")
    spec = task if isinstance(task, TaskSpec) else parse(TaskSpec, dict(task or {}), "task")
    out = Path(out)
    if config.workers > 1:
        from robusttune.training.device import data_parallel_gpus

        data_parallel_gpus(config.workers, config.device)  # N GPUs, or device cpu said: refused before anything
    cache = cache_directory(cache_dir)
    check_threads(threads)
    check_out_dir(out, resume=resume, overwrite=overwrite)
    if not resume:
        RunFiles(out).checkpoint.unlink(missing_ok=True)  # a fresh run (overwrite) never continues another's checkpoint
    if config.workers > 1:
        from robusttune.search.data_parallel import train_on_workers
        train_on_workers(config.to_dict(), spec.to_dict(), str(cache), str(out), threads=threads)
    else:
        from robusttune.training.train_dir import train_into

        set_threads(threads)
        train_into(config, spec, cache, out, on_evaluation=on_evaluation)
    return TrainSummary.read(out)


def wise(finetuned: str | os.PathLike[str], *, zero_shot: str | os.PathLike[str] | None = None,
         alphas: Sequence[float] | None = None, out: str | os.PathLike[str] | None = None,
         cache_dir: str | os.PathLike[str] | None = None, threads: int | None = None, device: str = "auto",
         precision: str = "auto") -> list[dict[str, Any]]:
    """The WiSE-FT curve of a ``train`` run's ``final.pt``: one row ``{alpha, metric: accuracy, ...}`` per alpha,
    evaluated on ``device`` under ``precision`` (as ``TrainConfig``'s keys), also written to ``out`` as JSON lines
    when given. ``zero_shot``: the weights at alpha 0 (default: the task's own zero-shot model); a checkpoint that
    carries its task must carry ``finetuned``'s. Weights holding NaN/inf are refused before anything is evaluated."""
    from robusttune.method.wise import DEFAULT_ALPHAS
    from robusttune.training.checkpoint import load_checkpoint
    from robusttune.training.device import Placement
    from robusttune.training.evaluate import Evaluator
    from robusttune.training.tasks import build_task
    from robusttune.training.wise import check_same_task, checkpoint_weights, wise_curve

    alphas = check_alphas(DEFAULT_ALPHAS if alphas is None else alphas)
    check_threads(threads)
    target = Path(out) if out is not None else None
    if target is not None:
        check_out_file(target)
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
    rows = wise_curve(model, base, weights, evaluator, alphas=alphas)
    if target is not None:
        from robusttune.cache import atomic_write_text

        atomic_write_text(target, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


# The fixed reference runs of ``baselines`` on the mini world, side by side.
BASELINE_RUNS: tuple[tuple[str, dict], ...] = (
    ("zero-shot", {"steps": 0, "method": {"name": "ft"}}),
    ("vanilla FT", {"method": {"name": "ft"}}),
    ("FT + FD (clean)", {"method": {"name": "masked_distill", "region": "none", "w_distill": 1.0}}),
    ("FT + FD (object mask, single fill)", {"method": {"name": "masked_distill", "region": "object", "refill": "single",
                                                       "mask_threshold": 0.3, "w_distill": 1.0}}),
)
VANILLA_RUN = "vanilla FT"
WISE_ROW = "WiSE-FT of vanilla FT (alpha 0.5)"


@dataclass(frozen=True)
class BaselinesResult:
    """The mini world's reference runs: one row ``{method, metric: accuracy, ...}`` per run (and vanilla FT's
    WiSE-FT at alpha 0.5), the folder of their runs, and where the tiny CLIP's weights came from."""

    rows: list[dict[str, Any]]
    out: Path
    seconds: float
    threads: int
    weights_source: str

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "out": str(self.out), "seconds": self.seconds}


def run_dir_name(method: str) -> str:
    """A run's folder under the baselines' ``out`` (``FT + FD (clean)`` -> ``ft_plus_fd_clean``)."""
    return method.lower().replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("+", "plus")


def baselines(*, out: str | os.PathLike[str], steps: int = 150, seed: int = 0,
              cache_dir: str | os.PathLike[str] | None = None, threads: int | None = None,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> BaselinesResult:
    """Zero-shot, vanilla FT, its WiSE-FT at alpha 0.5, and feature distillation on clean and on object-masked
    images, trained ``steps`` steps each from ``seed`` into ``out/<run>`` on the mini world; ``on_row`` gets each
    row as it is ready."""
    import torch

    from robusttune.config import default_world
    from robusttune.training.checkpoint import load_checkpoint
    from robusttune.training.wise import wise_curve
    from robusttune.training.world import prepare_world

    at_least("steps", steps, 1)
    check_threads(threads)
    started = time.perf_counter()
    out = Path(out)
    check_out_dir(out, resume=False, overwrite=False)
    cache = cache_directory(cache_dir)
    prepared = prepare_world(default_world(), cache)
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for name, overrides in BASELINE_RUNS:
        config = parse(TrainConfig, {**overrides, "steps": overrides.get("steps", steps), "seed": seed},
                       f"baseline run '{name}'")
        run_dir = out / run_dir_name(name)
        summary = train(config, task=TaskSpec(), out=run_dir, cache_dir=cache, threads=threads)
        add({"method": name, **summary.metrics})
        if name == VANILLA_RUN:
            model, task = prepared.classifier(), prepared.task()
            zero_shot = {k: v.clone() for k, v in model.state_dict().items()}
            finetuned = load_checkpoint(RunFiles(run_dir).final)["model"]
            (wise_row,) = wise_curve(model, zero_shot, finetuned, task.eval_sets, alphas=(0.5,))
            add({"method": WISE_ROW, **{k: v for k, v in wise_row.items() if k != "alpha"}})
    return BaselinesResult(rows, out, round(time.perf_counter() - started, 1), torch.get_num_threads(), prepared.source)
