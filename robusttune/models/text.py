"""The frozen text tower a classifier came from, for methods that read text features (Lipsum-FT, FLYP).

``ImageClassifier.text`` holds it (``build_classifier`` sets it): a copy of the CLIP without its image tower, in
eval mode with gradients off, with the tokenizer (its start / end ids and context length), the pre-trained logit
scale and the class names and templates the zero-shot head was built from. It is not part of the classifier's
weights (its state dict, checkpoints, WiSE-FT and merges see the image tower and the head only) and copies of a
classifier share it: it is never trained. A method that trains a text tower (FLYP) trains a ``trainable_copy``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
    tokenizer: Callable[[Sequence[str]], Tensor]
    classnames: tuple[str, ...]
    templates: tuple[str | Callable[[str], str], ...]  # the zero-shot head's prompts ("a photo of a {}.")
    _tokens: dict[str, Tensor] = field(default_factory=dict, repr=False)  # caption_tokens, by device

    def __deepcopy__(self, memo) -> TextSide:
        return self  # frozen: every copy of a classifier shares the one text tower

    def to(self, device: torch.device | str) -> TextSide:
        self.tower.to(device)
        return self

    @torch.no_grad()
    def encode(self, tokens: Tensor) -> Tensor:
        """L2-normalised text features (fp32) of token sequences ``(M, context_length)``."""
        return F.normalize(self.tower.encode_text(tokens).float(), dim=-1)

    def trainable_copy(self) -> nn.Module:
        """An independent copy of the text tower (logit scale included) with gradients on, in train mode."""
        tower = copy.deepcopy(self.tower)
        return tower.train().requires_grad_(True)

    def caption_tokens(self, device: torch.device | str) -> Tensor:
        """The tokens ``(classes, templates, context_length)`` of every caption (template ``t`` filled with class
        ``c``), on ``device``; tokenised once (a training step then picks its captions without the host)."""
        key = str(torch.device(device))
        if key not in self._tokens:
            texts = [prompt(t, c) for c in self.classnames for t in self.templates]
            tokens = self.tokenizer(texts).view(len(self.classnames), len(self.templates), -1)
            self._tokens[key] = tokens.to(device)
        return self._tokens[key]

    @torch.no_grad()
    def head_weights(self, tower: nn.Module, device: torch.device | str, *, batch_classes: int = 10) -> Tensor:
        """The zero-shot head ``(C, D)`` of ``tower`` (this one or a fine-tuned copy) on the classes and templates,
        computed as the classifier's head was (open_clip's ``build_zero_shot_classifier``: per class the mean of its
        L2-normalised caption embeddings, normalised, times ``exp(logit_scale)``; in fp32, ``batch_classes`` at a
        time), on ``device``."""
        tokens = self.caption_tokens(device)
        was_training = tower.training
        tower.eval()
        try:
            rows = []
            for chunk in tokens.split(batch_classes):
                embedded = F.normalize(tower.encode_text(chunk.flatten(0, 1)).float(), dim=-1)
                rows.append(F.normalize(embedded.view(*chunk.shape[:2], -1).mean(dim=1), dim=-1))
        finally:
            tower.train(was_training)
        return (tower.logit_scale.exp().float() * torch.cat(rows)).detach()


def prompt(template: str | Callable[[str], str], classname: str) -> str:
    """A template filled with a class name (a format string with ``{}`` or a callable, as open_clip takes them)."""
    return template.format(classname) if isinstance(template, str) else template(classname)


def text_side(model: nn.Module, tokenizer, classnames: Sequence[str],
              templates: Sequence[str | Callable[[str], str]]) -> TextSide:
    """The frozen text side of an open_clip CLIP (copied without its image tower, which the classifier shares)."""
    visual = model.visual
    model.visual = None
    try:
        tower = copy.deepcopy(model)
    finally:
        model.visual = visual
    tower.eval().requires_grad_(False)
    return TextSide(tower, int(tokenizer.sot_token_id), int(tokenizer.eot_token_id), int(tokenizer.context_length),
                    float(model.logit_scale.detach().exp()), tokenizer, tuple(classnames), tuple(templates))
