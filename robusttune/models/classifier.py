"""The image classifier that is fine-tuned: a CLIP image tower plus a zero-shot linear head."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robusttune.config import CamMethod
from robusttune.data.sets import normalise
from robusttune.models.vit import VitPass, check_supported, grid_size, patch_size, vit_forward


@dataclass
class ClassifierPass:
    features: Tensor  # (N, D) image embedding before L2 normalisation
    logits: Tensor  # (N, C)
    vit: VitPass


class ImageClassifier(nn.Module):
    """``logits = head(normalize(visual(x)))`` where the head starts as ``logit_scale.exp() * class_embeddings``.

    This is WiSE-FT's classifier layout; every key of its state dict (tower and head) is interpolated.
    """

    def __init__(self, visual: nn.Module, head_weight: Tensor, *, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.visual = check_supported(visual)
        num_classes, dim = head_weight.shape
        self.head = nn.Linear(dim, num_classes, bias=True)
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
            self.head.bias.zero_()
        # The preprocessing statistics travel with the model so images are normalised consistently.
        self.image_mean = tuple(float(m) for m in mean)
        self.image_std = tuple(float(s) for s in std)
        # on the model's device, so that normalising a batch copies nothing to it (not part of the weights)
        self.register_buffer("_mean", torch.tensor(self.image_mean), persistent=False)
        self.register_buffer("_std", torch.tensor(self.image_std), persistent=False)
        self.text = None  # robusttune.models.text.TextSide: set by build_classifier (not part of the weights)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def grid_size(self) -> tuple[int, int]:
        return grid_size(self.visual)

    @property
    def patch_size(self) -> tuple[int, int]:
        return patch_size(self.visual)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def prepare(self, images: Tensor) -> Tensor:
        """A loader's uint8 batch -> normalised float on the model's device (non-blocking from pinned memory)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"prepare expects a uint8 batch, got {images.dtype}")
        return normalise(images.to(self.device, non_blocking=True), self._mean, self._std)

    def forward_features(self, images: Tensor) -> Tensor:
        return vit_forward(self.visual, images).features

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(F.normalize(features, dim=-1))

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))

    def run(
        self,
        images: Tensor,
        *,
        drop_patches: Tensor | None = None,
        cam: CamMethod | None = None,
    ) -> ClassifierPass:
        """One forward that returns features, logits and the activations ``cam`` needs (attention probabilities
        for ``relevance``, the last block's ``ln_1`` tokens for ``gradcam``; nothing when None)."""
        vit = vit_forward(
            self.visual, images, drop_patches=drop_patches,
            capture_attention=cam is CamMethod.RELEVANCE, capture_last_ln1=cam is CamMethod.GRADCAM,
        )
        return ClassifierPass(features=vit.features, logits=self.forward_head(vit.features), vit=vit)


def frozen_copy(model: ImageClassifier) -> ImageClassifier:
    """The teacher: an independent copy in eval mode with gradients off."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
