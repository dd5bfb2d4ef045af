"""Refilling masked patches with patches of other images (patch-aligned: same grid position).

* single: one donor image per sample, ``donor = randperm(N)`` (may be the image itself, probability 1/N);
* multi: a donor per patch, ``(i + randint(1, N)) % N`` (never the image itself);
* none: nothing is pasted; the masked patches are *dropped from attention* instead (the paper masks
  their keys with -inf in every block), which the model forward does given the same mask. We chose the
  paper's definition over filling with a dataset mean, so "none" means "these patches do not exist".
"""

from __future__ import annotations

import torch
from torch import Tensor

from robusttune.method.masking import to_device


def single_donors(batch: int, generator: torch.Generator) -> Tensor:
    """Drawn on the CPU step generator (the same donors on every device); ``refill`` moves them (pinned,
    non-blocking)."""
    return torch.randperm(batch, generator=generator, device="cpu")


def multi_donors(batch: int, patches: int, generator: torch.Generator) -> Tensor:
    offsets = torch.randint(1, max(batch, 2), (batch, patches), generator=generator, device="cpu")
    return (torch.arange(batch, device="cpu")[:, None] + offsets) % batch


def to_patches(images: Tensor, patch: tuple[int, int]) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, P, C * ph * pw)`` in row-major patch order (the ViT's token order)."""
    n, c, h, w = images.shape
    ph, pw = patch
    grid = images.reshape(n, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(n, (h // ph) * (w // pw), c * ph * pw)


def from_patches(patches: Tensor, shape: torch.Size, patch: tuple[int, int]) -> Tensor:
    n, c, h, w = shape
    ph, pw = patch
    grid = patches.reshape(n, h // ph, w // pw, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n, c, h, w)


def refill(images: Tensor, mask: Tensor, donors: Tensor, patch: tuple[int, int]) -> Tensor:
    """Replace masked patches by the donors' patches at the same positions.

    ``donors`` is ``(N,)`` (single donor per image) or ``(N, P)`` (a donor per patch).
    """
    patches = to_patches(images, patch)
    donors = to_device(donors, images.device)
    if donors.dim() == 1:
        donor_patches = patches[donors]
    else:
        positions = torch.arange(patches.shape[1], device=images.device).expand_as(donors)
        donor_patches = patches[donors, positions]
    mixed = torch.where(to_device(mask, images.device)[..., None], donor_patches, patches)
    return from_patches(mixed, images.shape, patch)
