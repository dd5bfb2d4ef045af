"""Packed datasets: an image folder pre-processed once into uint8 shards (the paper trains without augmentation,
so every image always goes through the same resize + centre crop).

Layout of a pack folder::

    robusttune-pack.json     the index, written last: settings, shard list (file, count, bytes), image shape
    labels.npy               int64 labels in sample order (the folder's sorted listing, as the folder path reads it)
    shard-00000.npy          raw: uint8 (n, 3, H, W), memory-mapped on read
    shard-00000.jpg.npy      jpeg: the encoded images back to back (uint8), with shard-00000.offsets.npy
    .pack-state.json         only while packing: the settings, so an interrupted pack resumes with the same ones

Every file is written atomically (temporary file + rename) and the index comes last, so a reader never sees a
half-written pack: a folder without the index is refused with a one-line error saying how to finish it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from robusttune.cache import atomic_write, atomic_write_json
from robusttune.data.imagenet import OOD_SETS, ImageFolderSet, Lister, images_in, imagenet_samples, scan_ood_folder
from robusttune.data.sets import LogitProjection
from robusttune.bounds import at_least
from robusttune.config import PACK_KINDS, PackEncoding
from robusttune.errors import DataError, ParameterError

FORMAT = "robusttune.pack/1"
INDEX_FILE = "robusttune-pack.json"
STATE_FILE = ".pack-state.json"
KINDS = PACK_KINDS
ENCODINGS = tuple(e.value for e in PackEncoding)

Progress = Callable[[int, int], None]  # (images done, total)

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a container's or ``taskset``'s share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def pack_workers(requested: int | None) -> int:
    """The decoding processes a pack uses: one per usable CPU by default (``None``), else ``requested``, at most one
    per usable CPU (more only compete for the same cores), with a one-line warning when it is capped."""
    cpus = usable_cpus()
    if requested is None:
        return cpus
    if requested > cpus:
        log.warning("--workers %d is more than the %d CPU(s) this process can use; packing with %d worker(s)",
                    requested, cpus, cpus)
        return cpus
    return requested


def describe_transform(transform: Callable) -> str:
    """A transform's text, whitespace-collapsed: a pack is only read by a model whose transform has the same text."""
    return " ".join(repr(transform).split())


def is_pack(root: str | Path) -> bool:
    root = Path(root)
    return (root / INDEX_FILE).is_file() or (root / STATE_FILE).is_file()


def scan_kind(kind: str, root: Path, list_images: Lister = images_in) -> tuple[list, LogitProjection, int]:
    """The samples, label space and border crop of a folder of ``kind`` (the folder path's own label handling)."""
    if kind == "imagenet":
        return imagenet_samples(root, list_images), LogitProjection(), 0
    if kind not in OOD_SETS:
        raise DataError(f"unknown dataset kind '{kind}'; known: {', '.join(KINDS)}")
    folder = scan_ood_folder(kind, root, list_images)
    return folder.samples, folder.projection, folder.crop


def projection_of(kind: str) -> LogitProjection:
    """The label space of a pack's kind (stored packs carry the kind, not the projection)."""
    from robusttune.data.imagenet import objectnet_classes, ood_metadata

    if kind in ("imagenet_r", "imagenet_a"):
        return LogitProjection(indices=tuple(ood_metadata()[f"{kind}_class_sublist"]))
    if kind == "objectnet":
        return LogitProjection(groups=tuple(objectnet_classes()[1]))
    return LogitProjection()


def _shard_files(index: int, encoding: str) -> list[str]:
    stem = f"shard-{index:05d}"
    return [f"{stem}.npy"] if encoding == "raw" else [f"{stem}.jpg.npy", f"{stem}.offsets.npy"]


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream:
            np.save(stream, array)

    atomic_write(path, write)


@dataclass(frozen=True)
class PackSummary:
    out: Path
    images: int
    shards: int
    bytes: int
    resumed_shards: int


