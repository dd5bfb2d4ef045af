"""Data: the embedded mini world (``prepare_world``, ``pretrain_world``) and packing image folders (``pack``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robusttune.api.common import cache_directory
from robusttune.config import WorldConfig
from robusttune.errors import ParameterError


def world_config(config: WorldConfig | str | os.PathLike[str] | None) -> WorldConfig:
    """``config`` itself, the world config file it names, or the built-in world."""
    from robusttune.config import default_world, load_config

    if isinstance(config, WorldConfig):
        return config
    return load_config(WorldConfig, str(config)) if config else default_world()


@dataclass(frozen=True)
class WorldResult:
    """A ready mini world: its name, the tiny CLIP's weights (and whether they were shipped, cached or trained
    now), the zero-shot accuracies and the split sizes."""

    world: str
    weights: Path
    weights_source: str
    zero_shot: dict[str, float]
    sizes: dict[str, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"world": self.world, "weights": str(self.weights), "weights_source": self.weights_source,
                "zero_shot": self.zero_shot, "sizes": self.sizes, "seconds": self.seconds}


def prepare_world(config: WorldConfig | str | os.PathLike[str] | None = None, *,
                  cache_dir: str | os.PathLike[str] | None = None, progress: Callable | None = None) -> WorldResult:
    """Generate (or reuse from the cache) the mini world's data and its pre-trained tiny CLIP."""
    from robusttune.metrics import ood_metric
    from robusttune.training.world import prepare_world as prepare

    world = world_config(config)
    started = time.perf_counter()
    prepared = prepare(world, cache_directory(cache_dir), progress=progress)
    data = prepared.world
    sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test),
             **{ood_metric(k): len(v) for k, v in data.ood.items()}}
    return WorldResult(world.name, prepared.weights, prepared.source, dict(prepared.zero_shot), sizes,
                       round(time.perf_counter() - started, 2))


def pretrain_world(config: WorldConfig | str | os.PathLike[str] | None = None, *,
                   out: str | os.PathLike[str] | None = None, overwrite: bool = False,
                   cache_dir: str | os.PathLike[str] | None = None, progress: Callable | None = None) -> dict[str, Any]:
    """Pre-train the world's tiny CLIP and write its weights to ``out`` (default: the cache's place for them);
    returns the weights' path, the zero-shot accuracies and the pre-training's timing."""
    from robusttune.data.mini.world import load_world
    from robusttune.training.world import cached_weights, pretrain_and_save

    world = world_config(config)
    cache = cache_directory(cache_dir)
    target = Path(out) if out else cached_weights(world, cache)
    if target.exists() and not overwrite:
        raise ParameterError("out", f"{target} exists (pass `overwrite` to replace it)")
    meta = pretrain_and_save(load_world(world, cache), target, progress=progress)
    return {"weights": str(target), **meta}


@dataclass(frozen=True)
class PackResult:
    out: Path
    images: int
    shards: int
    bytes: int
    resumed_shards: int  # shards an interrupted pack had written already
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "images": self.images, "shards": self.shards, "bytes": self.bytes,
                "resumed_shards": self.resumed_shards, "seconds": self.seconds}


def pack(source: str | os.PathLike[str], out: str | os.PathLike[str], *, kind: str, model: str = "ViT-B-32",
         encoding: str = "raw", quality: int = 90, shard_size: int = 1024, workers: int | None = None,
         progress: Callable[[int, int], None] | None = None,
         cache_dir: str | os.PathLike[str] | None = None) -> PackResult:
    """Resize and centre-crop the ImageNet-style folder ``source`` (``kind``: imagenet, or the OOD set's name) once,
    at ``model``'s input size, into uint8 shards in ``out`` that training reads directly (``raw`` or ``jpeg``);
    an interrupted pack with the same settings resumes at its first missing shard. ``workers`` decoding processes
    (default: one per CPU this process may use); the source's listing is kept in the cache's folder index."""
    from robusttune.data.packed import pack_folder
    from robusttune.models.clip import model_image_size, preprocess_for

    transform = preprocess_for(model_image_size(model))
    index_dir = cache_directory(cache_dir)
    started = time.perf_counter()
    done = pack_folder(source, out, kind=kind, transform=transform, encoding=encoding, quality=quality,
                       shard_size=shard_size, workers=workers, progress=progress, index_dir=index_dir)
    return PackResult(done.out, done.images, done.shards, done.bytes, done.resumed_shards,
                      round(time.perf_counter() - started, 2))
