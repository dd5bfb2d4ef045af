"""Losses: ``w_task * CE(student(x), y) + w_distill * distill(student(x_cf), teacher(x_cf))``.

Distillation weights do not carry across models: the tiny world's features are ~8x larger per element
than CLIP ViT-B/32's. ``feature_mse(..., normalise=True)`` divides the MSE by the teacher features'
variance (per dimension over the batch, averaged), which makes the loss scale-free, so one weight means
the same on every model; this is robusttune's default. ``normalise=False`` is the paper's plain MSE
(use it with the paper's ``w_distill = 30`` on ViT-B/32).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def feature_mse(student: Tensor, teacher: Tensor, *, normalise: bool) -> Tensor:
    mse = F.mse_loss(student, teacher)
    if not normalise:
        return mse
    spread = teacher.var(dim=0, unbiased=False).mean() if teacher.shape[0] > 1 else teacher.pow(2).mean()
    return mse / spread.detach().clamp_min(1e-8)


def logit_kd(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float) -> Tensor:
    """KL(teacher || student) on temperature-softened distributions, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
