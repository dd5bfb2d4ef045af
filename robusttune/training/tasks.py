"""From a ``TaskSpec`` to the zero-shot student classifier and the task's data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from robusttune.config import ImageNetTask, TaskSpec, default_world
from robusttune.data.folder_index import FolderIndex
from robusttune.data.imagenet import ImageFolderSet, imagenet_samples, scan_ood_folder
from robusttune.data.sets import DatasetImages, EvalSet, TaskData
from robusttune.errors import DataError
from robusttune.models.classifier import ImageClassifier
from robusttune.models.clip import build_classifier, check_model_name, create_clip, imagenet_classnames_and_templates, imagenet_preprocess


def build_task(spec: TaskSpec, cache_dir: Path, *, head_folders: Sequence[Path] = ()) -> tuple[ImageClassifier, TaskData]:
    """The zero-shot classifier that fine-tuning starts from, and the train/eval data. A CLIP's zero-shot head is
    built once and kept in ``head_folders`` (an experiment's ``heads/``) and in the cache's ``heads/``."""
    if spec.imagenet is not None:
        return imagenet_task(spec.imagenet, head_folders=[*head_folders, Path(cache_dir) / "heads"], index_dir=Path(cache_dir))
    from robusttune.training.world import prepare_world

    prepared = prepare_world(spec.world or default_world(), cache_dir)
    return prepared.classifier(), prepared.task()


def imagenet_task(spec: ImageNetTask, *, seed: int = 0, head_folders: Sequence[Path] = (),
                  index_dir: Path | None = None) -> tuple[ImageClassifier, TaskData]:
    """CLIP + zero-shot head (1000 classes, 80 OpenAI templates) on ImageNet folders and the OOD sets.

    ``id_val_acc`` is measured on ``val_holdout`` training images held out (seeded) from training;
    ``id_acc`` on the official validation folder.
    """
    # Check everything cheap first: the model name, then every folder, before building the model.
    check_model_name(spec.model)
    def scanned(root: str, scan):  # each folder listed once per cache (robusttune.data.folder_index)
        index = FolderIndex(Path(root), index_dir)
        found = scan(Path(root), index.images_in)
        index.save()
        return found

    train_samples = scanned(spec.train_dir, imagenet_samples)
    if len(train_samples) <= spec.val_holdout:
        raise DataError(f"{spec.train_dir}: {len(train_samples)} training images cannot spare a validation holdout of {spec.val_holdout}")
    val_samples = scanned(spec.val_dir, imagenet_samples)
    ood_folders = [scanned(path, lambda root, lister, name=name: scan_ood_folder(name.value, root, lister))
                   for name, path in sorted(spec.ood_dirs.items())]
    clip, tokenizer = create_clip(spec.model, spec.pretrained, allow_download=spec.allow_download)
    transform = imagenet_preprocess(clip)
    classnames, templates = imagenet_classnames_and_templates()
    if spec.templates == "simple":
        templates = ["a photo of a {}."]
    classifier = build_classifier(clip, tokenizer, classnames, templates, head_folders=head_folders)
    order = torch.randperm(len(train_samples), generator=torch.Generator().manual_seed(seed))
    held = set(order[: spec.val_holdout].tolist())
    train_root = Path(spec.train_dir)
    train = ImageFolderSet([s for i, s in enumerate(train_samples) if i not in held], transform, root=train_root)
    holdout = ImageFolderSet([s for i, s in enumerate(train_samples) if i in held], transform, root=train_root)
    eval_sets: list[EvalSet] = [
        EvalSet("id_val_acc", DatasetImages(holdout)),
        EvalSet("id_acc", DatasetImages(ImageFolderSet(val_samples, transform, root=Path(spec.val_dir)))),
        *(folder.eval_set(transform) for folder in ood_folders),
    ]
    task = TaskData(train=DatasetImages(train), eval_sets=tuple(eval_sets), num_classes=1000,
                    describe=lambda: f"{spec.model} on ImageNet folders", num_workers=spec.num_workers)
    return classifier, task
