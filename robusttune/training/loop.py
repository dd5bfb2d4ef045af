"""The fine-tuning loop (no ray/optuna: progress leaves through injected callbacks).

What a step computes is the run's method (``config.method``; ``robusttune.method.registry``: vanilla FT, LP, LP-FT,
L2-SP, FLYP, Lipsum-FT, the paper's masked-image distillation): its loss on each micro-batch, which weights it trains
(and any it trains outside the classifier, e.g. FLYP's text tower, kept in the checkpoints as ``method_state``). The loop
owns the rest, the same for every method: the data order, micro-batches and gradient accumulation, the gradient sum
over data-parallel processes, AdamW (fused on CUDA), warm-up + cosine or OneCycle, gradient clipping (once per step,
after accumulating micro-batches; the official code clips every micro-batch), evaluations and checkpoints.

Randomness is a pure function of ``(seed, step)`` (data order per epoch, a method's draws per step: masks, donors), so a
run resumed from a checkpoint continues exactly as the uninterrupted run would.

A step never waits for the host: the loss and its parts stay on the device (``StepHealth`` keeps whether every loss
was finite, the first step that was not, and the last loss and parts), CPU-drawn masks and donors are copied from
pinned memory without blocking, and the host reads the device once per heartbeat that shows the loss (``Progress``)
and once before each evaluation. A non-finite loss ends the run at the first such read after it, naming the step.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from robusttune.config import Schedule, TrainConfig
from robusttune.data.sets import Loading, TaskData, batch_loader
from robusttune.errors import ConfigError
from robusttune.method.registry import build
from robusttune.method.step import ALL, MethodStep
from robusttune.models.classifier import ImageClassifier
from robusttune.models.vit import checkpointed_blocks
from robusttune.training.device import CPU_FP32, Placement
from robusttune.training.distributed import ALONE, Shard
from robusttune.training.evaluate import Evaluator, subset_evaluator
from robusttune.training.schedule import warmup_cosine

Report = Callable[[dict[str, Any]], None]
OnStep = Callable[[Mapping[str, Any]], None]  # after every optimizer step: a Progress (step, total_steps, epoch, loss...)
SaveCheckpoint = Callable[[dict[str, Any]], None]
Probe = Callable[[ImageClassifier, ImageClassifier, Evaluator], dict[str, Any]]  # (student, teacher, evaluator): row fields

_STEP_SALT = 1_000_003


@dataclass
class TrainResult:
    status: str  # "complete" or "failed"
    metrics: dict[str, float]  # the last evaluation
    history: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None
    steps: int = 0
    method_state: dict[str, Tensor] | None = None  # the method's own trained weights (FLYP's text tower), if any


def total_steps(config: TrainConfig, n_train: int) -> int:
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil(config.epochs * steps_per_epoch(config, n_train)))  # type: ignore[operator]


def steps_per_epoch(config: TrainConfig, n_train: int) -> int:
    return max(1, n_train // config.batch_size)


def epoch_order(config: TrainConfig, n_train: int, epoch: int) -> Tensor:
    """The seeded permutation of the training set for ``epoch``."""
    generator = torch.Generator().manual_seed(config.seed * _STEP_SALT + 7919 * epoch + 1)
    return torch.randperm(n_train, generator=generator, device="cpu")


def batch_indices(config: TrainConfig, n_train: int, step: int, order: Tensor | None = None) -> Tensor:
    """The training indices of ``step``: a fresh seeded permutation per epoch, drop-last batches (``order``: that
    epoch's permutation, when the caller already has it)."""
    epoch, position = divmod(step, steps_per_epoch(config, n_train))
    order = epoch_order(config, n_train, epoch) if order is None else order
    size = min(config.batch_size, n_train)
    return order[position * size : (position + 1) * size]


class StepBatches:
    """The micro-batches of steps ``start .. total - 1`` in order, as index lists: a ``DataLoader`` batch sampler.
    Starting at a resumed step gives exactly the batches the uninterrupted run would have seen. A step is
    ``accum_steps x workers`` micro-batches; this process (``shard``) takes its ``slots`` of them."""

    def __init__(self, config: TrainConfig, n_train: int, start: int, total: int, shard: Shard = ALONE):
        self.config, self.n_train, self.start, self.total, self.shard = config, n_train, start, total, shard
        self.micro = config.batch_size // (config.accum_steps * shard.world)

    @property
    def micro_batches(self) -> int:
        """Micro-batches per step, over every process."""
        return math.ceil(min(self.config.batch_size, self.n_train) / self.micro)

    @property
    def slots(self) -> range:
        """This process's micro-batches of each step (their numbers among ``micro_batches``)."""
        return self.shard.slots(self.micro_batches)

    @property
    def per_step(self) -> int:
        """Micro-batches per step in this process."""
        return len(self.slots)

    def __len__(self) -> int:
        return (self.total - self.start) * self.per_step

    def __iter__(self):
        per_epoch, order = steps_per_epoch(self.config, self.n_train), None
        for step in range(self.start, self.total):
            epoch = step // per_epoch
            if order is None or order[0] != epoch:  # one permutation per epoch, not one per step
                order = (epoch, epoch_order(self.config, self.n_train, epoch))
            chunks = batch_indices(self.config, self.n_train, step, order[1]).split(self.micro)
            for slot in self.slots:
                yield chunks[slot].tolist()


_SLOT_SALT = 7_919_113


def step_generator(config: TrainConfig, step: int, slot: int = 0) -> torch.Generator:
    """The masks' and donors' randomness of micro-batch ``slot`` of ``step`` (slot 0: the whole batch)."""
    return torch.Generator().manual_seed(config.seed * _STEP_SALT + step + 17 + slot * _SLOT_SALT)


def lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to zero. (The official code uses
    PyTorch's OneCycleLR, which also cycles AdamW's beta1; this schedule keeps beta1 fixed.)"""
    return warmup_cosine(step, total, int(round(warmup_fraction * total)))


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, total: int):
    """``cosine``: warm-up then cosine to zero (``lr_factor``). ``onecycle``: exactly the official code's
    ``OneCycleLR(max_lr=lr, pct_start=warmup_fraction, anneal_strategy='cos')`` with PyTorch's defaults, which also
    cycle AdamW's beta1 0.95 -> 0.85 -> 0.95 and end at lr / (25 * 1e4)."""
    if config.schedule is Schedule.ONECYCLE:
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=max(total, 2),
                                                   pct_start=config.warmup_fraction, anneal_strategy="cos")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, config.warmup_fraction))


