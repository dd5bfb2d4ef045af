"""Learning-rate schedules as multiplicative factors of the base rate (for ``torch.optim.lr_scheduler.LambdaLR``)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
