"""WiSE-FT curves: evaluate the weight interpolation between zero-shot and fine-tuned weights."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

from robusttune.data.sets import EvalSet
from robusttune.method.wise import DEFAULT_ALPHAS, interpolate
from robusttune.models.classifier import ImageClassifier
from robusttune.training.evaluate import Evaluator, evaluate_state_dict


def wise_curve(model: ImageClassifier, zero_shot: Mapping[str, Tensor], finetuned: Mapping[str, Tensor],
               eval_sets: Iterable[EvalSet] | Evaluator, *, alphas: Sequence[float] = DEFAULT_ALPHAS) -> list[dict[str, Any]]:
    """One row ``{"alpha": a, <metric>: accuracy, ...}`` per alpha (alpha 0 = zero-shot, 1 = fine-tuned)."""
    evaluator = eval_sets if isinstance(eval_sets, Evaluator) else Evaluator(eval_sets)
    return [{"alpha": float(alpha), **evaluate_state_dict(model, interpolate(zero_shot, finetuned, float(alpha)), evaluator)}
            for alpha in alphas]
