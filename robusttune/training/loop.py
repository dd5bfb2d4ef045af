"""The counterfactual fine-tuning loop (no ray/optuna: progress leaves through injected callbacks).

Per step, on a batch ``(x, y)``:
1. one student forward on the clean images, capturing what the CAM needs; cross-entropy on its logits;
2. the CAM for the true labels: one ``torch.autograd.grad`` of ``sum(logit[y])`` to the captured
   activations (no parameter gradients);
3. a patch mask (object / context / random, threshold or ratio form) and a refill (none / single / multi);
4. the frozen teacher's features (or logits) on the counterfactual images under ``inference_mode``, the
   student's on the same images (reusing the clean forward when there is no mask);
5. ``loss = w_task * CE + w_distill * distill``; AdamW, warm-up + cosine or OneCycle, gradient clipping (once per
   step, after accumulating micro-batches; the official code clips every micro-batch).

Randomness is a pure function of ``(seed, step)`` (data order per epoch, masks and donors per step), so a
run resumed from a checkpoint continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robusttune.config import CamMethod, DistillKind, DistillNorm, Refill, Region, Schedule, TrainConfig, Trainable
from robusttune.data.sets import Loading, TaskData, batch_loader
from robusttune.method import cam as cam_lib
from robusttune.method import losses, masking, refill
from robusttune.models.classifier import ImageClassifier
from robusttune.training.device import CPU_FP32, Placement
from robusttune.training.evaluate import Evaluator, subset_evaluator
from robusttune.training.schedule import warmup_cosine

Report = Callable[[dict[str, Any]], None]
OnStep = Callable[[dict[str, Any]], None]  # after every optimizer step: step, total_steps, loss, images_per_s, eta_s
SaveCheckpoint = Callable[[dict[str, Any]], None]

_STEP_SALT = 1_000_003


@dataclass
class TrainResult:
    status: str  # "complete" or "failed"
    metrics: dict[str, float]  # the last evaluation
    history: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None
    steps: int = 0


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
    Starting at a resumed step gives exactly the batches the uninterrupted run would have seen."""

    def __init__(self, config: TrainConfig, n_train: int, start: int, total: int):
        self.config, self.n_train, self.start, self.total = config, n_train, start, total
        self.micro = config.batch_size // config.accum_steps

    @property
    def per_step(self) -> int:
        """Micro-batches per step."""
        return math.ceil(min(self.config.batch_size, self.n_train) / self.micro)

    def __len__(self) -> int:
        return (self.total - self.start) * self.per_step

    def __iter__(self):
        per_epoch, order = steps_per_epoch(self.config, self.n_train), None
        for step in range(self.start, self.total):
            epoch = step // per_epoch
            if order is None or order[0] != epoch:  # one permutation per epoch, not one per step
                order = (epoch, epoch_order(self.config, self.n_train, epoch))
            for chunk in batch_indices(self.config, self.n_train, step, order[1]).split(self.micro):
                yield chunk.tolist()


