"""The mini world: a seeded, validated recipe that turns real digits into ID and OOD image sets.

| set              | digits  | background                       | style                         |
|------------------|---------|----------------------------------|-------------------------------|
| pre-training     | MNIST-A + UCI-A | uniform (no shortcut)    | 8 colours, rot +-25, scale 0.7-1.1 |
| ID train/val/test| MNIST-B/C | the class's own texture w.p. p | white, rot +-5, scale 0.95-1.05 |

Each validation digit is rendered ``val_renders`` times (a fresh texture, colour and pose each time).
| OOD background   | MNIST test digits | never the class's texture | ID style                 |
| OOD source       | UCI-B   | uniform                          | ID style                      |
| OOD style        | MNIST test digits | uniform                | coloured, rot +-30, scale 0.65-0.85 |

Generated sets are cached under ``<cache>/worlds/<hash of the data fields>/data.pt`` (tensors only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from robusttune.cache import atomic_write, stable_hash
from robusttune.config import OodShift, WorldConfig
from robusttune.data.mini import digits, render
from robusttune.errors import DataError

log = logging.getLogger(__name__)

_SPLIT_SALT = {"train": 1, "val": 2, "test": 3, "background": 4, "source": 5, "style": 6, "pools": 7}


@dataclass(frozen=True)
class ImageSet:
    """Labelled uint8 images held in memory; ``textures`` are the background ids (for checks and analysis)."""

    name: str
    images: Tensor  # (N, 3, H, W) uint8
    labels: Tensor  # (N,) int64
    textures: Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class WorldData:
    config: WorldConfig
    train: ImageSet
    val: ImageSet
    test: ImageSet
    ood: dict[str, ImageSet]  # shift name -> set
    pretrain_glyphs: Tensor  # (M, 28, 28) float in [0, 1], MNIST-A then UCI-A
    pretrain_labels: Tensor  # (M,)


def _generator(config: WorldConfig, split: str) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed * 1000 + _SPLIT_SALT[split])


def build_world(config: WorldConfig, cache_dir: Path) -> WorldData:
    """Generate the world's image sets from the shipped digits (deterministic for a config)."""
    mnist, mnist_labels = digits.load_mnist(cache_dir)
    uci, uci_labels = digits.load_uci()
    pools = _generator(config, "pools")
    pre_m, train_i, val_i, test_i = digits.split_indices(
        len(mnist), [config.n_pretrain_mnist, config.n_train, config.n_val, config.n_test], pools)
    pre_u, source_i = digits.split_indices(len(uci), [config.n_pretrain_uci, config.n_ood_source], pools)
    size, canvas, p = config.image_size, config.canvas_size, config.background_correlation

    def make(name: str, glyphs: Tensor, labels: Tensor, kind: str, style: render.Style) -> ImageSet:
        g = _generator(config, name)
        if kind == "correlated":
            tex = render.correlated_textures(labels, p, g)
        elif kind == "never_own":
            tex = render.never_own_textures(labels, g)
        else:
            tex = render.uniform_textures(len(labels), g)
        colours = render.digit_colours(len(labels), style, g)
        images = render.render(glyphs, tex, colours, style, canvas=canvas, size=size, g=g)
        return ImageSet(name=name, images=images, labels=labels.clone(), textures=tex)

    recipes = {
        OodShift.BACKGROUND: (mnist[test_i], mnist_labels[test_i], "never_own", render.ID_STYLE),
        OodShift.SOURCE: (uci[source_i], uci_labels[source_i], "uniform", render.ID_STYLE),
        OodShift.STYLE: (mnist[test_i], mnist_labels[test_i], "uniform", render.OOD_STYLE),
    }
    ood = {shift.value: make(shift.value, *recipes[shift]) for shift in config.ood_shifts}
    return WorldData(
        config=config,
        train=make("train", mnist[train_i], mnist_labels[train_i], "correlated", render.ID_STYLE),
        val=make("val", mnist[val_i].repeat(config.val_renders, 1, 1), mnist_labels[val_i].repeat(config.val_renders),
                 "correlated", render.ID_STYLE),
        test=make("test", mnist[test_i], mnist_labels[test_i], "correlated", render.ID_STYLE),
        ood=ood,
        pretrain_glyphs=torch.cat([mnist[pre_m], uci[pre_u]]),
        pretrain_labels=torch.cat([mnist_labels[pre_m], uci_labels[pre_u]]),
    )


def world_dir(config: WorldConfig, cache_dir: Path) -> Path:
    return cache_dir / "worlds" / stable_hash(config.data_key())


def _to_state(world: WorldData) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {"pretrain_glyphs": world.pretrain_glyphs, "pretrain_labels": world.pretrain_labels}
    for key, image_set in [("train", world.train), ("val", world.val), ("test", world.test),
                           *[(f"ood.{k}", v) for k, v in world.ood.items()]]:
        state[f"{key}.images"] = image_set.images
        state[f"{key}.labels"] = image_set.labels
        state[f"{key}.textures"] = image_set.textures
    return state


def _from_state(config: WorldConfig, state: dict[str, Tensor]) -> WorldData:
    def take(key: str, name: str) -> ImageSet:
        return ImageSet(name, state[f"{key}.images"], state[f"{key}.labels"], state[f"{key}.textures"])

    return WorldData(
        config=config, train=take("train", "train"), val=take("val", "val"), test=take("test", "test"),
        ood={shift.value: take(f"ood.{shift.value}", shift.value) for shift in config.ood_shifts},
        pretrain_glyphs=state["pretrain_glyphs"], pretrain_labels=state["pretrain_labels"],
    )


def load_world(config: WorldConfig, cache_dir: Path) -> WorldData:
    """The world's data from the cache, generated and cached (atomically) on first use."""
    path = world_dir(config, cache_dir) / "data.pt"
    if path.is_file():
        try:
            return _from_state(config, torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:  # a corrupt cache entry is regenerated, never trusted
            log.warning("regenerating corrupt world cache %s (%s)", path, type(error).__name__)
    try:
        world = build_world(config, cache_dir)
        atomic_write(path, lambda tmp: torch.save(_to_state(world), tmp))
    except OSError as error:
        raise DataError(f"{path.parent}: cannot write the world cache ({error.strerror})") from None
    return world
