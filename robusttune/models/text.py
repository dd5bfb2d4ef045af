"""The frozen text tower a classifier came from, for methods that read text features (Lipsum-FT).

``ImageClassifier.text`` holds it (``build_classifier`` sets it): a copy of the CLIP without its image tower, in
eval mode with gradients off, with the tokenizer's start / end ids, its context length and the pre-trained logit
scale. It is not part of the classifier's weights (its state dict, checkpoints, WiSE-FT and merges see the image
tower and the head only) and copies of a classifier share it: it is never trained.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(eq=False)
class TextSide:
    tower: nn.Module  # open_clip's CLIP with ``visual`` removed: ``encode_text`` only
    sot: int  # start-of-text id
    eot: int  # end-of-text id (the largest: the tower pools at the argmax token)
    context_length: int
    logit_scale: float  # exp(logit_scale) of the pre-trained CLIP

    def __deepcopy__(self, memo) -> TextSide:
        return self  # frozen: every copy of a classifier shares the one text tower

    def to(self, device: torch.device | str) -> TextSide:
        self.tower.to(device)
        return self

    @torch.no_grad()
    def encode(self, tokens: Tensor) -> Tensor:
        """L2-normalised text features (fp32) of token sequences ``(M, context_length)``."""
        return F.normalize(self.tower.encode_text(tokens).float(), dim=-1)


def text_side(model: nn.Module, tokenizer) -> TextSide:
    """The frozen text side of an open_clip CLIP (copied without its image tower, which the classifier shares)."""
    visual = model.visual
    model.visual = None
    try:
        tower = copy.deepcopy(model)
    finally:
        model.visual = visual
    tower.eval().requires_grad_(False)
    return TextSide(tower, int(tokenizer.sot_token_id), int(tokenizer.eot_token_id), int(tokenizer.context_length),
                    float(model.logit_scale.detach().exp()))
