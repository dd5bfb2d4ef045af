"""Accuracy on the ID and OOD evaluation sets (batched, no grad, deterministic), on the run's device and precision."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import torch
from torch.utils.data import ConcatDataset

from robusttune import progress
from robusttune.data.sets import EvalSet, Loading, TensorImages, batch_loader, fixed_subset, restrict, sequential_batches
from robusttune.errors import DataError
from robusttune.metrics import OOD_MEAN, is_ood_set, ood_mean
from robusttune.models.classifier import ImageClassifier
from robusttune.training.device import CPU_FP32, Placement
from robusttune.training.distributed import ALONE, Shard


LARGE_EVALUATION = 20_000  # images: a progress bar (on the command line) from this size on


class Evaluator:
    """Evaluates a classifier on fixed sets. Sets read from disk share one loader over all of them, built once per
    run, whose workers stay alive between evaluations (batches never straddle two sets). In a data-parallel run
    (``shard``) each process evaluates every ``world``-th batch and the counts are summed: every process gets the
    full sets' accuracies."""

    def __init__(self, eval_sets: Iterable[EvalSet], *, batch_size: int = 256, placement: Placement = CPU_FP32,
                 num_workers: int = 0, shard: Shard = ALONE):
        self.sets = tuple(eval_sets)
        for eval_set in self.sets:
            if len(eval_set) == 0:
                raise DataError(f"evaluation set for {eval_set.metric} is empty")
        self.batch_size, self.placement, self.shard = batch_size, placement, shard
        self.sizes = {s.metric: len(s) for s in self.sets}  # images behind each metric
        self.loading = Loading(num_workers, pin_memory=placement.pin_memory, persistent=num_workers > 0)
        self._shared = None  # (loader, owner of each batch), built on the first evaluation

    def _batches(self):
        """``(set index, uint8 images, labels)`` over every set in order."""
        in_memory = all(isinstance(s.source, TensorImages) for s in self.sets)
        if in_memory or self.loading.num_workers == 0:
            for index, eval_set in enumerate(self.sets):
                for images, labels in batch_loader(eval_set.source, self._mine(sequential_batches(len(eval_set),
                                                                                                 self.batch_size))):
                    yield index, images, labels
            return
        if self._shared is None:
            batches, owners, offset = [], [], 0
            for index, eval_set in enumerate(self.sets):
                batches += [[offset + i for i in b] for b in self._mine(sequential_batches(len(eval_set),
                                                                                            self.batch_size))]
                owners += [index] * (len(batches) - len(owners))
                offset += len(eval_set)
            concatenated = ConcatDataset([s.source for s in self.sets])  # type: ignore[list-item]
            self._shared = (batch_loader(concatenated, batches, self.loading), owners)  # type: ignore[arg-type]
        loader, owners = self._shared
        for owner, (images, labels) in zip(owners, loader):
            yield owner, images, labels

    def _mine(self, batches: list) -> list:
        """This process's share of a set's batches."""
        batches = list(batches)
        return batches[self.shard.rank::self.shard.world] if self.shard.distributed else batches

    @torch.inference_mode()
    def __call__(self, model: ImageClassifier) -> dict[str, float]:
        """``{metric: accuracy}`` for every set, plus ``ood_mean`` when there are OOD sets. Restores train mode."""
        was_training = model.training
        model.to(self.placement.device).eval()
        correct = [0] * len(self.sets)
        total = [0] * len(self.sets)
        images_total = sum(len(s) for s in self.sets)
        try:
            with progress.bar("evaluate", images_total, unit="img", min_total=LARGE_EVALUATION) as bar:
                for index, images, labels in self._batches():
                    with self.placement.autocast():
                        logits = self.sets[index].projection(model(model.prepare(images)))
                    correct[index] += int((logits.argmax(dim=1).cpu() == labels).sum())
                    total[index] += int(labels.shape[0])
                    bar.update(int(labels.shape[0]))
        finally:
            model.train(was_training)
        if self.shard.distributed:
            summed = self.shard.sum_counts(correct + total, self.placement.device)
            correct, total = summed[:len(correct)], summed[len(correct):]
        metrics = {s.metric: c / t for s, c, t in zip(self.sets, correct, total)}
        if any(is_ood_set(k) for k in metrics):
            metrics[OOD_MEAN] = ood_mean(metrics)
        return metrics


def subset_evaluator(full: Evaluator, n: int) -> Evaluator | None:
    """``full`` on a fixed, seeded subset of ``n`` images per set (the same for every run); None when no set has more
    than ``n`` images."""
    if all(len(s) <= n for s in full.sets):
        return None
    sets = [dataclasses.replace(s, source=restrict(s.source, fixed_subset(len(s), n))) for s in full.sets]
    return Evaluator(sets, batch_size=full.batch_size, placement=full.placement, num_workers=full.loading.num_workers,
                     shard=full.shard)


def evaluate(model: ImageClassifier, eval_sets: Iterable[EvalSet], *, batch_size: int = 256,
             placement: Placement = CPU_FP32, num_workers: int = 0) -> dict[str, float]:
    """One evaluation (a run that evaluates repeatedly keeps an ``Evaluator``)."""
    return Evaluator(eval_sets, batch_size=batch_size, placement=placement, num_workers=num_workers)(model)


def evaluate_state_dict(model: ImageClassifier, state_dict: Mapping[str, torch.Tensor], evaluator: Evaluator) -> dict[str, float]:
    """Evaluate ``model`` with ``state_dict`` loaded, then put the model's own weights back."""
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state_dict)
    try:
        return evaluator(model)
    finally:
        model.load_state_dict(original)