class StepComputer:
    """Computes one micro-batch's loss with the run's method (``method``); holds no state between steps beyond the
    models. The forwards run under the placement's autocast; the CAM and the losses are computed in fp32."""

    def __init__(self, config: TrainConfig, student: ImageClassifier, teacher: ImageClassifier,
                 placement: Placement = CPU_FP32):
        self.config, self.student, self.teacher, self.placement = config, student, teacher, placement
        self.method: MethodStep = build(config, student, teacher, placement)

    def loss(self, images: Tensor, labels: Tensor, step: int, slot: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of micro-batch ``slot`` of ``step`` and its parts (``loss_task``, and the method's own: e.g.
        ``mask_fraction``, ``loss_distill``), all 0-dim tensors on the device: nothing here waits for the device
        (``StepHealth`` reads them when the host needs them)."""
        return self.method.loss(images, labels, step_generator(self.config, step, slot), step=step)


@dataclass(frozen=True)
class HealthReading:
    """One host read of ``StepHealth``: the first step whose loss was not finite (None: every loss so far was), that
    loss, and the last micro-batch's loss and parts as Python floats."""

    bad_step: int | None
    bad_value: float
    loss: float
    parts: dict[str, float]
    seen: int  # the last step observed before the read

    def failure(self) -> str:
        later = f" (seen at step {self.seen})" if self.seen != self.bad_step else ""
        return f"non-finite loss ({self.bad_value}) at step {self.bad_step}{later}"


NO_BAD_STEP = torch.iinfo(torch.long).max  # StepHealth.bad_step while every loss was finite


class StepHealth:
    """What the host needs to know about the steps, kept on the device so that no step waits for the host.

    ``observe`` (after each micro-batch's loss) only queues a few 0-dim device ops: ``bad_step`` becomes the first
    step whose loss was not finite (``NO_BAD_STEP`` while all were: a ``minimum``, no branch), ``bad_value`` that
    loss, and the last loss and parts are kept as device tensors. ``read`` is the one host read: a single copy of
    these few numbers, which waits for the queued steps to finish. Under data parallelism, all-reduce ``bad_step``
    with MIN (the earliest bad step of any rank) just before ``read``, at the same step on every rank."""

    def __init__(self, device: torch.device):
        self.bad_step = torch.full((), NO_BAD_STEP, dtype=torch.long, device=device)
        self.bad_value = torch.zeros((), device=device)
        self.loss: Tensor = torch.zeros((), device=device)
        self.parts: dict[str, Tensor | float] = {}
        self.step = -1  # the last step observed (the host knows it without asking)
        self.failed: HealthReading | None = None  # the first read that found a non-finite loss

    def observe(self, step: int, loss: Tensor, parts: Mapping[str, Tensor | float]) -> None:
        value = loss.detach().float()
        candidate = torch.where(torch.isfinite(value), NO_BAD_STEP, step)
        self.bad_value = torch.where(candidate < self.bad_step, value, self.bad_value)
        self.bad_step = torch.minimum(self.bad_step, candidate)
        self.loss, self.step = value, step
        self.parts = {k: v.detach() if isinstance(v, Tensor) else float(v) for k, v in parts.items()}

    def read(self) -> HealthReading:
        names = [k for k, v in self.parts.items() if isinstance(v, Tensor)]
        values = torch.stack([self.bad_step.double(), self.bad_value.double(), self.loss.double(),
                              *(self.parts[k].double() for k in names)]).tolist()  # type: ignore[union-attr]
        # ^ the one host read (steps are exact in float64 up to 2**53; NO_BAD_STEP rounds to 2**63)
        read = dict(zip(names, values[3:]))
        parts = {k: read.get(k, v) for k, v in self.parts.items()}
        bad = None if values[0] >= NO_BAD_STEP else int(values[0])
        reading = HealthReading(bad, values[1], values[2], parts, self.step)  # type: ignore[arg-type]
        if bad is not None and self.failed is None:
            self.failed = reading
        return reading


class Progress(Mapping[str, Any]):
    """The row ``on_step`` receives after every optimizer step. ``step``, ``total_steps`` and ``epoch`` are plain
    values; ``loss``, ``images_per_s`` and ``eta_s`` are computed on first access, from one host read of the
    ``StepHealth`` (which waits for the device and also checks every loss so far was finite: a non-finite one ends
    the run right after the call). A callback that reads only ``step`` costs the device nothing, one that reads the
    loss every N seconds (a trial's heartbeat) one host read per N seconds. Read it during the call."""

    KEYS = ("step", "total_steps", "epoch", "loss", "images_per_s", "eta_s")

    def __init__(self, plain: dict[str, Any], measured: Callable[[], dict[str, Any]]):
        self._plain, self._measured, self._values = plain, measured, None

    def __getitem__(self, key: str) -> Any:
        if key in self._plain:
            return self._plain[key]
        if key not in self.KEYS:
            raise KeyError(key)
        if self._values is None:
            self._values = self._measured()
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        return key in self.KEYS

    def __iter__(self) -> Iterator[str]:
        return iter(self.KEYS)

    def __len__(self) -> int:
        return len(self.KEYS)


@contextlib.contextmanager
def compiled_blocks(*models: ImageClassifier, enabled: bool = True) -> Iterator[None]:
    """``torch.compile`` every transformer block of the models' vision towers for the duration, in place (state dicts,
    checkpoints and copies are unchanged; undone on exit). It compiles the passes that run the blocks whole, i.e.
    open_clip's own forward: vanilla FT, the student on refilled images, the teacher, the evaluations; the passes that
    capture attention or drop patches (the CAM's clean pass, refill 'none') run the blocks' parts eagerly."""
    blocks = [block for model in models for block in model.visual.transformer.resblocks] if enabled else []
    for block in blocks:
        block.compile()
    try:
        yield
    finally:
        for block in blocks:
            block._compiled_call_impl = None


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig, placement: Placement) -> torch.optim.AdamW:
    """AdamW, fused on CUDA (one kernel for all parameters, its step counters on the device: no host read)."""
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                             fused=True if placement.device.type == "cuda" else None)


