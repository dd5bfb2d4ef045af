"""Rendering digits on textures, batched in torch with an explicit generator (pure tensor code).

A digit glyph (alpha = stroke intensity) is rotated, scaled and shifted onto a square canvas,
alpha-composited in a colour over one of ten background textures, and antialiased down to the model's
input size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from robusttune.data.mini.captions import DIGIT_COLOURS, TEXTURE_WORDS

N_TEXTURES = len(TEXTURE_WORDS)

# Base colour pairs per texture (dark enough that a white digit stays visible); jittered per image.
_TEXTURE_COLOURS = torch.tensor([
    [[0.10, 0.10, 0.35], [0.10, 0.10, 0.35]],  # plain
    [[0.45, 0.05, 0.05], [0.05, 0.05, 0.05]],  # striped (horizontal)
    [[0.05, 0.35, 0.05], [0.05, 0.05, 0.05]],  # banded (vertical)
    [[0.40, 0.40, 0.05], [0.05, 0.05, 0.25]],  # checkered
    [[0.05, 0.35, 0.40], [0.20, 0.05, 0.05]],  # diagonal
    [[0.50, 0.25, 0.05], [0.05, 0.05, 0.15]],  # dotted
    [[0.30, 0.30, 0.30], [0.02, 0.02, 0.02]],  # noisy
    [[0.40, 0.05, 0.40], [0.05, 0.20, 0.05]],  # gradient
    [[0.35, 0.35, 0.35], [0.05, 0.10, 0.20]],  # grid
    [[0.05, 0.20, 0.45], [0.30, 0.10, 0.05]],  # wavy
])


@dataclass(frozen=True)
class Style:
    """Ranges of the digit's pose and whether it is coloured."""

    rotation_deg: float
    scale: tuple[float, float]
    shift_px: float
    coloured: bool  # False: white (the ID style); True: one of the 7 non-white colours
    any_colour: bool = False  # True: any of the 8 colours, white included (pre-training)


PRETRAIN_STYLE = Style(rotation_deg=25, scale=(0.7, 1.1), shift_px=3, coloured=True, any_colour=True)
ID_STYLE = Style(rotation_deg=5, scale=(0.95, 1.05), shift_px=2, coloured=False)
OOD_STYLE = Style(rotation_deg=30, scale=(0.65, 0.85), shift_px=4, coloured=True)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def textures(kinds: Tensor, size: int, g: torch.Generator) -> Tensor:
    """Background images ``(N, 3, size, size)`` in [0, 1] for texture ids ``kinds``."""
    n = kinds.shape[0]
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    v, u = torch.meshgrid(coords, coords, indexing="ij")  # v rows, u columns, in pixels
    u, v = u.expand(n, size, size), v.expand(n, size, size)
    period = _uniform(n, 4.0, 7.0, g)[:, None, None]
    phase = _uniform(n, 0.0, 2 * math.pi, g)[:, None, None]
    offset = _uniform(n, 0.0, 8.0, g)[:, None, None]
    angle = _uniform(n, 0.0, 2 * math.pi, g)[:, None, None]
    noise = F.interpolate(torch.rand(n, 1, size // 4, size // 4, generator=g), size=(size, size), mode="nearest")[:, 0]
    wave = torch.sin(2 * math.pi * v / period + phase + 1.5 * torch.sin(2 * math.pi * u / (2 * period)))
    patterns = torch.stack([
        torch.zeros_like(u),
        (torch.sin(2 * math.pi * v / period + phase) > 0).float(),
        (torch.sin(2 * math.pi * u / period + phase) > 0).float(),
        ((torch.floor((u + offset) / period) + torch.floor((v + offset) / period)) % 2),
        (torch.sin(2 * math.pi * (u + v) / (1.4 * period) + phase) > 0).float(),
        (((u + offset) % period - period / 2) ** 2 + ((v + offset) % period - period / 2) ** 2 < (period / 3.5) ** 2).float(),
        noise,
        ((u - size / 2) * torch.cos(angle) + (v - size / 2) * torch.sin(angle)) / size + 0.5,
        (((u + offset) % period) < 1.0).float().maximum((((v + offset) % period) < 1.0).float()),
        (wave > 0).float(),
    ], dim=1)  # (N, 10, H, W)
    pattern = patterns[torch.arange(n), kinds].clamp(0, 1)[:, None]
    colours = _TEXTURE_COLOURS[kinds] + _uniform(n * 6, -0.06, 0.06, g).reshape(n, 2, 3)
    colours = colours.clamp(0, 1)
    first, second = colours[:, 0, :, None, None], colours[:, 1, :, None, None]
    return first * (1 - pattern) + second * pattern


def place_glyphs(glyphs: Tensor, style: Style, canvas: int, g: torch.Generator) -> Tensor:
    """Alpha maps ``(N, 1, canvas, canvas)``: each 28x28 glyph rotated, scaled and shifted."""
    n = glyphs.shape[0]
    theta = torch.deg2rad(_uniform(n, -style.rotation_deg, style.rotation_deg, g))
    scale = _uniform(n, *style.scale, g) * 28.0 / canvas
    shift = _uniform(n * 2, -style.shift_px, style.shift_px, g).reshape(n, 2) * 2.0 / canvas
    cos, sin = torch.cos(theta) / scale, torch.sin(theta) / scale
    # affine_grid maps output coordinates to input coordinates: in = R(-theta)/scale @ (out - shift)
    matrix = torch.stack([
        torch.stack([cos, sin, -(cos * shift[:, 0] + sin * shift[:, 1])], dim=1),
        torch.stack([-sin, cos, -(-sin * shift[:, 0] + cos * shift[:, 1])], dim=1),
    ], dim=1)
    grid = F.affine_grid(matrix, [n, 1, canvas, canvas], align_corners=False)
    return F.grid_sample(glyphs[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def digit_colours(n: int, style: Style, g: torch.Generator) -> Tensor:
    """Colour ids ``(N,)`` for the style: 0 (white), 1..7 (coloured), or 0..7 (any)."""
    if style.any_colour:
        return torch.randint(0, len(DIGIT_COLOURS), (n,), generator=g)
    if style.coloured:
        return torch.randint(1, len(DIGIT_COLOURS), (n,), generator=g)
    return torch.zeros(n, dtype=torch.long)


def render(glyphs: Tensor, texture_ids: Tensor, colour_ids: Tensor, style: Style, *, canvas: int, size: int,
           g: torch.Generator) -> Tensor:
    """Images ``(N, 3, size, size)`` as uint8."""
    alpha = place_glyphs(glyphs, style, canvas, g)
    background = textures(texture_ids, canvas, g)
    palette = torch.tensor([rgb for _, rgb in DIGIT_COLOURS])
    colour = palette[colour_ids][:, :, None, None]
    image = background * (1 - alpha) + colour * alpha
    if size != canvas:
        image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def correlated_textures(labels: Tensor, p: float, g: torch.Generator) -> Tensor:
    """The class's own texture (id = label) with probability ``p``, else one of the other textures."""
    other = (labels + torch.randint(1, N_TEXTURES, labels.shape, generator=g)) % N_TEXTURES
    own = torch.rand(labels.shape, generator=g) < p
    return torch.where(own, labels % N_TEXTURES, other)


def never_own_textures(labels: Tensor, g: torch.Generator) -> Tensor:
    return (labels + torch.randint(1, N_TEXTURES, labels.shape, generator=g)) % N_TEXTURES


def uniform_textures(n: int, g: torch.Generator) -> Tensor:
    return torch.randint(0, N_TEXTURES, (n,), generator=g)
