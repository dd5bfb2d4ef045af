"""Training checkpoints: tensors and plain data only, written atomically, read with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from robusttune.cache import atomic_write
from robusttune.errors import CheckpointError

FORMAT = "robusttune.checkpoint/1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (state dicts, ints, floats, strings, lists) atomically (tmp file + ``os.replace``)."""
    return atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **payload}, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated files, foreign pickles and zip errors all land here
        raise CheckpointError(f"{path}: corrupt or not a weights-only checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a robusttune checkpoint")
    return payload
