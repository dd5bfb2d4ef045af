"""ImageNet (ID) and its five OOD test sets from image folders, scored as the WiSE-FT evaluation code does (see below).

| set               | folder layout                          | label space                                  |
|-------------------|----------------------------------------|----------------------------------------------|
| ImageNet train/val| ``<wnid>/*`` (1000 folders)             | 1000 classes, sorted wnids                   |
| ImageNet-V2       | ``0/ .. 999/`` (class index as name)    | 1000 classes                                 |
| ImageNet-Sketch   | ``<wnid>/*`` (1000 folders)             | 1000 classes                                 |
| ImageNet-R / -A   | ``<wnid>/*`` (200 folders)              | logits restricted to the 200-class sublist   |
| ObjectNet         | ``<objectnet folder name>/*``           | 113 classes; score = max logit of the mapped ImageNet classes; 2-px border cropped |
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from robusttune.config import OodSet
from robusttune.data.sets import DatasetImages, EvalSet, LogitProjection
from robusttune.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"}
OOD_SETS = tuple(s.value for s in OodSet)


@cache
def ood_metadata() -> dict[str, Any]:
    """Class sublists of ImageNet-R/-A and the ObjectNet mapping, shipped as package data."""
    text = resources.files("robusttune.data").joinpath("metadata/imagenet_ood_metadata.json").read_text()
    return json.loads(text)


def class_folders(root: Path) -> list[Path]:
    """Sorted class sub-folders of ``root``, with one-line errors naming the path."""
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder of class sub-folders, got a file")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class sub-folders found")
    return folders


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


class ImageFolderSet(Dataset):
    """``(transform(image), label)`` for a fixed list of samples (``transform`` gives uint8 ``(3, H, W)``, e.g.
    ``robusttune.models.clip.imagenet_preprocess``); ``crop_border`` trims pixels on every side."""

    def __init__(self, samples: list[Sample], transform: Callable, *, crop_border: int = 0, root: Path):
        if not samples:
            raise DataError(f"{root}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.samples, self.transform, self.crop_border = samples, transform, crop_border

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def __getitem__(self, index: int):
        sample = self.samples[index]
        try:
            with Image.open(sample.path) as raw:
                image = raw.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(f"{sample.path}: cannot read image ({type(error).__name__})") from None
        if self.crop_border:
            b = self.crop_border
            image = image.crop((b, b, image.width - b, image.height - b))
        return self.transform(image), sample.label


Lister = Callable[[Path], list[Path]]  # a folder's image files: images_in, or a FolderIndex's cached listing


def _wnid_samples(root: Path, expected: int, what: str, list_images: Lister = images_in) -> list[Sample]:
    folders = class_folders(root)
    if len(folders) != expected:
        raise DataError(f"{root}: {what} needs {expected} class folders, found {len(folders)}")
    return [Sample(path, label) for label, folder in enumerate(folders) for path in list_images(folder)]


def imagenet_samples(root: Path, list_images: Lister = images_in) -> list[Sample]:
    """ImageNet train or val: 1000 wnid folders in sorted order."""
    return _wnid_samples(root, 1000, "ImageNet", list_images)


def imagenet_v2_samples(root: Path, list_images: Lister = images_in) -> list[Sample]:
    samples = []
    for folder in class_folders(root):
        if not folder.name.isdigit() or not 0 <= int(folder.name) < 1000:
            raise DataError(f"{folder}: ImageNet-V2 class folders must be named 0..999, got '{folder.name}'")
        samples += [Sample(path, int(folder.name)) for path in list_images(folder)]
    return samples


def objectnet_classes() -> tuple[list[str], list[tuple[int, ...]]]:
    """The 113 ObjectNet classes that overlap ImageNet (sorted) and each one's ImageNet class indices."""
    meta = ood_metadata()["objectnet"]
    label_to_2012 = {label: i for i, label in enumerate(meta["imagenet_to_label_2012_v2"])}
    id2012_to_pytorch = {int(v): int(k) for k, v in meta["pytorch_to_imagenet_2012_id"].items()}
    names = sorted(meta["objectnet_to_imagenet_1k"])
    groups = []
    for name in names:
        labels = [s.strip() for s in meta["objectnet_to_imagenet_1k"][name].split(";")]
        groups.append(tuple(sorted(id2012_to_pytorch[label_to_2012[label]] for label in labels)))
    return names, groups


def objectnet_samples(root: Path, list_images: Lister = images_in) -> list[Sample]:
    """Images of the ObjectNet folders whose class overlaps ImageNet; other folders are skipped."""
    meta = ood_metadata()["objectnet"]
    names, _ = objectnet_classes()
    index = {name: i for i, name in enumerate(names)}
    samples = []
    for folder in class_folders(root):
        label_name = meta["folder_to_objectnet_label"].get(folder.name)
        if label_name is None:
            raise DataError(f"{folder}: unknown ObjectNet class folder '{folder.name}'")
        if label_name in index:
            samples += [Sample(path, index[label_name]) for path in list_images(folder)]
    return samples


@dataclass(frozen=True)
class OodFolder:
    """An OOD set's scanned folder: samples, label space and border crop (no model needed yet)."""

    name: str
    root: Path
    samples: list[Sample]
    projection: LogitProjection
    crop: int = 0

    def eval_set(self, transform: Callable) -> EvalSet:
        dataset = ImageFolderSet(self.samples, transform, crop_border=self.crop, root=self.root)
        return EvalSet(f"ood_{self.name}", DatasetImages(dataset), self.projection)


def scan_ood_folder(name: str, root: Path, list_images: Lister = images_in) -> OodFolder:
    """Scan one of ``OOD_SETS``; fails with a one-line ``DataError`` on a missing, malformed or empty folder."""
    root = Path(root)
    meta = ood_metadata()
    projection = LogitProjection()
    crop = 0
    if name == "imagenet_v2":
        samples = imagenet_v2_samples(root, list_images)
    elif name == "imagenet_sketch":
        samples = _wnid_samples(root, 1000, "ImageNet-Sketch", list_images)
    elif name in ("imagenet_r", "imagenet_a"):
        sublist = meta[f"{name}_class_sublist"]
        samples = _wnid_samples(root, len(sublist), "ImageNet-R" if name == "imagenet_r" else "ImageNet-A", list_images)
        projection = LogitProjection(indices=tuple(sublist))
    elif name == "objectnet":
        samples = objectnet_samples(root, list_images)
        projection = LogitProjection(groups=tuple(objectnet_classes()[1]))
        crop = 2
    else:
        raise DataError(f"unknown OOD set '{name}'; known: {', '.join(OOD_SETS)}")
    if not samples:
        raise DataError(f"{root}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return OodFolder(name, root, samples, projection, crop)


def ood_eval_set(name: str, root: Path, transform: Callable) -> EvalSet:
    """The evaluation set ``ood_<name>`` for one of ``OOD_SETS`` from its folder."""
    return scan_ood_folder(name, root).eval_set(transform)


def imagenet_eval_set(metric: str, root: Path, transform: Callable) -> EvalSet:
    dataset = ImageFolderSet(imagenet_samples(Path(root)), transform, root=Path(root))
    return EvalSet(metric, DatasetImages(dataset))
