"""Choosing which patches to mask, from a CAM ``(N, P)``. Returns boolean masks ``(N, P)`` (True = masked).

Regions: ``object`` (high-CAM patches), ``context`` (low-CAM patches), ``random`` (CAM ignored).

* Threshold form (the paper's): the CAM is normalised by each image's own max (``cam / (max + 1e-8)``,
  max only, not min-max); object = ``> t``, context = ``<= t``, random = each patch with probability ``t`` (or, for
  the "none" refill, exactly ``P - int(P * (1 - t))`` patches, as the official code does).
* Ratio form: exactly ``round(ratio * P)`` patches per image: the top (object) or bottom (context) by
  CAM, ties broken by patch index (stable sort), or a uniformly random subset (random).
"""

from __future__ import annotations

import torch
from torch import Tensor

from robusttune.config import Region
from robusttune.errors import ConfigError


def _masking_region(region: Region | str) -> Region:
    region = Region(region)
    if region is Region.NONE:
        raise ConfigError("region 'none' masks no patch; there is nothing to select")
    return region


def to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """A tensor drawn on the host (e.g. by the CPU step generator) on ``device`` without making the host wait: onto an
    accelerator it is copied from pinned memory, non-blocking (a copy from pageable memory blocks the host until the
    data has left it). Unchanged when it is already there."""
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if device.type != "cpu" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _uniform(shape: torch.Size, generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform draws from the (CPU) step generator, moved to ``device``: the same masks on every device."""
    return to_device(torch.rand(shape, generator=generator, device="cpu"), device)


def normalise_cam(cam: Tensor) -> Tensor:
    return cam / (cam.max(dim=1, keepdim=True).values + 1e-8)


def threshold_mask(cam: Tensor, region: Region | str, threshold: float, generator: torch.Generator, *,
                   exact_count: bool = False) -> Tensor:
    """Object: normalised CAM ``> threshold``; context: ``<= threshold``; random: each patch with probability
    ``threshold``, or with ``exact_count`` exactly ``P - int(P * (1 - threshold))`` patches per image (the official
    random mask without refill keeps ``int(P * (1 - rate))`` random patches)."""
    region = _masking_region(region)
    if region is Region.RANDOM:
        draws = _uniform(cam.shape, generator, cam.device)
        if not exact_count:
            return draws < threshold
        keep = int(cam.shape[1] * (1 - threshold))
        mask = torch.ones(cam.shape, dtype=torch.bool, device=cam.device)
        return mask.scatter_(1, draws.argsort(dim=1)[:, :keep], False)
    normalised = normalise_cam(cam)
    return normalised > threshold if region is Region.OBJECT else normalised <= threshold


def ratio_mask(cam: Tensor, region: Region | str, ratio: float, generator: torch.Generator) -> Tensor:
    region = _masking_region(region)
    batch, patches = cam.shape
    count = int(round(ratio * patches))
    if region is Region.RANDOM:
        order = _uniform(cam.shape, generator, cam.device).argsort(dim=1)
    else:
        order = torch.sort(cam, dim=1, descending=region is Region.OBJECT, stable=True).indices
    mask = torch.zeros(batch, patches, dtype=torch.bool, device=cam.device)
    mask.scatter_(1, order[:, :count], True)
    return mask
