"""WiSE-FT: ``theta(alpha) = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned`` over every key."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from robusttune.errors import CheckpointError

DEFAULT_ALPHAS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def interpolate(zero_shot: Mapping[str, Tensor], finetuned: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """Interpolate two state dicts with the same keys; non-float entries (counters) come from ``finetuned``."""
    if set(zero_shot) != set(finetuned):
        missing = sorted(set(zero_shot) ^ set(finetuned))[:3]
        raise CheckpointError(f"state dicts differ in keys, e.g. {missing}")
    merged = {}
    for key, theta_0 in zero_shot.items():
        theta_1 = finetuned[key]
        if theta_0.shape != theta_1.shape:
            raise CheckpointError(f"state dicts differ in the shape of {key}: {tuple(theta_0.shape)} vs {tuple(theta_1.shape)}")
        if torch.is_floating_point(theta_1):
            merged[key] = (1 - alpha) * theta_0.to(theta_1.dtype) + alpha * theta_1
        else:
            merged[key] = theta_1.clone()
    return merged