def step_generator(config: TrainConfig, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed * _STEP_SALT + step + 17)


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
    """Computes one step's loss; holds no state between steps beyond the models. The forwards run under the
    placement's autocast; the CAM and the losses are computed in fp32."""

    def __init__(self, config: TrainConfig, student: ImageClassifier, teacher: ImageClassifier,
                 placement: Placement = CPU_FP32):
        self.config, self.student, self.teacher, self.placement = config, student, teacher, placement

    def cam(self, clean, labels: Tensor) -> Tensor:
        score = clean.logits.float().gather(1, labels[:, None]).sum()
        if self.config.cam is CamMethod.RELEVANCE:
            grads = torch.autograd.grad(score, clean.vit.attentions, retain_graph=True)
            return cam_lib.attention_relevance([a.detach() for a in clean.vit.attentions], list(grads))
        (grad,) = torch.autograd.grad(score, clean.vit.last_ln1_tokens, retain_graph=True)
        return cam_lib.grad_cam(clean.vit.last_ln1_tokens.detach(), grad)

    def patch_mask(self, cam: Tensor | None, batch: int, patches: int, g: torch.Generator) -> Tensor:
        c = self.config
        region = c.region
        scores = cam if cam is not None else torch.zeros(batch, patches, device=self.student.device)
        if c.mask_ratio is not None:
            return masking.ratio_mask(scores, region, c.mask_ratio, g)
        # random + no fill keeps an exact count of patches, as the official code does (it drops tokens by gather)
        return masking.threshold_mask(scores, region, c.mask_threshold, g,  # type: ignore[arg-type]
                                      exact_count=c.refill is Refill.NONE)

    def counterfactual(self, images: Tensor, mask: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """The counterfactual images and, for refill 'none', the patches to drop from attention."""
        if self.config.refill is Refill.NONE:
            return images, mask
        batch, patches = mask.shape
        if self.config.refill is Refill.SINGLE:
            donors = refill.single_donors(batch, g)
        else:
            donors = refill.multi_donors(batch, patches, g)
        return refill.refill(images, mask, donors, self.student.patch_size), None

    def distill_loss(self, student_out, teacher_out) -> Tensor:
        c = self.config
        if c.distill is DistillKind.LOGIT:
            return losses.logit_kd(student_out.logits.float(), teacher_out.logits, temperature=c.kd_temperature)
        return losses.feature_mse(student_out.features.float(), teacher_out.features,
                                  normalise=c.distill_norm is DistillNorm.VARIANCE)

    def loss(self, images: Tensor, labels: Tensor, step: int) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        g = step_generator(c, step)
        with self.placement.autocast():
            clean = self.student.run(images, cam=c.cam if c.uses_cam else None)
        task = F.cross_entropy(clean.logits.float(), labels)
        parts = {"loss_task": float(task.detach())}
        loss = c.w_task * task
        if c.w_distill > 0:
            drop = None
            if c.region is Region.NONE:
                cf_images, student_cf = images, clean  # distil on the clean images: reuse the clean forward
            else:
                cam = self.cam(clean, labels) if c.uses_cam else None
                mask = self.patch_mask(cam, images.shape[0], self._patches(), g)
                parts["mask_fraction"] = float(mask.float().mean())
                cf_images, drop = self.counterfactual(images, mask, g)
                with self.placement.autocast():
                    student_cf = self.student.run(cf_images, drop_patches=drop)
            with torch.inference_mode(), self.placement.autocast():
                teacher_cf = self.teacher.run(cf_images, drop_patches=drop)
            # inference tensors cannot be saved for backward: take plain (fp32) copies for the loss
            teacher_cf.features, teacher_cf.logits = teacher_cf.features.float().clone(), teacher_cf.logits.float().clone()
            distill = self.distill_loss(student_cf, teacher_cf)
            parts["loss_distill"] = float(distill.detach())
            loss = loss + c.w_distill * distill
        return loss, parts

    def _patches(self) -> int:
        h, w = self.student.grid_size
        return h * w


def _trainable_parameters(student: ImageClassifier, config: TrainConfig) -> list[torch.nn.Parameter]:
    if config.trainable is Trainable.HEAD:
        student.visual.requires_grad_(False)
        return list(student.head.parameters())
    student.requires_grad_(True)
    return list(student.parameters())


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
) -> TrainResult:
    """Fine-tune ``student`` in place on ``placement`` (default: the config's device and precision). Evaluates (and
    checkpoints) at each epoch end, or every ``eval_every`` steps when that is set, and at the last step; ``report``
    receives every evaluation row; ``on_step`` a light progress row after every step (never an evaluation). A
    non-finite loss ends the run with ``status='failed'`` (the process and earlier results survive)."""
    placement = placement or Placement.of(config.device, config.precision)
    n_train = len(task.train)
    total = total_steps(config, n_train)
    per_epoch = steps_per_epoch(config, n_train)
    student.to(placement.device).train()
    teacher.to(placement.device).eval()
    params = _trainable_parameters(student, config)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = make_schedule(optimizer, config, total)
    scaler = placement.grad_scaler()
    computer = StepComputer(config, student, teacher, placement)
    full = Evaluator(task.eval_sets, batch_size=config.eval_batch_size, placement=placement, num_workers=task.num_workers)
    quick = subset_evaluator(full, config.eval_subset) if config.eval_subset else None
    start, history, elapsed_before = 0, [], 0.0
    if resume is not None:
        student.load_state_dict(resume["model"])
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
        evaluator = full if step >= total or quick is None else quick  # the last evaluation: always the full sets
        metrics = evaluator(student)
        row = {"step": step, "epoch": round(step / per_epoch, 4), "metrics": metrics,
               "elapsed": round(elapsed_before + time.perf_counter() - started, 3), "eval_images": dict(evaluator.sizes),
               **({"eval_subset": config.eval_subset} if evaluator is quick else {}), **loss_parts}
        history.append(row)
        if save_checkpoint is not None:
            state = {"model": student.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                     "step": step, "history": json.dumps(history), "config": json.dumps(config.to_dict()),
                     "elapsed": row["elapsed"]}
            save_checkpoint({**state, "scaler": scaler.state_dict()} if scaler.is_enabled() else state)
        if report is not None:
            report({**row, **metrics})

    if total == 0:
        evaluation(0, {})
        return TrainResult("complete", metrics, history, steps=0)
    sampler = StepBatches(config, n_train, start, total)
    batches = iter(batch_loader(task.train, sampler, Loading(task.num_workers, pin_memory=placement.pin_memory)))
    parts: dict[str, float] = {}
    for step in range(start, total):
        optimizer.zero_grad(set_to_none=True)
        parts = {}
        for _ in range(sampler.per_step):
            images, labels = next(batches)
            loss, parts = computer.loss(student.prepare(images), labels.to(placement.device, non_blocking=True), step)
            if not torch.isfinite(loss):
                failure = f"non-finite loss ({float(loss.detach())}) at step {step}"
                if report is not None:
                    report({"step": step, "epoch": round(step / per_epoch, 4), "status": "failed", "failure": failure})
                return TrainResult("failed", metrics, history, failure=failure, steps=step)
            scaler.scale(loss / config.accum_steps).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients (a no-op unless fp16)
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        done = step + 1
        if on_step is not None:
            seconds = time.perf_counter() - started  # this process's share: training and its evaluations so far
            rate = (done - start) * min(config.batch_size, n_train) / seconds
            on_step({"step": done, "total_steps": total, "epoch": round(done / per_epoch, 4), "loss": float(loss.detach()),
                     "images_per_s": round(rate, 1), "eta_s": round((total - done) * seconds / (done - start), 1)})
        due = done % config.eval_every == 0 if config.eval_every else done % per_epoch == 0
        if done == total or due:
            evaluation(done, {"lr": schedule.get_last_lr()[0], **parts})
    return TrainResult("complete", metrics, history, steps=total)
