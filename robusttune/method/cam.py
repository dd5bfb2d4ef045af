"""Class activation maps over ViT patches, computed from activations captured in the clean forward.

Both functions take the captured activations and the gradients of ``sum(logit[y])`` with respect to
them (one ``torch.autograd.grad`` call, no parameter gradients) and return a non-negative ``(N, P)`` map.
"""

from __future__ import annotations

import torch
from torch import Tensor


def attention_relevance(attentions: list[Tensor], grads: list[Tensor]) -> Tensor:
    """Chefer et al.'s relevance: ``R = I``; per block ``A = mean_heads(clamp(grad * attn, min=0))``,
    ``R = R + A @ R``; the CAM is the class token's row over the patches, ``R[cls, 1:]``.

    ``attentions[i]`` and ``grads[i]`` are ``(N, heads, T, T)`` with token 0 the class token.
    """
    if not attentions or len(attentions) != len(grads):
        raise ValueError("attention_relevance needs one gradient per captured attention map")
    # accumulated in fp32 whatever the forward's precision: the product over blocks loses bf16's few mantissa bits
    attentions, grads = [a.float() for a in attentions], [g.float() for g in grads]
    batch, _, tokens, _ = attentions[0].shape
    relevance = torch.eye(tokens, dtype=attentions[0].dtype, device=attentions[0].device).expand(batch, tokens, tokens)
    for attention, grad in zip(attentions, grads):
        contribution = (grad * attention).clamp(min=0).mean(dim=1)
        relevance = relevance + contribution @ relevance
    return relevance[:, 0, 1:]


def grad_cam(tokens: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM on token activations ``(N, T, D)`` (the last block's ``ln_1`` output), as the official code computes
    it: channel weights are the gradients summed over *all* tokens, the class token included; the map is
    ``relu(sum_c w_c * A_c)`` at each patch token."""
    tokens, grads = tokens.float(), grads.float()
    weights = grads.sum(dim=1, keepdim=True)
    return (weights * tokens).sum(dim=-1).clamp(min=0)[:, 1:]
