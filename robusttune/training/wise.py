"""WiSE-FT curves: evaluate the weight interpolation between zero-shot and fine-tuned weights."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from robusttune.data.sets import EvalSet
from robusttune.method.wise import DEFAULT_ALPHAS, interpolate
from robusttune.training.evaluate import evaluate_state_dict


def wise_curve(model: nn.Module, zero_shot: Mapping[str, Tensor], finetuned: Mapping[str, Tensor],
               eval_sets: Iterable[EvalSet], *, alphas: Sequence[float] = DEFAULT_ALPHAS, batch_size: int = 256) -> list[dict[str, Any]]:
    """One row ``{"alpha": a, <metric>: accuracy, ...}`` per alpha (alpha 0 = zero-shot, 1 = fine-tuned)."""
    sets = list(eval_sets)
    rows = []
    for alpha in alphas:
        merged = interpolate(zero_shot, finetuned, float(alpha))
        rows.append({"alpha": float(alpha), **evaluate_state_dict(model, merged, sets, batch_size=batch_size)})
    return rows
