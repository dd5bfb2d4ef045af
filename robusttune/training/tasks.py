"""From a ``TaskSpec`` to the zero-shot student classifier and the task's data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from robusttune import progress
from robusttune.config import ImageNetTask, TaskSpec, default_world
from robusttune.data.folder_index import FolderIndex
from robusttune.data.imagenet import ImageFolderSet
from robusttune.data.packed import PackedImages, is_pack, open_pack, projection_of, scan_kind
from robusttune.data.sets import DatasetImages, EvalSet, LogitProjection, TaskData, loader_workers
from robusttune.errors import DataError
from robusttune.metrics import ID_TEST, ID_VAL
from robusttune.models.classifier import ImageClassifier
from robusttune.models.clip import build_classifier, check_model_name, create_clip, imagenet_classnames_and_templates, imagenet_preprocess
from robusttune.models.pretrained import check_activation


def build_task(spec: TaskSpec, cache_dir: Path, *, head_folders: Sequence[Path] = ()) -> tuple[ImageClassifier, TaskData]:
    """The zero-shot classifier that fine-tuning starts from, and the train/eval data. A CLIP's zero-shot head is
    built once and kept in ``head_folders`` (an experiment's ``heads/``) and in the cache's ``heads/``."""
    if spec.imagenet is not None:
        return imagenet_task(spec.imagenet, head_folders=[*head_folders, Path(cache_dir) / "heads"], index_dir=Path(cache_dir))
    from robusttune.training.world import prepare_world

    prepared = prepare_world(spec.world or default_world(), cache_dir)
    return prepared.classifier(), prepared.task()


@dataclass(frozen=True)
class ScannedSet:
    """A dataset folder or pack, listed: its size and label space, and datasets over any of its images."""

    root: Path
    size: int
    projection: LogitProjection
    dataset: Callable[[Callable, Sequence[int] | None], Dataset]  # (uint8 transform, positions or None = all)


def scan_set(kind: str, root: str | Path, index_dir: Path | None) -> ScannedSet:
    """A folder (listed once per cache, ``robusttune.data.folder_index``) or a pack (``robusttune data pack``)."""
    root = Path(root)
    if is_pack(root):
        pack = open_pack(root, kind)

        def packed(transform: Callable, positions: Sequence[int] | None) -> Dataset:
            pack.check_transform(transform)
            return PackedImages(pack, positions)

        return ScannedSet(root, len(pack), projection_of(kind), packed)
    index = FolderIndex(root, index_dir)
    with progress.bar(f"list {root}", unit="folder") as bar:
        def listed(folder: Path) -> list[Path]:
            bar.update(1)
            return index.images_in(folder)

        samples, projection, crop = scan_kind(kind, root, listed)
    index.save()

    def folder(transform: Callable, positions: Sequence[int] | None) -> Dataset:
        chosen = samples if positions is None else [samples[i] for i in positions]
        return ImageFolderSet(chosen, transform, crop_border=crop, root=root)

    return ScannedSet(root, len(samples), projection, folder)


def imagenet_task(spec: ImageNetTask, *, seed: int = 0, head_folders: Sequence[Path] = (),
                  index_dir: Path | None = None) -> tuple[ImageClassifier, TaskData]:
    """CLIP + zero-shot head (1000 classes, 80 OpenAI templates) on ImageNet folders (or packs of them) and the
    OOD sets.

    ``id_val_acc`` is measured on ``val_holdout`` training images held out (seeded) from training;
    ``id_acc`` on the official validation folder.
    """
    # Check everything cheap first: the model name, then every folder, before building the model.
    check_model_name(spec.model)
    check_activation(spec.model, spec.pretrained, quick_gelu=spec.quick_gelu)  # a local file's activation, stated
    train_set = scan_set("imagenet", spec.train_dir, index_dir)
    if train_set.size <= spec.val_holdout:
        raise DataError(f"{spec.train_dir}: {train_set.size} training images cannot spare a validation holdout of {spec.val_holdout}")
    val_set = scan_set("imagenet", spec.val_dir, index_dir)
    ood_sets = [(name.value, scan_set(name.value, path, index_dir)) for name, path in sorted(spec.ood_dirs.items())]
    clip, tokenizer = create_clip(spec.model, spec.pretrained, allow_download=spec.allow_download,
                                  quick_gelu=spec.quick_gelu)
    transform = imagenet_preprocess(clip)
    classnames, templates = imagenet_classnames_and_templates()
    if spec.templates == "simple":
        templates = ["a photo of a {}."]
    classifier = build_classifier(clip, tokenizer, classnames, templates, head_folders=head_folders)
    order = torch.randperm(train_set.size, generator=torch.Generator().manual_seed(seed))
    held = sorted(order[: spec.val_holdout].tolist())
    kept = sorted(set(range(train_set.size)) - set(held))
    eval_sets: list[EvalSet] = [
        EvalSet(ID_VAL, DatasetImages(train_set.dataset(transform, held))),
        EvalSet(ID_TEST, DatasetImages(val_set.dataset(transform, None))),
        *(EvalSet(f"ood_{name}", DatasetImages(scanned.dataset(transform, None)), scanned.projection)
          for name, scanned in ood_sets),
    ]
    task = TaskData(train=DatasetImages(train_set.dataset(transform, kept)), eval_sets=tuple(eval_sets), num_classes=1000,
                    describe=lambda: f"{spec.model} on ImageNet",
                    num_workers=loader_workers(spec.num_workers))
    return classifier, task