def optimized_parameters(student: ImageClassifier, method: MethodStep) -> list[torch.nn.Parameter]:
    """What the optimizer holds: the method's ``parameters()`` (all of the classifier; a linear probe's head alone;
    FLYP's image and text towers)."""
    student.requires_grad_(True)
    return method.parameters()


def train_only(student: ImageClassifier, trains: str) -> None:
    """Gradients for the weights a step trains (``ALL`` or ``HEAD``): the others get none, so AdamW leaves them."""
    student.visual.requires_grad_(trains == ALL)
    student.head.requires_grad_(True)


def train(
    config: TrainConfig,
    student: ImageClassifier,
    teacher: ImageClassifier,
    task: TaskData,
    *,
    report: Report | None = None,
    save_checkpoint: SaveCheckpoint | None = None,
    resume: dict[str, Any] | None = None,
    placement: Placement | None = None,
    on_step: OnStep | None = None,
    shard: Shard = ALONE,
    probe: Probe | None = None,
) -> TrainResult:
    """Fine-tune ``student`` in place on ``placement`` (default: the config's device and precision). Evaluates (and
    checkpoints) at each epoch end, or every ``eval_every`` steps when that is set, and at the last step; ``report``
    receives every evaluation row; ``on_step`` a ``Progress`` after every step (never an evaluation; its loss is read
    from the device only when the callback asks for it). A non-finite loss ends the run with ``status='failed'`` (the
    process and earlier results survive) at the first host read after it: the next ``Progress`` whose loss is read,
    or before the next evaluation (so never with its weights checkpointed); the failure names the step it happened.
    ``probe``: more measurements for every evaluation row (e.g. the WiSE-FT curve of the current weights), made with
    the evaluation's own evaluator, so on the same images and in a data-parallel run on every rank alike."""
    placement = placement or Placement.of(config.device, config.precision)
    placement.configure()
    with compiled_blocks(student, teacher, enabled=config.compile), \
            checkpointed_blocks(student.visual, enabled=config.checkpoint_blocks):
        return _train(config, student, teacher, task, report, save_checkpoint, resume, placement, on_step, shard, probe)


