"""Labelled image sources for training and evaluation, independent of where the images come from.

Every source yields uint8 ``(N, 3, H, W)`` batches with labels; they are normalised on the model's device
(``ImageClassifier.prepare``), so loader workers and host-to-device copies move a quarter of the bytes. An
``EvalSet`` also says how to turn the model's logits into the set's label space (all classes, a class sublist,
or grouped classes as for ObjectNet).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from robusttune.errors import DataError


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
    """uint8 ``(N, 3, H, W)`` -> float normalised with per-channel ``mean``/``std`` (sequences, or fp32 tensors already
    on the images' device, which are used as they are), on the images' device."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=images_u8.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images_u8.device).view(1, -1, 1, 1)
    return (images_u8.float() / 255.0 - m) / s


AUTO_WORKERS_CAP = 8  # JPEG-pack workers that feed one GPU (docs/guides/running-on-gpus.md); the trial keeps one CPU itself


def loader_workers(requested: int | None, cpus: int | None = None) -> int:
    """DataLoader worker processes: ``requested`` when given; else (None, "auto") the trial's CPUs less the one its
    training process uses, at most 8. ``cpus``: the trial's CPUs (default: torch's threads, which a trial, the
    baselines and ``train --threads`` set to the CPUs they run on)."""
    if requested is not None:
        return requested
    cpus = torch.get_num_threads() if cpus is None else cpus
    return max(0, min(int(cpus) - 1, AUTO_WORKERS_CAP))


@dataclass(frozen=True)
class Loading:
    """How batches are loaded: worker processes, pinned memory (for a CUDA device), batches prefetched per worker."""

    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int = 4
    persistent: bool = False  # keep the workers between passes (evaluation loaders built once per run)


class TensorImages:
    """In-memory uint8 images + labels (the mini world)."""

    def __init__(self, images: Tensor, labels: Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"TensorImages holds uint8 images, got {images.dtype}")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        return self.images[indices], self.labels[indices]


class DatasetImages:
    """A map-style dataset of ``(uint8 image (3, H, W), label)`` pairs: image folders with a transform, a packed set."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.dataset[index]

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        items = [self.dataset[int(i)] for i in indices]
        return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])

    @property
    def labels(self) -> Tensor:
        """Every image's label without reading an image (folder listings and packs know them)."""
        labels = getattr(self.dataset, "labels", None)
        if labels is None:
            raise TypeError(f"{type(self.dataset).__name__} does not list its labels")
        return torch.as_tensor(labels, dtype=torch.long)


ImageSource = TensorImages | DatasetImages

SUBSET_SEED = 20_230_306  # one fixed seed: every trial trains and evaluates on the same subsets


class LabelledSubset(Dataset):
    """``dataset`` at ``positions``, with their labels."""

    def __init__(self, dataset: Dataset, positions: Tensor, labels: Tensor):
        self.dataset, self.positions, self.labels = dataset, positions.tolist(), labels

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int):
        return self.dataset[self.positions[index]]


def restrict(source: ImageSource, positions: Tensor) -> ImageSource:
    """The images of ``source`` at ``positions`` (in that order)."""
    if isinstance(source, TensorImages):
        return TensorImages(source.images[positions], source.labels[positions])
    return DatasetImages(LabelledSubset(source.dataset, positions, source.labels[positions]))


def class_subset(labels: Tensor, per_class_or_fraction: float) -> Tensor:
    """Sorted positions of a seeded subset: ``n`` images of each class (all when it has fewer), or that fraction of
    each class (at least one image)."""
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = (labels == cls).nonzero().flatten()
        keep = (int(per_class_or_fraction) if per_class_or_fraction >= 1
                else max(1, round(per_class_or_fraction * len(members))))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.cat(chosen).sort().values


def fixed_subset(size: int, n: int) -> Tensor:
    """Sorted positions of a seeded subset of ``n`` of ``size`` images (all when ``n >= size``)."""
    if n >= size:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(SUBSET_SEED))[:n].sort().values


def batch_loader(source: ImageSource, batches: Iterable[Sequence[int]], loading: Loading = Loading()) -> Iterable[tuple[Tensor, Tensor]]:
    """uint8 batches of ``source`` in the order ``batches`` gives (index lists): a ``DataLoader`` with worker
    processes for datasets read from disk, plain indexing for in-memory images. The order never depends on the
    workers, so a run's data is the same with any worker count."""
    if isinstance(source, TensorImages) or loading.num_workers == 0:
        return (source.batch(torch.as_tensor(list(b), dtype=torch.long)) for b in batches)
    return _OneLineErrors(DataLoader(source, batch_sampler=batches, num_workers=loading.num_workers,
                                     pin_memory=loading.pin_memory, prefetch_factor=loading.prefetch_factor,
                                     persistent_workers=loading.persistent))


class _OneLineErrors:
    """Re-raises a worker's ``DataError`` (which the DataLoader wraps in its traceback) with its own one-line message."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self):
        try:
            yield from self.loader
        except DataError as error:
            raise DataError(_worker_message(error)) from None


def _worker_message(error: Exception) -> str:
    """The original message of an error a DataLoader worker raised (its last traceback line, without the type)."""
    last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return last.removeprefix(f"{type(error).__module__}.{type(error).__name__}: ")


def sequential_batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]


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
    num_workers: int = 0  # loader worker processes for training and evaluation
