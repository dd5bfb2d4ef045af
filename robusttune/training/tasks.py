"""From a ``TaskSpec`` to the zero-shot student classifier and the task's data."""

from __future__ import annotations

from pathlib import Path

import torch

from robusttune.config import ImageNetTask, TaskSpec, default_world
from robusttune.data.imagenet import ImageFolderSet, imagenet_eval_set, imagenet_samples, ood_eval_set
from robusttune.data.sets import DatasetImages, EvalSet, TaskData
from robusttune.errors import DataError
from robusttune.models.classifier import ImageClassifier
from robusttune.models.clip import build_classifier, check_model_name, create_clip, imagenet_classnames_and_templates, imagenet_preprocess


def build_task(spec: TaskSpec, cache_dir: Path) -> tuple[ImageClassifier, TaskData]:
    """The zero-shot classifier that fine-tuning starts from, and the train/eval data."""
    if spec.imagenet is not None:
        return imagenet_task(spec.imagenet)
    from robusttune.training.mini_world import prepare_world

    prepared = prepare_world(spec.world or default_world(), cache_dir)
    return prepared.classifier(), prepared.task()


def imagenet_task(spec: ImageNetTask, *, seed: int = 0) -> tuple[ImageClassifier, TaskData]:
    """CLIP + zero-shot head (1000 classes, 80 OpenAI templates) on ImageNet folders and the OOD sets.

    ``id_val_acc`` is measured on ``val_holdout`` training images held out (seeded) from training;
    ``id_acc`` on the official validation folder.
    """
    check_model_name(spec.model)  # cheap; before scanning what may be a million training files
    train_samples = imagenet_samples(Path(spec.train_dir))
    if len(train_samples) <= spec.val_holdout:
        raise DataError(f"{spec.train_dir}: {len(train_samples)} training images cannot spare a validation holdout of {spec.val_holdout}")
    clip, tokenizer = create_clip(spec.model, spec.pretrained, allow_download=spec.allow_download)
    transform = imagenet_preprocess(clip)
    classnames, templates = imagenet_classnames_and_templates()
    if spec.templates == "simple":
        templates = ["a photo of a {}."]
    classifier = build_classifier(clip, tokenizer, classnames, templates)
    order = torch.randperm(len(train_samples), generator=torch.Generator().manual_seed(seed))
    held = set(order[: spec.val_holdout].tolist())
    train_root = Path(spec.train_dir)
    train = ImageFolderSet([s for i, s in enumerate(train_samples) if i not in held], transform, root=train_root)
    holdout = ImageFolderSet([s for i, s in enumerate(train_samples) if i in held], transform, root=train_root)
    eval_sets: list[EvalSet] = [
        EvalSet("id_val_acc", DatasetImages(holdout, spec.num_workers)),
        imagenet_eval_set("id_acc", Path(spec.val_dir), transform, num_workers=spec.num_workers),
    ]
    eval_sets += [ood_eval_set(name.value, Path(path), transform, num_workers=spec.num_workers)
                  for name, path in sorted(spec.ood_dirs.items())]
    task = TaskData(train=DatasetImages(train, spec.num_workers), eval_sets=tuple(eval_sets), num_classes=1000,
                    describe=lambda: f"{spec.model} on ImageNet folders")
    return classifier, task
