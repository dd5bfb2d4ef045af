"""``lipsum``: Lipsum-FT (Nam et al., ICLR 2024, "Lipsum-FT: Robust Fine-Tuning of Zero-Shot Models Using Random
Text Guidance"), as its official code computes it (cs-giung/lipsum-ft, scripts/Lipsum-FT.py, the loss function):

- each step, ``M`` random token sequences ``[SOT] + L ids drawn uniformly below SOT + [EOT]`` (no special token in
  between), the same on every device, through the **frozen** pre-trained text tower: L2-normalised features ``T``;
- the fine-tuned and the zero-shot image features on the clean images, L2-normalised, ``f`` and ``f0``; with the
  pre-trained logit scale ``s``: ``source = s f T^T`` and ``target = s f0 T^T`` (B x M);
- ``R = mean over the batch of sum over the M texts of (source - target)^2 / (2 M)``;
- ``loss = CE(head(f), y) + reg_weight * R`` (the head starts as the zero-shot head and is trained).

Defaults as the official script's: ``reg_weight`` 1, ``texts`` (M) 80, ``text_length`` (L) 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robusttune.errors import ConfigError
from robusttune.method.step import MethodStep

_TEXT_SALT = 2_654_435_761


def random_token_sequences(count: int, length: int, generator: torch.Generator, *, sot: int, eot: int,
                           context_length: int) -> Tensor:
    """``count`` sequences ``[sot] + length ids uniform in [0, sot) + [eot]``, zero-padded to ``context_length``."""
    tokens = torch.zeros(count, context_length, dtype=torch.long)
    tokens[:, 0] = sot
    tokens[:, 1:length + 1] = torch.randint(0, sot, (count, length), generator=generator)
    tokens[:, length + 1] = eot
    return tokens


def lipsum_regulariser(student_features: Tensor, teacher_features: Tensor, text_features: Tensor,
                       logit_scale: float) -> Tensor:
    """``mean_b sum_m (s f_b.t_m - s f0_b.t_m)^2 / (2 M)`` with L2-normalised image features ``f``, ``f0``."""
    source = logit_scale * F.normalize(student_features, dim=-1) @ text_features.T
    target = logit_scale * F.normalize(teacher_features, dim=-1) @ text_features.T
    return ((source - target) ** 2).sum(dim=-1).div(2 * text_features.shape[0]).mean()


class Lipsum(MethodStep):
    def __init__(self, config, student, teacher, placement):
        super().__init__(config, student, teacher, placement)
        self.text = getattr(student, "text", None)
        if self.text is None:
            raise ConfigError("method lipsum needs the text tower of the CLIP the classifier came from")
        if self.knobs.text_length + 2 > self.text.context_length:
            raise ConfigError(f"method lipsum: text_length + 2 must be <= the text tower's context length "
                              f"({self.text.context_length}), got {self.knobs.text_length}")
        self.text.to(student.device)
        self._texts: tuple[int, Tensor] | None = None  # (step, its text features): one draw per step

    def text_features(self, step: int) -> Tensor:
        if self._texts is None or self._texts[0] != step:
            g = torch.Generator().manual_seed(self.config.seed * _TEXT_SALT + step)  # every micro-batch of the step
            tokens = random_token_sequences(self.knobs.texts, self.knobs.text_length, g, sot=self.text.sot,
                                            eot=self.text.eot, context_length=self.text.context_length)
            with self.placement.autocast():
                self._texts = (step, self.text.encode(self.placement.upload(tokens)))
        return self._texts[1]

    def loss(self, images, labels, g, *, step=0):
        with self.placement.autocast():
            clean = self.student.run(images)
        with torch.inference_mode(), self.placement.autocast():
            zero_shot = self.teacher.run(images).features
        task = F.cross_entropy(clean.logits.float(), labels)
        # inference tensors cannot be saved for backward: a plain fp32 copy of the teacher's features
        reg = lipsum_regulariser(clean.features.float(), zero_shot.float().clone(), self.text_features(step),
                                 self.text.logit_scale)
        return task + self.knobs.reg_weight * reg, {"loss_task": task.detach(), "loss_lipsum": reg.detach()}
