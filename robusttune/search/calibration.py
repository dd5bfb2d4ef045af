"""Measuring what a sweep's plan rests on (``robusttune.search.plan``), on this machine, cached in
``<cache>/plans/`` (``refresh=True`` measures again):

* **Steps** of each distinct method the space samples (object/context masks need the CAM, refill none drops tokens,
  vanilla FT needs no teacher...) and of the vanilla FT baseline, on the device a trial gets (``Placement`` auto, the
  trial's CPU threads, at most the CPUs here), with random weights (a step's cost does not depend on them) and random
  images (the mini world: its own in-memory images, fetched as a trial fetches them). Each is timed at micro-batches
  8, 16, 32, ... up to the trial's own micro-batch (``batch_size / accum_steps``; with ``resources.workers`` one
  data-parallel process's share, the all-reduce between them not measured): a GPU is launch-bound at small batches,
  so scaling a small batch's time up overestimates it several times. When one call takes longer than
  ``CALIBRATION_CALL_SECONDS`` (a CPU at ViT-B/32) or the next size does not fit in memory, the time at the trial's
  micro-batch comes from the line ``a + b * batch`` through the last two sizes measured; each fit says which was done.
  The trial's own size is timed over calls back to back for about a second, as a trial runs its steps (no wait for
  the device between them). A step is the optimizer's update (with gradient clipping) plus its micro-batches.
* **One evaluation batch** the same way, up to the space's ``eval_batch_size``.
* **The loader**: images/s of the space's training data read as a trial reads it (the mini world: its in-memory
  tensors; ImageNet: the folder or pack reader with the space's ``num_workers``). A loader with workers overlaps the
  step, so the slower of the two bounds the trial; without workers its time adds to the step. Data that is not there
  is "not measured" (and a space whose folders are missing is planned on the datasets' published image counts).
* **The storage's write rate**: one ~64 MB ``torch.save`` through the experiments' atomic write (tmp file, fsync,
  rename) into the cache directory.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from robusttune.cache import atomic_write_json, stable_hash
from robusttune.config import TrainConfig
from robusttune.space import SearchSpace

CALIBRATION_START = 8  # the first micro-batch timed; then doubled up to the trial's own
CALIBRATION_CALL_SECONDS = 2.0  # a size whose call takes longer is the last one timed (then: a line through two sizes)
CALIBRATION_SUSTAIN_SECONDS = 1.0  # the trial's own size is timed over calls back to back for about this long
CALIBRATION_MAX_CALLS = 25
CALIBRATION_VERSION = 4  # part of the cache key: calibrations of an older plan are measured again
LOADER_SECONDS = 20.0  # at most this long reading batches for the loader's rate
WRITE_PROBE_BYTES = 64 * 2**20


def ranks_of(space: SearchSpace) -> int:
    """Data-parallel processes (and devices) per trial."""
    return space.max_workers()


@dataclass
class Fit:
    """Seconds of one call at the micro-batch sizes measured, and the time at ``target`` they give."""

    target: int
    sizes: list[int]
    seconds: list[float]
    oom_at: int | None = None  # the size that did not fit in the device's memory, if any

    @property
    def measured(self) -> bool:
        return self.target in self.sizes

    def line(self) -> tuple[float, float]:
        """``(a, b)`` of ``a + b * batch`` through the last two sizes (one size: through the origin)."""
        if len(self.sizes) == 1:
            return 0.0, self.seconds[0] / self.sizes[0]
        (s1, s2), (t1, t2) = self.sizes[-2:], self.seconds[-2:]
        slope = (t2 - t1) / (s2 - s1)
        if slope <= 0:  # noise, or still launch-bound at both sizes: scale the larger one (an upper bound)
            return 0.0, t2 / s2
        return t1 - slope * s1, slope

    def at(self, batch: int) -> float:
        if batch in self.sizes:
            return self.seconds[self.sizes.index(batch)]
        a, b = self.line()
        return max(a + b * batch, 0.0)

    def describe(self) -> dict[str, Any]:
        a, b = self.line()
        how = "measured at the trial's micro-batch" if self.measured else (
            f"fit a + b*batch on {' and '.join(map(str, self.sizes[-2:]))}, extrapolated to {self.target}"
            if len(self.sizes) > 1 else f"scaled from {self.sizes[0]} to {self.target}")
        return {"how": how, "measured": self.measured, "target": self.target, "sizes": self.sizes,
                "seconds": self.seconds, "a": a, "b": b, "oom_at": self.oom_at}


@dataclass
class Calibration:
    device: str
    threads: int
    step_seconds: dict[str, float]  # per method, at the space's batch size (device time; in-memory fetches included)
    eval_seconds_per_image: float  # at the space's eval batch size
    startup_seconds: float
    parameters: int  # of the fine-tuned classifier
    # per method: Fit.describe of its forward + backward per micro-batch, and update_seconds (AdamW + clipping)
    step_fits: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_fit: dict[str, Any] = field(default_factory=dict)
    batch_timing: str = ""  # "trial micro-batch" when every fit was measured there, else "fit"
    loader: dict[str, Any] = field(default_factory=dict)  # the training data's reader: source, workers, images/s
    measured: bool = True  # False: read from the cache


def _model(space: SearchSpace, cache_dir: Path):
    """The space's classifier with random weights (ImageNet: 1000 random head rows; the mini world: its own), its
    image shape, the task's data when it is in memory (the mini world; else None) and the image transform of
    folders and packs (ImageNet; else None)."""
    if space.task.imagenet is None:
        from robusttune.training.tasks import build_task

        student, task = build_task(space.task, cache_dir)
        return student, task.train.images.shape[1:], task, None
    from robusttune.models.classifier import ImageClassifier
    from robusttune.models.clip import create_clip, image_stats, imagenet_preprocess

    clip, _ = create_clip(space.task.imagenet.model, None)
    mean, std = image_stats(clip)
    head = torch.nn.functional.normalize(torch.randn(1000, clip.visual.output_dim), dim=-1) * 100
    size = clip.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return ImageClassifier(clip.visual, head, mean=mean, std=std), (3, *size), None, imagenet_preprocess(clip)


def _sync(placement) -> None:
    if placement.device.type == "cuda":
        torch.cuda.synchronize(placement.device)


def _release(placement) -> None:
    if placement.device.type == "cuda":
        torch.cuda.empty_cache()


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _timed(call: Callable[[int], None], placement, repeats: int, *, warmed: bool = False) -> tuple[float, float]:
    """``(first call's seconds, seconds per call)`` of ``call(i)``: a first call (a warm-up), then at least ``repeats``
    calls back to back, as a trial runs its steps (no wait for the device between them), for about
    ``CALIBRATION_SUSTAIN_SECONDS``: their mean. A call longer than ``CALIBRATION_CALL_SECONDS`` is timed once more
    only when nothing warmed the model up (``warmed``: a smaller size ran before), else the first call is the time;
    with one call timed, the first counts too, whichever is less (a warm-up only ever adds)."""
    def run(first: int, count: int) -> float:
        _sync(placement)
        started = time.perf_counter()
        for i in range(first, first + count):
            call(i)
        _sync(placement)
        return time.perf_counter() - started

    first = run(0, 1)
    if first > CALIBRATION_CALL_SECONDS:
        if warmed:
            return first, first
        repeats = 1
    elif repeats > 1:
        repeats = max(repeats, min(CALIBRATION_MAX_CALLS, math.ceil(CALIBRATION_SUSTAIN_SECONDS / max(first, 1e-6))))
    seconds = run(1, repeats) / repeats
    return first, seconds if repeats > 1 else min(first, seconds)


def ladder(target: int, start: int = CALIBRATION_START) -> list[int]:
    """The micro-batch sizes tried: ``start``, doubled while below ``target``, then ``target``."""
    sizes, size = [], min(start, target)
    while size < target:
        sizes.append(size)
        size *= 2
    return [*sizes, target]


def fit_sizes(call: Callable[[int, int], None], target: int, placement, *, repeats: int = 3,
              release: Callable[[], None] = lambda: None, trust_first: bool = True) -> Fit:
    """Time ``call(size, i)`` up the ``ladder`` to ``target``, until the target, or until a size's call takes longer
    than ``CALIBRATION_CALL_SECONDS`` (once two sizes are measured), or a size does not fit in the device's memory.
    Sizes below the target are timed once after their warm-up, the target back to back (``_timed``)."""
    sizes: list[int] = []
    seconds: list[float] = []
    oom = None
    for size in ladder(target):
        try:
            warm, median = _timed(lambda i: call(size, i), placement, repeats if size == target else 1,
                                  warmed=bool(sizes) and trust_first)
        except RuntimeError as error:  # torch.cuda.OutOfMemoryError is one
            if not _out_of_memory(error) or not sizes:
                raise
            oom = size
            release()
            break
        sizes.append(size)
        seconds.append(median)
        if len(sizes) >= 2 and warm > CALIBRATION_CALL_SECONDS:
            break
    return Fit(target, sizes, seconds, oom)


def step_chunks(config: TrainConfig, n_train: int, ranks: int = 1) -> list[int]:
    """The micro-batch sizes one process computes in a step: on its own as ``robusttune.training.loop.StepBatches``
    splits the batch; on ``ranks`` data-parallel processes ``accum_steps`` micro-batches of ``batch / (ranks *
    accum_steps)`` each (``robusttune.training.distributed``)."""
    images = min(config.batch_size, n_train)
    if ranks > 1:
        return [max(1, math.ceil(images / (ranks * config.accum_steps)))] * config.accum_steps
    micro = config.batch_size // config.accum_steps
    return [micro] * (images // micro) + ([images % micro] if images % micro else [])


def fit_of(described: dict[str, Any]) -> Fit:
    """A ``Fit`` back from its ``describe()`` (a cached calibration)."""
    return Fit(int(described["target"]), [int(s) for s in described["sizes"]], [float(s) for s in described["seconds"]],
               described.get("oom_at"))


def _fetcher(source, largest: int, shape, classes: int, generator: torch.Generator):
    """``fetch(size, i) -> (uint8 images, labels)``: indexed from an in-memory source inside the timed call, as a
    trial indexes it, or sliced from random images made once."""
    if source is not None and hasattr(source, "images"):
        n = len(source)
        return lambda size, i: source.batch(torch.randint(0, n, (size,), generator=torch.Generator().manual_seed(i)))
    images = torch.randint(0, 256, (largest, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (largest,), generator=generator)
    return lambda size, i: (images[:size], labels[:size])


def _calibrate_method(config: TrainConfig, student, placement, fetch, target: int, steps: int) -> tuple[Fit, float]:
    """A method's forward + backward per micro-batch (a ``Fit`` up to ``target``) and its AdamW update with
    gradient clipping, as ``robusttune.training.loop.train`` runs them."""
    from robusttune.models.classifier import frozen_copy
    from robusttune.method.step import ALL
    from robusttune.training.loop import StepComputer, compiled_blocks, make_optimizer, optimized_parameters, train_only

    model = frozen_copy(student).requires_grad_(True).train()
    teacher = frozen_copy(student)
    computer = StepComputer(config, model, teacher, placement)
    params = optimized_parameters(model, computer.method)  # as the loop trains it: a linear probe, its head alone
    train_only(model, ALL if computer.method.ever_trains_tower else computer.method.trains(0, 1))
    optimizer = make_optimizer(params, config, placement)
    with compiled_blocks(model, teacher, enabled=config.compile):
        return _time_method(config, model, computer, optimizer, params, placement, fetch, target, steps)


def _time_method(config: TrainConfig, model, computer, optimizer, params, placement, fetch, target: int,
                 steps: int) -> tuple[Fit, float]:
    def forward_backward(size: int, i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        images, labels = fetch(size, i)
        loss, _ = computer.loss(model.prepare(images), labels.to(placement.device, non_blocking=True), i)
        loss.backward()

    def release() -> None:
        optimizer.zero_grad(set_to_none=True)
        _release(placement)

    # compiled blocks compile again at each new size: their first call is never a measurement
    fit = fit_sizes(forward_backward, target, placement, repeats=steps, release=release, trust_first=not config.compile)
    forward_backward(fit.sizes[0], 0)  # gradients to update with

    def update(i: int) -> None:
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()

    _, update_seconds = _timed(update, placement, steps)
    return fit, update_seconds


def calibrate(space: SearchSpace, mix: dict[str, tuple[TrainConfig, float]], cache_dir: Path, *, n_train: int,
              steps: int = 3, refresh: bool = False) -> Calibration:
    """Measure (or read from the cache) the steps of ``mix``'s methods (one data-parallel process's share of a step
    when the space's trials run on several), one evaluation batch and the loader."""
    from robusttune.data.packed import usable_cpus
    from robusttune.training.device import Placement

    threads = max(1, min(int(space.resources.cpu), usable_cpus()))  # a trial's threads, on the CPUs that are here
    first = next(iter(mix.values()))[0]
    placement = Placement.of(first.device, first.precision)
    chunks = step_chunks(first, n_train, ranks_of(space))
    key = stable_hash({"version": CALIBRATION_VERSION, "task": space.task.to_dict(), "device": str(placement.device),
                       "dtype": str(placement.dtype), "threads": threads, "chunks": sorted(set(chunks)),
                       "eval_batch": first.eval_batch_size, "methods": sorted(mix), "steps": steps})
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
        student, shape, task, transform = _model(space, cache_dir)
        startup = time.perf_counter() - started
        student.to(placement.device)
        generator = torch.Generator().manual_seed(0)
        target = max(chunks)
        fetch = _fetcher(task.train if task is not None else None, target, shape, student.num_classes, generator)
        step_fits: dict[str, dict[str, Any]] = {}
        step_seconds: dict[str, float] = {}
        for name, (config, _) in mix.items():
            fit, update_seconds = _calibrate_method(config, student, placement, fetch, target, steps)
            step_fits[name] = {**fit.describe(), "update_seconds": update_seconds}
            step_seconds[name] = update_seconds + sum(fit.at(size) for size in chunks)
            _release(placement)
        del fetch
        eval_target = first.eval_batch_size
        if task is not None:  # batches never straddle two sets
            eval_target = min(eval_target, max(len(s) for s in task.eval_sets))
        eval_fetch = _fetcher(task.eval_sets[0].source if task is not None else None, eval_target, shape,
                              student.num_classes, generator)

        def evaluate(size: int, i: int) -> None:
            images, _ = eval_fetch(size, i)
            with torch.inference_mode(), placement.autocast():
                student(student.prepare(images)).argmax(dim=1).cpu()

        student.eval()
        eval_fit = fit_sizes(evaluate, eval_target, placement, repeats=steps, release=lambda: _release(placement))
        del eval_fetch
        loader = measure_loader(space, task, transform, target, placement, cache_dir)
        measured_there = all(f["measured"] for f in step_fits.values()) and eval_fit.measured
        calibration = Calibration(
            str(placement.device), threads, step_seconds, eval_fit.at(eval_target) / eval_target, startup,
            sum(p.numel() for p in student.parameters()), step_fits, eval_fit.describe(),
            "trial micro-batch" if measured_there else "fit", loader)
    finally:
        torch.set_num_threads(previous_threads)
    atomic_write_json(cached, {k: v for k, v in asdict(calibration).items() if k != "measured"})
    return calibration


def measure_loader(space: SearchSpace, task, transform, batch: int, placement, cache_dir: Path) -> dict[str, Any]:
    """Images/s of the space's training data as a trial reads it: the mini world's in-memory tensors (indexed in
    the trial's process), or the ImageNet folder or pack through the trial's loader (``num_workers`` processes,
    pinned memory on a GPU), timed after the first batch (the workers' start) for a few batches of the trial's
    micro-batch (at most 64 images). Missing or unreadable data is "not measured", never a guess."""
    if task is not None:
        source, n = task.train, len(task.train)
        generator = torch.Generator().manual_seed(1)
        batches = [torch.randint(0, n, (batch,), generator=generator) for _ in range(50)]
        started = time.perf_counter()
        for index in batches:
            source.batch(index)
        seconds = time.perf_counter() - started
        return {"source": "in-memory tensors", "num_workers": 0, "overlaps_step": False, "in_step": True,
                "status": "measured", "batch": batch, "images": batch * len(batches),
                "images_per_s": batch * len(batches) / seconds}
    from robusttune.data.packed import is_pack, open_pack, usable_cpus
    from robusttune.data.sets import DatasetImages, Loading, batch_loader, sequential_batches
    from robusttune.errors import DataError
    from robusttune.training.tasks import scan_set

    from robusttune.data.sets import loader_workers

    spec = space.task.imagenet
    workers = loader_workers(spec.num_workers, int(space.resources.cpu))  # as a trial resolves None
    root = Path(spec.train_dir)
    row: dict[str, Any] = {"source": "folder", "path": str(root), "num_workers": workers, "overlaps_step": workers > 0,
                           "in_step": False, "cpus_here": usable_cpus(), "images_per_s": None}
    if not root.exists():
        return {**row, "source": "missing", "status": f"not measured: {root} does not exist"}
    try:
        if is_pack(root):
            row["source"] = f"{open_pack(root).index.get('encoding', 'raw')} pack"
        scanned = scan_set("imagenet", root, cache_dir)
        size = min(batch, 64)
        count = min(scanned.size, size * (1 + max(4, 2 * workers)))
        positions = sorted(torch.randperm(scanned.size, generator=torch.Generator().manual_seed(1))[:count].tolist())
        dataset = DatasetImages(scanned.dataset(transform, positions))
        loader = batch_loader(dataset, sequential_batches(count, size),
                              Loading(workers, pin_memory=placement.pin_memory))
        started, first, images = time.perf_counter(), None, 0
        for batch_images, _ in loader:
            if first is None:
                first = time.perf_counter()  # the workers have started: time the rest
            else:
                images += len(batch_images)
            if time.perf_counter() - started > LOADER_SECONDS:
                break
        del loader
    except (DataError, OSError) as error:
        return {**row, "status": f"not measured: {error}"}
    if not images or first is None:
        return {**row, "status": f"not measured: {root} has too few images for more than one batch"}
    seconds = time.perf_counter() - first
    return {**row, "status": "measured", "batch": size, "images": images, "images_per_s": images / seconds}


def storage_write_rate(cache_dir: Path, *, refresh: bool = False) -> dict[str, Any]:
    """Bytes/s of one ``WRITE_PROBE_BYTES`` checkpoint written as trials write theirs (``save_checkpoint``: tmp
    file, fsync, rename) into the cache directory; measured once and cached."""
    from robusttune.training.checkpoint import save_checkpoint

    folder = Path(cache_dir) / "plans"
    cached = folder / "storage-write.json"
    if cached.is_file() and not refresh:
        try:
            saved = json.loads(cached.read_text())
            if float(saved["bytes_per_s"]) > 0:
                return {**saved, "measured": False}
        except (ValueError, TypeError, KeyError):
            pass
    payload = {"model": {"weights": torch.rand(WRITE_PROBE_BYTES // 4, generator=torch.Generator().manual_seed(0))}}
    probe = folder / "write-probe.pt"
    started = time.perf_counter()
    save_checkpoint(probe, payload)
    seconds = time.perf_counter() - started
    written = probe.stat().st_size
    probe.unlink()
    result = {"path": str(folder), "bytes": written, "seconds": seconds, "bytes_per_s": written / seconds}
    atomic_write_json(cached, result)
    return {**result, "measured": True}