def _train(config: TrainConfig, student: ImageClassifier, teacher: ImageClassifier, task: TaskData,
           report: Report | None, save_checkpoint: SaveCheckpoint | None, resume: dict[str, Any] | None,
           placement: Placement, on_step: OnStep | None, shard: Shard, probe: Probe | None) -> TrainResult:
    n_train = len(task.train)
    total = total_steps(config, n_train)
    per_epoch = steps_per_epoch(config, n_train)
    student.to(placement.device).train()
    teacher.to(placement.device).eval()
    computer = StepComputer(config, student, teacher, placement)
    params = optimized_parameters(student, computer.method)
    optimizer = make_optimizer(params, config, placement)
    schedule = make_schedule(optimizer, config, total)
    scaler = placement.grad_scaler()
    if config.workers != shard.world:
        raise ConfigError(f"the config trains on workers={config.workers} but this process is one of {shard.world}")
    full = Evaluator(task.eval_sets, batch_size=config.eval_batch_size, placement=placement, num_workers=task.num_workers,
                     shard=shard)
    quick = subset_evaluator(full, config.eval_subset) if config.eval_subset else None
    start, history, elapsed_before = 0, [], 0.0
    own = computer.method.own_weights
    if resume is not None:
        student.load_state_dict(resume["model"])
        if own is not None:
            own.load_state_dict(resume["method_state"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["scheduler"])
        if "scaler" in resume:
            scaler.load_state_dict(resume["scaler"])
        start, history = int(resume["step"]), json.loads(resume["history"])
        elapsed_before = float(resume.get("elapsed", 0.0))
    started = time.perf_counter()
    metrics: dict[str, float] = history[-1]["metrics"] if history else {}

    def evaluation(step: int, loss_parts: dict[str, float]) -> None:
        nonlocal metrics
        computer.method.before_evaluation()
        evaluator = full if step >= total or quick is None else quick  # the last evaluation: always the full sets
        timed = time.perf_counter()
        metrics = evaluator(student)
        probed = probe(student, teacher, evaluator) if probe is not None else {}
        row = {"step": step, "epoch": round(step / per_epoch, 4), "metrics": metrics,
               "elapsed": round(elapsed_before + time.perf_counter() - started, 3), "eval_images": dict(evaluator.sizes),
               **({"eval_subset": config.eval_subset} if evaluator is quick else {}), **loss_parts, **probed,
               "eval_s": round(time.perf_counter() - timed, 4)}  # the evaluation's own seconds (training/cost.py)
        history.append(row)
        if save_checkpoint is not None:
            state = {"model": student.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                     "step": step, "total_steps": total, "history": json.dumps(history),
                     "config": json.dumps(config.to_dict()), "elapsed": row["elapsed"],
                     **({"method_state": own.state_dict()} if own is not None else {})}
            save_checkpoint({**state, "scaler": scaler.state_dict()} if scaler.is_enabled() else state)
        if report is not None:
            report({**row, **metrics})

    def failed(reading: HealthReading) -> TrainResult:
        step, failure = reading.bad_step, reading.failure()
        if report is not None:
            report({"step": step, "epoch": round(step / per_epoch, 4), "status": "failed", "failure": failure})
        return TrainResult("failed", metrics, history, failure=failure, steps=step)  # type: ignore[arg-type]

    def measured(done: int) -> dict[str, Any]:
        reading = health.read()
        seconds = time.perf_counter() - started  # this process's share: training and its evaluations so far
        return {"loss": reading.loss, "images_per_s": round((done - start) * min(config.batch_size, n_train) / seconds, 1),
                "eta_s": round((total - done) * seconds / (done - start), 1)}

    if total == 0:
        evaluation(0, {})
        return TrainResult("complete", metrics, history, steps=0, method_state=own and own.state_dict())
    sampler = StepBatches(config, n_train, start, total, shard)
    batches = iter(batch_loader(task.train, sampler, Loading(task.num_workers, pin_memory=placement.pin_memory)))
    health = StepHealth(placement.device)
    stage = None
    for step in range(start, total):
        trains = computer.method.trains(step, total)  # a function of the step: a resumed run trains the same
        if trains != stage:
            stage = trains
            train_only(student, stage)
            active = [p for p in params if p.requires_grad]
        optimizer.zero_grad(set_to_none=True)
        for slot in sampler.slots:
            images, labels = next(batches)
            images, labels = placement.upload(images), placement.upload(labels)  # pinned, non-blocking
            loss, parts = computer.loss(student.prepare(images), labels, step, slot)
            health.observe(step, loss, parts)  # on the device: the host reads it at heartbeats and evaluations
            scaler.scale(loss / (config.accum_steps * shard.world)).backward()
        shard.sum_gradients(active)  # data parallel: every process now holds the whole step's gradient
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients (a no-op unless fp16)
            torch.nn.utils.clip_grad_norm_(active, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        done = step + 1
        if on_step is not None:
            on_step(Progress({"step": done, "total_steps": total, "epoch": round(done / per_epoch, 4)},
                             lambda done=done: measured(done)))
            # one process alone must not end a data-parallel run (the others would wait for it at the next
            # all-reduce): there, every rank fails together at the next evaluation (``shard.earliest``)
            if health.failed is not None and not shard.distributed:
                return failed(health.failed)
        due = done % config.eval_every == 0 if config.eval_every else done % per_epoch == 0
        if done == total or due:
            shard.earliest(health.bad_step)  # every process fails at the same evaluation, or none does
            reading = health.read()
            if reading.bad_step is not None:
                return failed(reading)
            evaluation(done, {"lr": schedule.get_last_lr()[0], **reading.parts})
    return TrainResult("complete", metrics, history, steps=total, method_state=own and own.state_dict())
