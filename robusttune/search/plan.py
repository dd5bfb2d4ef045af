"""What a sweep will cost, before it runs: device-hours per trial and for the sweep, the share spent evaluating,
the storage, and what the early-stopping scheduler is expected to save.

The plan rests on a short calibration on this machine's device (``Placement`` auto, the trial's CPU threads): a few
training steps of each distinct method the space samples (object/context masks need the CAM, refill none drops
tokens, vanilla FT needs no teacher...), timed on a micro-batch of random images and scaled to the batch size, and
one evaluation batch. Models are built with random weights: the cost of a step does not depend on the weights.
Data loading is assumed to keep up (see ``benchmarks/data_throughput.py``). Calibrations are cached per
(task, device, threads, batch) in ``<cache>/plans/``; ``calibrate=True`` measures again.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from robusttune.cache import atomic_write_json, stable_hash
from robusttune.config import TrainConfig
from robusttune.space import SearchSpace

MIX_SAMPLES = 256  # configurations drawn from the space to weigh its methods
CALIBRATION_MICRO_BATCH = 32


def method_key(config: TrainConfig) -> str:
    """What decides a step's cost: the passes it makes."""
    if config.w_distill == 0:
        return f"vanilla-{config.trainable.value}"
    if config.region.value == "none":
        return f"fd-clean-{config.distill.value}"
    cam = config.cam.value if config.uses_cam else "no-cam"
    return f"{config.region.value if config.uses_cam else 'random'}-{config.refill.value}-{cam}-{config.distill.value}"


