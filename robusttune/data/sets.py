"""Labelled image sources for training and evaluation, independent of where the images come from.

An ``EvalSet`` yields normalised float batches with labels and says how to turn the model's logits into
the set's label space (all classes, a class sublist, or grouped classes as for ObjectNet).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


@dataclass(frozen=True)
class LogitProjection:
    """Maps ``(N, C)`` logits to the label space of an evaluation set.

    * ``indices``: keep these columns (ImageNet-R/-A: their 200-class sublists); label k = ``indices[k]``.
    * ``groups``: class k scores the max logit over ``groups[k]`` (ObjectNet: ImageNet classes per ObjectNet class).
    """

    indices: tuple[int, ...] | None = None
    groups: tuple[tuple[int, ...], ...] | None = None

    def __call__(self, logits: Tensor) -> Tensor:
        if self.indices is not None:
            return logits[:, list(self.indices)]
        if self.groups is not None:
            return torch.stack([logits[:, list(group)].max(dim=1).values for group in self.groups], dim=1)
        return logits


IDENTITY = LogitProjection()


def normalise(images_u8: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``(N, 3, H, W)`` -> float normalised with per-channel ``mean``/``std``."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images_u8.float() / 255.0 - m) / s


class TensorImages:
    """In-memory uint8 images + labels; batches are normalised on the fly."""

    def __init__(self, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float]):
        self.images, self.labels = images, labels
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        return normalise(self.images[indices], self.mean, self.std), self.labels[indices]

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self), batch_size):
            index = torch.arange(start, min(start + batch_size, len(self)))
            yield self.batch(index)


class DatasetImages:
    """A map-style dataset of ``(float image, label)`` pairs (e.g. image folders with a transform)."""

    def __init__(self, dataset: Dataset, num_workers: int = 0):
        self.dataset, self.num_workers = dataset, num_workers

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        items = [self.dataset[int(i)] for i in indices]
        return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=False, num_workers=self.num_workers)
        yield from loader


ImageSource = TensorImages | DatasetImages


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: the metric it produces (``id_acc``, ``ood_<set>`` ...), its images, its label space."""

    metric: str
    source: ImageSource
    projection: LogitProjection = field(default=IDENTITY)

    def __len__(self) -> int:
        return len(self.source)


@dataclass(frozen=True)
class TaskData:
    """Everything one fine-tuning run needs: training images, class count and the evaluation sets."""

    train: ImageSource
    eval_sets: tuple[EvalSet, ...]
    num_classes: int
    describe: Callable[[], str] = lambda: "task"
