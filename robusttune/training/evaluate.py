"""Accuracy on the ID and OOD evaluation sets (batched, no grad, deterministic)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from robusttune.data.sets import EvalSet
from robusttune.errors import DataError


def ood_mean(metrics: Mapping[str, float]) -> float:
    """The mean over every ``ood_<set>`` accuracy (excluding ``ood_mean`` itself)."""
    values = [v for k, v in metrics.items() if k.startswith("ood_") and k != "ood_mean"]
    return float(sum(values) / len(values)) if values else float("nan")


@torch.inference_mode()
def accuracy(model: nn.Module, eval_set: EvalSet, *, batch_size: int = 256, device: str | torch.device = "cpu") -> float:
    correct, total = 0, 0
    for images, labels in eval_set.source.batches(batch_size):
        logits = eval_set.projection(model(images.to(device)))
        correct += int((logits.argmax(dim=1).cpu() == labels).sum())
        total += int(labels.shape[0])
    if total == 0:
        raise DataError(f"evaluation set for {eval_set.metric} is empty")
    return correct / total


def evaluate(model: nn.Module, eval_sets: Iterable[EvalSet], *, batch_size: int = 256,
             device: str | torch.device = "cpu") -> dict[str, float]:
    """``{metric: accuracy}`` for every set, plus ``ood_mean`` when there are OOD sets. Restores train mode."""
    was_training = model.training
    model.eval()
    try:
        metrics = {s.metric: accuracy(model, s, batch_size=batch_size, device=device) for s in eval_sets}
    finally:
        model.train(was_training)
    if any(k.startswith("ood_") for k in metrics):
        metrics["ood_mean"] = ood_mean(metrics)
    return metrics


def evaluate_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], eval_sets: Iterable[EvalSet],
                        **kwargs) -> dict[str, float]:
    """Evaluate ``model`` with ``state_dict`` loaded, then put the model's own weights back."""
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state_dict)
    try:
        return evaluate(model, eval_sets, **kwargs)
    finally:
        model.load_state_dict(original)
