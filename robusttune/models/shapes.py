"""A classifier built from open_clip's model config alone: for counting memory (``robusttune.search.memory``) and
for measuring steps, without loading weights or building the text tower.

``fake=True`` builds it under torch's ``FakeTensorMode``: every tensor has its shape, dtype and device but no data,
so a ViT-L/14 is built, and its forwards and backward traced, in seconds and without its gigabytes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from robusttune.models.classifier import ImageClassifier


@dataclass(frozen=True)
class VisionShape:
    """What decides a vision tower's memory: its blocks, width, heads, MLP width, tokens and image size."""

    model: str
    layers: int
    width: int
    heads: int
    mlp_width: int
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    output_dim: int
    quick_gelu: bool

    @property
    def tokens(self) -> int:
        (h, w), (ph, pw) = self.image_size, self.patch_size
        return (h // ph) * (w // pw) + 1

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "tokens": self.tokens}


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int | float) else (int(value[0]), int(value[1]))


def vision_shape(name: str) -> VisionShape:
    """A model's vision tower from open_clip's JSON config (no weights, nothing built)."""
    import open_clip

    from robusttune.errors import ModelError

    config = open_clip.get_model_config(name)
    if config is None:
        raise ModelError(f"unknown open_clip model name '{name}'")
    vision = config["vision_cfg"]
    if "timm_model_name" in vision and vision.get("timm_model_name"):
        raise ModelError(f"{name}: a timm vision tower is not supported (robusttune fine-tunes open_clip ViTs)")
    width = int(vision.get("width", 768))
    head_width = int(vision.get("head_width", 64))
    return VisionShape(name, int(vision["layers"]), width, width // head_width,
                       int(width * float(vision.get("mlp_ratio", 4.0))), _pair(vision.get("image_size", 224)),
                       _pair(vision.get("patch_size", 16)), int(config["embed_dim"]), bool(config.get("quick_gelu")))


def fake_mode():
    """torch's ``FakeTensorMode`` (shapes without data), tolerant of real tensors passed in."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def shaped_classifier(name: str, *, num_classes: int = 1000, mode: Any = None) -> ImageClassifier:
    """The ``ImageClassifier`` of open_clip model ``name``: its vision tower alone (random weights) and a random,
    normalised head of ``num_classes`` rows, as the calibration builds it. Under ``mode`` (``fake_mode()``) its
    tensors are fake: built in about a second at any size."""
    import open_clip
    from open_clip.model import _build_vision_tower

    config = open_clip.get_model_config(name)
    with mode if mode is not None else contextlib.nullcontext():
        visual = _build_vision_tower(config["embed_dim"], config["vision_cfg"], bool(config.get("quick_gelu")))
        head = torch.nn.functional.normalize(torch.randn(num_classes, config["embed_dim"]), dim=-1) * 100
        preprocess = getattr(visual, "preprocess_cfg", None) or {}
        mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
        return ImageClassifier(visual, head, mean=mean, std=std)