def pack_folder(source: str | Path, out: str | Path, *, kind: str, transform: Callable, encoding: str = "raw",
                quality: int = 90, shard_size: int = 1024, workers: int | None = None, progress: Progress | None = None,
                index_dir: Path | None = None) -> PackSummary:
    """Pack ``source`` (a folder of ``kind``) into ``out``; an interrupted pack with the same settings resumes at its
    first missing shard. ``transform`` must give uint8 ``(3, H, W)`` (``robusttune.models.clip.preprocess_for``).

    One ``DataLoader`` reads the whole pack: its ``workers`` processes (default: one per usable CPU, capped to them,
    ``pack_workers``; 0 decodes in this process) start once and stay for every shard; each decodes, transforms and
    (for ``jpeg``) encodes chunks of a shard, in order, while this process only writes the shards. The source is listed through
    the folder index (``robusttune.data.folder_index``; kept in ``index_dir`` when given, so a second pack or a
    trial reading the same folder lists it from there)."""
    from robusttune.data.folder_index import FolderIndex

    source, out = Path(source), Path(out)
    if encoding not in ENCODINGS:
        raise ParameterError("encoding", f"must be one of {', '.join(ENCODINGS)}, got '{encoding}'")
    if not 1 <= quality <= 100:
        raise ParameterError("quality", f"must lie in 1..100, got {quality}")
    at_least("shard_size", shard_size, 1)
    if workers is not None:
        at_least("workers", workers, 0)
    workers = pack_workers(workers)
    index = FolderIndex(source, index_dir) if source.is_dir() else None
    samples, _, crop = scan_kind(kind, source, index.images_in if index is not None else images_in)
    if index is not None:
        index.save()
    if not samples:
        raise DataError(f"{source}: no images found")
    listing = hashlib.sha256("\n".join(f"{s.path.relative_to(source)}\t{s.label}" for s in samples).encode()).hexdigest()
    settings = {"format": FORMAT, "kind": kind, "encoding": encoding, "quality": quality if encoding == "jpeg" else None,
                "shard_size": shard_size, "transform": describe_transform(transform), "crop_border": crop,
                "images": len(samples), "listing_sha256": listing}
    if (out / INDEX_FILE).is_file():
        done = _read_json(out / INDEX_FILE)
        if {k: done.get(k) for k in settings} == settings:
            return PackSummary(out, len(samples), len(done["shards"]), _pack_bytes(out, done), len(done["shards"]))
        raise DataError(f"{out}: already holds a pack of other images or settings; choose another folder or delete it")
    if (out / STATE_FILE).is_file():
        if _read_json(out / STATE_FILE) != settings:
            raise DataError(f"{out}: an interrupted pack with other settings (or a changed source) is here; "
                            f"rerun with its settings or delete the folder")
    elif out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: not empty; packs go into a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / STATE_FILE, settings)

    dataset = ImageFolderSet(samples, transform, crop_border=crop, root=source)
    n_shards = -(-len(samples) // shard_size)
    bounds = [(k * shard_size, min((k + 1) * shard_size, len(samples))) for k in range(n_shards)]
    done = [all((out / f).is_file() for f in _shard_files(k, encoding)) for k in range(n_shards)]
    images_done = [sum(last - first for (first, last), kept in zip(bounds, done) if kept)]

    def shard_written(k: int) -> None:
        images_done[0] += bounds[k][1] - bounds[k][0]
        if progress is not None:
            progress(images_done[0], len(samples))

    if progress is not None:
        progress(images_done[0], len(samples))
    written = _write_shards(out, dataset, [k for k in range(n_shards) if not done[k]], bounds, encoding, quality,
                            workers, shard_written)
    shards, shape = [], None
    for k, (first, last) in enumerate(bounds):
        files = _shard_files(k, encoding)
        if shape is None:
            shape = _shard_image_shape(out, files, encoding)
        shards.append({"files": files, "count": last - first, "bytes": [(out / f).stat().st_size for f in files]})
    resumed = n_shards - written
    _save_npy(out / "labels.npy", np.asarray([s.label for s in samples], dtype=np.int64))
    index = {**settings, "image_shape": list(shape), "shards": shards}
    atomic_write_json(out / INDEX_FILE, index)
    (out / STATE_FILE).unlink(missing_ok=True)
    return PackSummary(out, len(samples), n_shards, _pack_bytes(out, index), resumed)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: unreadable pack file ({type(error).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not a robusttune pack ({FORMAT})")
    return data


def _pack_bytes(out: Path, index: dict[str, Any]) -> int:
    return sum(sum(shard["bytes"]) for shard in index["shards"]) + (out / "labels.npy").stat().st_size


CHUNK = 64  # images a worker decodes (and encodes) per item: a shard is a few chunks, the workers share it


class _Chunks(Dataset):
    """Item ``i``: chunk ``i`` of the shards to write, decoded, transformed and (``jpeg``) encoded where it is read:
    ``(shard, last chunk of its shard?, uint8 images (n, 3, H, W) or a list of JPEG byte arrays)``."""

    def __init__(self, dataset: Dataset, chunks: list[tuple[int, bool, range]], encoding: str, quality: int):
        self.dataset, self.chunks, self.encoding, self.quality = dataset, chunks, encoding, quality

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[int, bool, Any]:
        shard, last, positions = self.chunks[i]
        images = torch.stack([self.dataset[p][0] for p in positions])
        if self.encoding == "raw":
            return shard, last, images
        from torchvision.io import encode_jpeg

        return shard, last, [encode_jpeg(image, quality=self.quality).numpy() for image in images]


def _as_is(item: Any) -> Any:
    return item


def _write_shards(out: Path, dataset: Dataset, todo: list[int], bounds: list[tuple[int, int]], encoding: str,
                  quality: int, workers: int, written: Callable[[int], None]) -> int:
    """Write the shards ``todo`` through one DataLoader (its workers started once for them all); ``written(k)``
    after each; returns how many were written. Shards are written in order, so an error (a worker's one-line
    ``DataError``) leaves every shard before it written, and a rerun resumes there."""
    from robusttune.data.sets import _OneLineErrors

    chunks = [(k, first + CHUNK >= bounds[k][1], range(first, min(first + CHUNK, bounds[k][1])))
              for k in todo for first in range(bounds[k][0], bounds[k][1], CHUNK)]
    if not chunks:
        return 0
    # one pass over every chunk: the workers start once and live until the last shard (the old code started them
    # again for each 1,024-image shard and encoded in this process while they idled)
    loader = DataLoader(_Chunks(dataset, chunks, encoding, quality), batch_size=None, shuffle=False,
                        num_workers=workers, collate_fn=_as_is, **({"prefetch_factor": 2} if workers > 0 else {}))
    parts: list[Any] = []
    count = 0
    try:
        for shard, last, payload in _OneLineErrors(loader):
            parts.append(payload)
            if not last:
                continue
            files = _shard_files(shard, encoding)
            if encoding == "raw":
                _save_npy(out / files[0], torch.cat(parts).numpy())
            else:
                encoded = [array for part in parts for array in part]
                offsets = np.cumsum([0, *(len(e) for e in encoded)]).astype(np.int64)
                _save_npy(out / files[0], np.concatenate(encoded))
                _save_npy(out / files[1], offsets)  # last: the shard counts as written once its offsets exist
            parts, count = [], count + 1
            written(shard)
    finally:
        del loader
    return count


def _shard_image_shape(out: Path, files: list[str], encoding: str) -> tuple[int, ...]:
    if encoding == "raw":
        return tuple(np.load(out / files[0], mmap_mode="r").shape[1:])
    from torchvision.io import decode_jpeg

    data, offsets = np.load(out / files[0], mmap_mode="r"), np.load(out / files[1])
    return tuple(decode_jpeg(torch.from_numpy(np.array(data[offsets[0]:offsets[1]]))).shape)


@dataclass(frozen=True)
class Pack:
    """A finished pack, checked cheaply (index, file sizes, label count) when opened."""

    root: Path
    index: dict[str, Any]
    labels: np.ndarray

    @property
    def kind(self) -> str:
        return self.index["kind"]

    def __len__(self) -> int:
        return int(self.index["images"])

    def check_transform(self, transform: Callable) -> None:
        if self.index["transform"] != describe_transform(transform):
            raise DataError(f"{self.root}: packed with another transform ({self.index['transform']}); this model needs "
                            f"{describe_transform(transform)}: pack it again for this model")


def open_pack(root: str | Path, kind: str | None = None) -> Pack:
    """Open a finished pack (one-line errors for an unfinished, damaged or mismatched one)."""
    root = Path(root)
    if not (root / INDEX_FILE).is_file():
        if (root / STATE_FILE).is_file():
            raise DataError(f"{root}: unfinished pack; rerun 'robusttune data pack' with the same arguments to finish it")
        raise DataError(f"{root}: not a pack (no {INDEX_FILE})")
    index = _read_json(root / INDEX_FILE)
    if kind is not None and index.get("kind") != kind:
        raise DataError(f"{root}: a pack of {index.get('kind')}, but {kind} is needed here")
    for shard in index["shards"]:
        for name, size in zip(shard["files"], shard["bytes"]):
            path = root / name
            if not path.is_file() or path.stat().st_size != size:
                raise DataError(f"{path}: missing or damaged shard (size differs from the index); pack again")
    try:
        labels = np.load(root / "labels.npy")
    except (OSError, ValueError) as error:
        raise DataError(f"{root / 'labels.npy'}: unreadable ({type(error).__name__})") from None
    if len(labels) != index["images"]:
        raise DataError(f"{root / 'labels.npy'}: {len(labels)} labels for {index['images']} images")
    return Pack(root, index, labels)


class PackedImages(Dataset):
    """``(uint8 image (3, H, W), label)`` from a pack, for the pack's images at ``positions`` (default: all)."""

    def __init__(self, pack: Pack, positions: Sequence[int] | None = None):
        self.pack = pack
        self.positions = np.arange(len(pack)) if positions is None else np.asarray(positions, dtype=np.int64)
        self.shard_size = int(pack.index["shard_size"])
        self.encoding = pack.index["encoding"]
        self._shards: dict[int, tuple[np.ndarray, ...]] = {}  # memory maps, opened lazily in each process

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def labels(self) -> np.ndarray:
        return self.pack.labels[self.positions]

    def _shard(self, k: int) -> tuple[np.ndarray, ...]:
        if k not in self._shards:
            files = self.pack.index["shards"][k]["files"]
            self._shards[k] = tuple(np.load(self.pack.root / f, mmap_mode="r") for f in files)
        return self._shards[k]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        position = int(self.positions[index])
        k, offset = divmod(position, self.shard_size)
        shard = self._shard(k)
        if self.encoding == "raw":
            image = torch.from_numpy(np.array(shard[0][offset]))
        else:
            from torchvision.io import decode_jpeg

            data, offsets = shard
            image = decode_jpeg(torch.from_numpy(np.array(data[offsets[offset]:offsets[offset + 1]])))
        return image, int(self.pack.labels[position])

    def __getstate__(self) -> dict[str, Any]:  # worker processes open their own memory maps
        return {**self.__dict__, "_shards": {}}
