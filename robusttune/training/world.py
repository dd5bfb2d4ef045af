"""Preparing the mini world: its data (cached), its pre-trained tiny CLIP and zero-shot classifier.

The default world's tiny CLIP ships as package data (``robusttune/models/weights/mini_clip_default.pt``),
written by ``robusttune world pretrain`` and reproducible with it; other worlds pre-train once and cache
their weights as ``<cache>/worlds/tiny_clip/<world_key>.pt``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from robusttune.cache import stable_hash
from robusttune.config import WorldConfig
from robusttune.data.mini.captions import CLASSNAMES, PROMPT_TEMPLATES
from robusttune.data.mini.task import mini_task
from robusttune.data.mini.world import WorldData, load_world
from robusttune.data.sets import TaskData
from robusttune.models.classifier import ImageClassifier
from robusttune.models.clip import build_classifier
from robusttune.models.tiny import CompactTokenizer, load_tiny_clip, read_sidecar, save_tiny_clip
from robusttune.training.evaluate import evaluate
from robusttune.training.pretrain import Progress, pretrain_tiny_clip

log = logging.getLogger(__name__)

SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "weights" / "mini_clip_default.pt"


def world_key(config: WorldConfig) -> str:
    """Hash of everything that determines the pre-trained weights (the name is a label only; pre-training never sees
    the validation renders, so their number leaves the weights, shipped or cached, valid)."""
    return stable_hash(config.model_dump(mode="json", exclude={"name", "val_renders"}))


@dataclass
class PreparedWorld:
    world: WorldData
    weights: Path
    source: str  # "shipped", "cache" or "pretrained now"
    zero_shot: dict[str, float]

    def classifier(self) -> ImageClassifier:
        """A fresh zero-shot classifier (image tower + class-prompt head) of the pre-trained tiny CLIP."""
        config = self.world.config
        model, tokenizer = load_tiny_clip(self.weights, config.model, image_size=config.image_size)
        return mini_classifier(model, tokenizer)

    def task(self) -> TaskData:
        return mini_task(self.world)


def mini_classifier(model, tokenizer: CompactTokenizer) -> ImageClassifier:
    return build_classifier(model, tokenizer, CLASSNAMES, PROMPT_TEMPLATES)


def cached_weights(config: WorldConfig, cache_dir: Path) -> Path:
    """Where the cache keeps a world's pre-trained tiny CLIP: keyed by what determines the weights only, so worlds
    that differ in their validation renders share them."""
    return cache_dir / "worlds" / "tiny_clip" / f"{world_key(config)}.pt"


def _weights_for(config: WorldConfig, cache_dir: Path) -> tuple[Path, str]:
    shipped_meta = read_sidecar(SHIPPED_WEIGHTS)
    if SHIPPED_WEIGHTS.is_file() and shipped_meta.get("world_key") == world_key(config):
        return SHIPPED_WEIGHTS, "shipped"
    return cached_weights(config, cache_dir), "cache"


def pretrain_and_save(world: WorldData, path: Path, *, progress: Progress | None = None) -> dict:
    """Pre-train the world's tiny CLIP, measure its zero-shot accuracy, and write weights + sidecar."""
    model, tokenizer, timing = pretrain_tiny_clip(world, progress=progress)
    save_tiny_clip(path, model, tokenizer, {})  # weights first, so the classifier below reads them back
    classifier = mini_classifier(*load_tiny_clip(path, world.config.model, image_size=world.config.image_size))
    zero_shot = evaluate(classifier, mini_task(world).eval_sets)
    meta = {"world": world.config.to_dict(), "world_key": world_key(world.config), "zero_shot": zero_shot, **timing}
    model, tokenizer = load_tiny_clip(path, world.config.model, image_size=world.config.image_size)
    save_tiny_clip(path, model, tokenizer, meta)
    return meta


def prepare_world(config: WorldConfig, cache_dir: Path, *, progress: Progress | None = None) -> PreparedWorld:
    """Data from the cache (generated on first use) and the pre-trained tiny CLIP (shipped, cached or trained now)."""
    world = load_world(config, cache_dir)
    weights, source = _weights_for(config, cache_dir)
    meta = read_sidecar(weights)
    if not weights.is_file() or "zero_shot" not in meta:
        log.info("pre-training the tiny CLIP for world %s", config.name)
        meta = pretrain_and_save(world, weights, progress=progress)
        source = "pretrained now"
    prepared = PreparedWorld(world=world, weights=weights, source=source, zero_shot=dict(meta["zero_shot"]))
    if WorldConfig.model_validate(meta["world"]).data_key() != config.data_key():
        # the same weights measured on other images (e.g. another val_renders): measure them on this world's
        prepared.zero_shot = evaluate(prepared.classifier(), prepared.task().eval_sets)
    return prepared