def method_mix(space: SearchSpace, samples: int = MIX_SAMPLES) -> dict[str, tuple[TrainConfig, float]]:
    """Each method's share of the space under uniform sampling, with one configuration of it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, TrainConfig] = {}
    counts: Counter[str] = Counter()
    for _ in range(samples if space.parameters else 1):
        trial = study.ask()
        space.define_by_run(trial)
        config = space.trial_config(dict(trial.params), seed=0)
        key = method_key(config)
        seen.setdefault(key, config)
        counts[key] += 1
    total = sum(counts.values())
    return {key: (seen[key], counts[key] / total) for key in sorted(counts)}


def _evaluation_grid(config: TrainConfig, n_train: int) -> tuple[int, int]:
    """``(total steps, steps between evaluations)`` of a trial (as ``robusttune.training.loop`` decides them)."""
    from robusttune.training.loop import steps_per_epoch, total_steps

    return total_steps(config, n_train), config.eval_every or steps_per_epoch(config, n_train)


def evaluation_count(config: TrainConfig, n_train: int) -> int:
    """How many evaluations a trial makes: at every multiple of its interval and at the last step (once when it
    trains no step). Arithmetic: the cost does not grow with ``steps``."""
    total, every = _evaluation_grid(config, n_train)
    return total // every + (total % every != 0) if total else 1


def evaluation_steps(config: TrainConfig, n_train: int) -> list[int]:
    """The steps at which a trial evaluates (as ``robusttune.training.loop`` does). A list as long as the trial has
    evaluations: the plan itself only needs ``evaluation_count``."""
    total, every = _evaluation_grid(config, n_train)
    if not total:
        return [0]
    return [*range(every, total + 1, every), *([total] if total % every else [])]


def _rung_count(grace: int, eta: float, horizon: int) -> int:
    """How many rungs ``grace * eta**k`` (k = 0, 1, ...) lie below ``horizon`` (> grace): by logarithm, then
    checked exactly, so an ``eta`` close to 1 costs no more than a large one."""
    count = max(1, math.ceil(math.log(horizon / grace) / math.log(eta)))
    while grace * eta**count < horizon:
        count += 1
    while count > 1 and grace * eta ** (count - 1) >= horizon:
        count -= 1
    return count


def scheduler_fraction(space: SearchSpace, evaluations: int) -> float:
    """Expected share of a full trial that a trial runs under ASHA / MO-ASHA: past rung k, a 1/eta of the trials
    go on (rungs at grace * eta^k evaluations, below the trial's length).

    Between rungs k and k + 1 the survivors (eta^-(k+1) of the trials) run grace * eta^k * (eta - 1) evaluations:
    grace * (1 - 1/eta) whatever k, so the sum has a closed form and costs nothing however many rungs there are."""
    config = space.scheduler
    if config.name == "none" or evaluations <= config.grace_period:
        return 1.0
    horizon = min(evaluations, config.max_t or evaluations)
    grace, eta = config.grace_period, config.reduction_factor
    rungs = _rung_count(grace, eta, horizon)
    last = grace * eta ** (rungs - 1)
    expected = grace + (rungs - 1) * grace * (1 - 1 / eta) + eta ** -rungs * (evaluations - last)
    return expected / evaluations


@dataclass
class Calibration:
    device: str
    threads: int
    step_seconds: dict[str, float]  # per method, at the space's batch size
    eval_seconds_per_image: float
    startup_seconds: float
    parameters: int  # of the fine-tuned classifier
    measured: bool = True  # False: read from the cache


@dataclass
class Plan:
    space: str
    trials: int
    concurrency: int
    steps_per_trial: int
    evaluations_per_trial: int
    eval_images_per_trial: int
    trial_hours: float
    sweep_hours: float  # device-hours, after the scheduler's expected saving
    wall_hours: float  # at the space's concurrency
    eval_share: float
    scheduler_saving: float
    storage_bytes_per_trial: int
    storage_bytes: int
    methods: dict[str, float]  # share of each method
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sizes(space: SearchSpace, cache_dir: Path) -> tuple[int, int, dict[str, int]]:
    """Training images, classes and each evaluation set's size, without building the model."""
    if space.task.imagenet is None:
        from robusttune.training.tasks import build_task

        _, task = build_task(space.task, cache_dir)
        return len(task.train), task.num_classes, {s.metric: len(s) for s in task.eval_sets}
    from robusttune.training.tasks import scan_set

    spec = space.task.imagenet
    train = scan_set("imagenet", spec.train_dir, cache_dir)
    sizes = {"id_val_acc": spec.val_holdout, "id_acc": scan_set("imagenet", spec.val_dir, cache_dir).size}
    sizes |= {f"ood_{name.value}": scan_set(name.value, path, cache_dir).size for name, path in spec.ood_dirs.items()}
    return train.size - spec.val_holdout, 1000, sizes


def _model(space: SearchSpace, cache_dir: Path):
    """The space's classifier with random weights (ImageNet: 1000 random head rows; the mini world: its own)."""
    if space.task.imagenet is None:
        from robusttune.training.tasks import build_task

        student, task = build_task(space.task, cache_dir)
        return student, task.train.images.shape[1:]
    from robusttune.models.classifier import ImageClassifier
    from robusttune.models.clip import create_clip, image_stats

    clip, _ = create_clip(space.task.imagenet.model, None)
    mean, std = image_stats(clip)
    head = torch.nn.functional.normalize(torch.randn(1000, clip.visual.output_dim), dim=-1) * 100
    size = clip.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return ImageClassifier(clip.visual, head, mean=mean, std=std), (3, *size)


def calibrate(space: SearchSpace, mix: dict[str, tuple[TrainConfig, float]], cache_dir: Path, *, steps: int = 3,
              refresh: bool = False) -> Calibration:
    from robusttune.models.classifier import frozen_copy
    from robusttune.training.device import Placement
    from robusttune.training.loop import StepComputer

    threads = max(1, int(space.resources.cpu))
    first = next(iter(mix.values()))[0]
    placement = Placement.of(first.device, first.precision)
    key = stable_hash({"task": space.task.to_dict(), "device": str(placement.device), "dtype": str(placement.dtype),
                       "threads": threads, "batch": first.batch_size, "eval_batch": first.eval_batch_size,
                       "methods": sorted(mix), "steps": steps})
    cached = Path(cache_dir) / "plans" / f"calibration-{key}.json"
    if cached.is_file() and not refresh:
        try:
            return Calibration(**{**json.loads(cached.read_text()), "measured": False})
        except (ValueError, TypeError):
            pass  # unreadable: measure again
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        student, shape = _model(space, cache_dir)
        startup = time.perf_counter() - started
        student.to(placement.device)
        generator = torch.Generator().manual_seed(0)
        micro = min(first.batch_size, CALIBRATION_MICRO_BATCH)
        images = torch.randint(0, 256, (micro, *shape), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, student.num_classes, (micro,), generator=generator).to(placement.device)
        step_seconds = {}
        for name, (config, _) in mix.items():
            model = frozen_copy(student).requires_grad_(True).train()
            computer = StepComputer(config, model, frozen_copy(student), placement)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
            times = []
            for step in range(steps + 1):  # the first one warms up
                _sync(placement)
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss, _ = computer.loss(model.prepare(images), labels, step)
                loss.backward()
                optimizer.step()
                _sync(placement)
                times.append(time.perf_counter() - t0)
            step_seconds[name] = statistics.median(times[1:]) * first.batch_size / micro
        eval_micro = min(first.eval_batch_size, CALIBRATION_MICRO_BATCH * 2)
        eval_images = torch.randint(0, 256, (eval_micro, *shape), dtype=torch.uint8, generator=generator)
        times = []
        with torch.inference_mode():
            for _ in range(steps + 1):
                _sync(placement)
                t0 = time.perf_counter()
                with placement.autocast():
                    student(student.prepare(eval_images)).argmax(dim=1).cpu()
                _sync(placement)
                times.append(time.perf_counter() - t0)
        calibration = Calibration(str(placement.device), threads, step_seconds, statistics.median(times[1:]) / eval_micro,
                                  startup, sum(p.numel() for p in student.parameters()))
    finally:
        torch.set_num_threads(previous_threads)
    atomic_write_json(cached, {k: v for k, v in asdict(calibration).items() if k != "measured"})
    return calibration


def _sync(placement) -> None:
    if placement.device.type == "cuda":
        torch.cuda.synchronize(placement.device)


def plan(space: SearchSpace, cache_dir: Path, *, trials: int | None = None, calibrate_again: bool = False) -> Plan:
    mix = method_mix(space)
    n_train, classes, eval_sizes = _sizes(space, cache_dir)
    config = next(iter(mix.values()))[0]
    if config.train_subset is not None:  # per class: an upper bound when some class has fewer images
        n_train = (round(config.train_subset * n_train) if config.train_subset < 1
                   else min(n_train, int(config.train_subset) * classes))
    calibration = calibrate(space, mix, cache_dir, refresh=calibrate_again)
    evaluations = evaluation_count(config, n_train)
    full_images = sum(eval_sizes.values())
    subset_images = sum(min(n, config.eval_subset) for n in eval_sizes.values()) if config.eval_subset else full_images
    eval_images = subset_images * (evaluations - 1) + full_images
    from robusttune.training.loop import total_steps

    steps = total_steps(config, n_train)
    train_s = sum(share * steps * calibration.step_seconds[name] for name, (_, share) in mix.items())
    eval_s = eval_images * calibration.eval_seconds_per_image
    trial_s = calibration.startup_seconds + train_s + eval_s
    fraction = scheduler_fraction(space, evaluations)
    trials = trials or space.budget.trials
    sweep_s = trials * (calibration.startup_seconds + fraction * (train_s + eval_s))
    weights = calibration.parameters * 4
    # a running trial holds its latest checkpoint (weights + AdamW's two moments) and best weights; an ended one what
    # its policy keeps
    kept = {"all": 4 * weights, "best": 2 * weights, "final": weights}[config.checkpoints.value]
    concurrency = min(space.budget.concurrency, trials)
    return Plan(space.name, trials, concurrency, steps, evaluations, eval_images, trial_s / 3600, sweep_s / 3600,
                sweep_s / 3600 / concurrency, eval_s / (train_s + eval_s), 1 - fraction, kept,
                (trials - concurrency) * kept + concurrency * 4 * weights,
                {name: share for name, (_, share) in mix.items()}, asdict(calibration))
