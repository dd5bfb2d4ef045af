"""WiSE-FT curves: evaluate the weight interpolation between zero-shot and fine-tuned weights."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from robusttune.config import TaskSpec, default_world
from robusttune.data.sets import EvalSet
from robusttune.errors import CheckpointError
from robusttune.metrics import WISE_CURVE
from robusttune.method.wise import DEFAULT_ALPHAS, interpolate
from robusttune.models.classifier import ImageClassifier
from robusttune.training.evaluate import Evaluator, evaluate_state_dict


def wise_curve(model: ImageClassifier, zero_shot: Mapping[str, Tensor], finetuned: Mapping[str, Tensor],
               eval_sets: Iterable[EvalSet] | Evaluator, *, alphas: Sequence[float] = DEFAULT_ALPHAS) -> list[dict[str, Any]]:
    """One row ``{"alpha": a, <metric>: accuracy, ...}`` per alpha (alpha 0 = zero-shot, 1 = fine-tuned)."""
    evaluator = eval_sets if isinstance(eval_sets, Evaluator) else Evaluator(eval_sets)
    return [{"alpha": float(alpha), **evaluate_state_dict(model, interpolate(zero_shot, finetuned, float(alpha)), evaluator)}
            for alpha in alphas]


@dataclass(frozen=True)
class WiseProbe:
    """A training loop's probe (``robusttune.training.loop.Probe``): at each evaluation, the WiSE-FT curve of the
    current weights at ``alphas``, from the run's start (its frozen teacher: the zero-shot model), on the
    evaluation's own images; the row gets it as ``wise_curve``."""

    alphas: tuple[float, ...]

    def __call__(self, student: ImageClassifier, teacher: ImageClassifier, evaluator: Evaluator) -> dict[str, Any]:
        current = {k: v.detach().clone() for k, v in student.state_dict().items()}
        return {WISE_CURVE: wise_curve(student, teacher.state_dict(), current, evaluator, alphas=self.alphas)}


# Task keys that name or run a task without changing its weights: two checkpoints may differ in them
_RUN_ONLY_KEYS = ("world.name", "imagenet.num_workers", "imagenet.allow_download")


def checkpoint_weights(payload: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    """A checkpoint's ``model`` state dict, refused in one line when it is missing or holds a non-finite float
    (NaN/inf weights would give every alpha the same meaningless score)."""
    state = payload.get("model")
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: holds no model weights (no 'model' state dict)")
    for key, value in state.items():
        if torch.is_floating_point(value) and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: weight {key} holds non-finite values (NaN/inf); not interpolated")
    return dict(state)


def _task_identity(spec: TaskSpec) -> dict[str, Any]:
    """The task's keys that decide its weights, flattened to dotted names (no world = the default world)."""
    data = spec.to_dict()
    if data.get("imagenet") is None and data.get("world") is None:
        data["world"] = default_world().to_dict()
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", {k: v for k, v in data.items() if v is not None})
    return {k: v for k, v in flat.items() if k not in _RUN_ONLY_KEYS}


def check_same_task(finetuned: TaskSpec, zero_shot: TaskSpec, finetuned_source: str, zero_shot_source: str) -> None:
    """Refuse, in one line naming the first key that differs, a zero-shot checkpoint of another task: WiSE-FT
    interpolates between two points of one fine-tuning path, not between unrelated models."""
    a, b = _task_identity(finetuned), _task_identity(zero_shot)
    if a == b:
        return
    kind_a, kind_b = ("ImageNet" if spec.imagenet is not None else "a mini world" for spec in (finetuned, zero_shot))
    if kind_a != kind_b:
        difference = f"{kind_a} vs {kind_b}"
    else:
        key = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        difference = f"{key} {_shown(a.get(key))} vs {_shown(b.get(key))}"
    raise CheckpointError(f"{finetuned_source} and {zero_shot_source} were trained on different tasks ({difference}); "
                          f"WiSE-FT needs the same zero-shot start")


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
