"""A forward pass over open_clip's ``VisionTransformer`` that exposes what the method needs.

open_clip 3.3 calls ``nn.MultiheadAttention`` with ``need_weights=False``, so attention probabilities
are never materialised. We re-run the same modules (same parameters, same order of operations) with a
hand-written attention that can

* keep the attention probabilities in the autograd graph (for the relevance CAM),
* keep the last block's ``ln_1`` output tokens in the graph (for Grad-CAM),
* drop chosen patch tokens from attention as keys (the paper's "no refill": keys masked with -inf),
* checkpoint every block for backward (``checkpoint_blocks: true``; ``checkpointed_blocks``).

``check_supported`` refuses any vision tower whose structure we do not reproduce exactly, and the
test suite compares this forward with open_clip's own ``visual(x)`` on the installed version.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from robusttune.errors import ModelError


@dataclass
class VitPass:
    """The outputs of one vision forward: pooled features and, if asked, captured activations."""

    features: Tensor  # (N, D) image embedding after ln_post and proj, before L2 normalisation
    attentions: list[Tensor] = field(default_factory=list)  # per block (N, heads, T, T) probabilities
    last_ln1_tokens: Tensor | None = None  # (N, T, width) input of the last block's attention


def check_supported(visual: nn.Module) -> VisionTransformer:
    """Raise ``ModelError`` unless ``visual`` is an open_clip ViT this forward reproduces exactly."""
    if not isinstance(visual, VisionTransformer):
        raise ModelError(f"vision tower must be open_clip's VisionTransformer, got {type(visual).__name__}")
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
        raise ModelError("vision tower must pool the class token (no attentional pool, pool_type 'tok')")
    if not isinstance(visual.patch_dropout, nn.Identity):
        raise ModelError("vision towers with patch dropout are not supported (it would change the patch grid)")
    if not visual.transformer.batch_first:
        raise ModelError("vision transformer must be batch_first")
    for index, block in enumerate(visual.transformer.resblocks):
        if type(block) is not ResidualAttentionBlock or not isinstance(block.attn, nn.MultiheadAttention):
            raise ModelError(
                f"unsupported vision block type {type(block).__name__} (attention {type(getattr(block, 'attn', None)).__name__}) "
                f"at block {index}: attention capture supports open_clip ResidualAttentionBlock with nn.MultiheadAttention"
            )
        attn = block.attn
        if attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn or not attn.batch_first:
            raise ModelError(f"unsupported nn.MultiheadAttention layout at block {index}")
    return visual


def _attention(
    block: ResidualAttentionBlock, x: Tensor, key_mask: Tensor | None, keep_probs: bool
) -> tuple[Tensor, Tensor | None]:
    """Multi-head self-attention as nn.MultiheadAttention computes it; optionally returns the probabilities."""
    attn: nn.MultiheadAttention = block.attn
    batch, tokens, width = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, tokens, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    additive = None
    if key_mask is not None:
        # True = token dropped as a key; the class token is never dropped, so no row is all -inf.
        additive = torch.zeros(batch, 1, 1, tokens, dtype=x.dtype, device=x.device)
        additive = additive.masked_fill(key_mask[:, None, None, :], float("-inf"))
    probs = None
    if keep_probs:
        scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        if additive is not None:
            scores = scores + additive
        probs = scores.softmax(dim=-1)
        out = probs @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive)
    out = out.transpose(1, 2).reshape(batch, tokens, width)
    return attn.out_proj(out), probs


def _block(block: ResidualAttentionBlock, x: Tensor, key_mask: Tensor | None, keep_probs: bool,
           keep_ln1: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One residual block as open_clip computes it, with its attention probabilities and ``ln_1`` output if asked."""
    normed = block.ln_1(x)
    attended, probs = _attention(block, normed, key_mask, keep_probs=keep_probs)
    x = x + block.ls_1(attended)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, probs, normed if keep_ln1 else None


def checkpointing(visual: VisionTransformer) -> bool:
    """Whether the tower's blocks are gradient-checkpointed (open_clip's ``grad_checkpointing`` switch)."""
    return bool(getattr(visual.transformer, "grad_checkpointing", False))


@contextlib.contextmanager
def checkpointed_blocks(*visuals: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Gradient checkpointing of every vision block for the duration (``checkpoint_blocks: true``): each block keeps
    only its input for backward and runs again there, in open_clip's forward (its own switch) and in ``vit_forward``
    alike. The same losses and gradients for about one more forward of the blocks; restored on exit."""
    before = [visual.transformer.grad_checkpointing for visual in visuals]
    for visual in visuals:
        visual.transformer.grad_checkpointing = bool(enabled) or visual.transformer.grad_checkpointing
    try:
        yield
    finally:
        for visual, was in zip(visuals, before):
            visual.transformer.grad_checkpointing = was


def vit_forward(
    visual: VisionTransformer,
    images: Tensor,
    *,
    drop_patches: Tensor | None = None,
    capture_attention: bool = False,
    capture_last_ln1: bool = False,
) -> VitPass:
    """Run ``visual`` on ``images``.

    ``drop_patches``: optional bool ``(N, P)``; True patches are removed from attention as keys in every
    block (their own outputs never reach the class token), which is how the paper's "no refill" works.
    """
    if drop_patches is None and not capture_attention and not capture_last_ln1:
        # nothing to capture or drop: open_clip's own forward (the same modules, its fused attention), which is what
        # vanilla fine-tuning, the teacher on refilled images and evaluation run
        return VitPass(features=visual(images))
    x = visual._embeds(images)
    key_mask = None
    if drop_patches is not None:
        cls_column = torch.zeros(drop_patches.shape[0], 1, dtype=torch.bool, device=drop_patches.device)
        key_mask = torch.cat([cls_column, drop_patches.bool()], dim=1)
    blocks = visual.transformer.resblocks
    attentions: list[Tensor] = []
    last_ln1 = None
    checkpointed = checkpointing(visual) and torch.is_grad_enabled()
    for index, block in enumerate(blocks):
        keep_ln1 = capture_last_ln1 and index == len(blocks) - 1
        if checkpointed:  # only the block's input is kept; its insides are recomputed in backward
            x, probs, normed = checkpoint(_block, block, x, key_mask, capture_attention, keep_ln1, use_reentrant=False)
        else:
            x, probs, normed = _block(block, x, key_mask, capture_attention, keep_ln1)
        if keep_ln1:
            last_ln1 = normed
        if probs is not None:
            attentions.append(probs)
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return VitPass(features=pooled, attentions=attentions, last_ln1_tokens=last_ln1)


def grid_size(visual: VisionTransformer) -> tuple[int, int]:
    return tuple(visual.grid_size)  # type: ignore[return-value]


def patch_size(visual: VisionTransformer) -> tuple[int, int]:
    return tuple(visual.patch_size)  # type: ignore[return-value]
