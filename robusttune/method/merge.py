"""Post-hoc merges of fine-tuned models that share one zero-shot start: pure functions of state dicts.

- **Uniform soup** (Wortsman et al., ICML 2022, "Model soups"): the plain average of the models' weights.
- **Greedy soup** (the same paper, Recipe 1): the models in decreasing held-out (ID validation) accuracy; the first
  starts the soup; each next one is kept if the soup with it is at least as accurate on the held-out split as the
  soup without it (the paper's Algorithm 1 says ">="; the official ``main.py`` of mlfoundations/model-soups keeps
  it only on a strict gain: ``strict=True``). Adding the k+1-th ingredient to a soup of k is
  ``soup * k/(k+1) + new / (k+1)``, as that script computes it.
- **Model Stock** (Jang et al., ECCV 2024): per layer, with the pre-trained weights w0 and N fine-tuned ones,
  ``w = t * mean(w_i) + (1 - t) * w0`` where ``t = N cos(theta) / (1 + (N - 1) cos(theta))`` and theta is the angle
  between the fine-tuning updates ``w_i - w0`` (for N > 2, the mean cosine over pairs, as the paper's appendix
  assumes the angles equal). The official repository (naver-ai/model-stock) holds no code yet; this is checked
  against the paper's equations. A layer whose updates are zero or point apart (cos <= 0) keeps w0 (t = 0).

Non-float entries (e.g. integer buffers) are taken from the first model: averaging them has no meaning.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

StateDict = Mapping[str, Tensor]


def _check_same_keys(states: Sequence[StateDict]) -> None:
    if not states:
        raise ValueError("a merge needs at least one model")
    keys = set(states[0])
    for state in states[1:]:
        if set(state) != keys:
            different = sorted(keys ^ set(state))[:3]
            raise ValueError(f"models to merge hold different weights (e.g. {different})")


def uniform_soup(states: Sequence[StateDict]) -> dict[str, Tensor]:
    """The average of the models' weights (in float64, cast back to each weight's dtype)."""
    _check_same_keys(states)
    merged = {}
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            merged[key] = (sum(s[key].double() for s in states) / len(states)).to(first.dtype)
        else:
            merged[key] = first.clone()
    return merged


def add_to_soup(soup: StateDict, size: int, ingredient: StateDict) -> dict[str, Tensor]:
    """The soup of ``size`` models with ``ingredient`` added: ``soup * size/(size+1) + ingredient/(size+1)``."""
    return {k: (v * (size / (size + 1.0)) + ingredient[k] * (1.0 / (size + 1))).to(v.dtype)
            if torch.is_floating_point(v) else v.clone() for k, v in soup.items()}


def greedy_soup(candidates: Sequence[tuple[str, float]], load: Callable[[str], StateDict],
                held_out: Callable[[StateDict], float], *, strict: bool = False
                ) -> tuple[dict[str, Tensor], list[str], list[dict[str, object]]]:
    """``candidates``: ``(name, held-out accuracy)`` of each model; ``load(name)`` its weights; ``held_out(state)``
    a soup's held-out accuracy. Returns the soup, the names kept (in the order added) and one row per decision
    (``name``, ``soup_accuracy`` with it, ``best_before``, ``kept``). Models are tried in decreasing accuracy (ties:
    by name, so the order is reproducible)."""
    if not candidates:
        raise ValueError("a greedy soup needs at least one model")
    ordered = sorted(candidates, key=lambda c: (-c[1], c[0]))
    first, best = ordered[0]
    soup, kept = dict(load(first)), [first]
    decisions: list[dict[str, object]] = [{"name": first, "soup_accuracy": best, "best_before": None, "kept": True}]
    for name, _ in ordered[1:]:
        trial = add_to_soup(soup, len(kept), load(name))
        accuracy = held_out(trial)
        keep = accuracy > best if strict else accuracy >= best
        decisions.append({"name": name, "soup_accuracy": accuracy, "best_before": best, "kept": keep})
        if keep:
            soup, best = trial, accuracy
            kept.append(name)
    return soup, kept, decisions


def stock_ratio(cosine: float, n: int) -> float:
    """Model Stock's interpolation ratio ``t = N cos / (1 + (N - 1) cos)`` (0 for cos <= 0)."""
    if cosine <= 0:
        return 0.0
    return n * cosine / (1 + (n - 1) * cosine)


def update_cosine(pretrained: Tensor, finetuned: Sequence[Tensor]) -> float:
    """The mean cosine over pairs of the updates ``w_i - w0`` of one layer (0 where an update is zero)."""
    updates = [(w.double() - pretrained.double()).flatten() for w in finetuned]
    cosines = []
    for a, b in itertools.combinations(updates, 2):
        norms = float(a.norm() * b.norm())
        cosines.append(float(a @ b) / norms if norms > 0 else 0.0)
    return sum(cosines) / len(cosines)


def model_stock(pretrained: StateDict, finetuned: Sequence[StateDict]) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Model Stock of ``finetuned`` (at least two) around ``pretrained``: the merged weights and each layer's t."""
    if len(finetuned) < 2:
        raise ValueError("Model Stock needs at least two fine-tuned models")
    _check_same_keys([pretrained, *finetuned])
    merged, ratios = {}, {}
    for key, w0 in pretrained.items():
        if not torch.is_floating_point(w0):
            merged[key] = finetuned[0][key].clone()
            continue
        layers = [state[key] for state in finetuned]
        t = stock_ratio(update_cosine(w0, layers), len(layers))
        average = sum(w.double() for w in layers) / len(layers)
        merged[key] = (t * average + (1 - t) * w0.double()).to(w0.dtype)
        ratios[key] = t
    return merged, ratios
