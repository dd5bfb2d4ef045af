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


RESUME_ONLY = ("optimizer", "scheduler", "scaler")  # what only a run that continues training needs


def drop_resume_state(path: str | Path) -> int:
    """Rewrite the checkpoint at ``path`` without its optimizer, scheduler and scaler state (weights, step, history
    and config stay: enough to evaluate, interpolate, and re-report a finished run). Returns the bytes saved."""
    path = Path(path)
    payload = load_checkpoint(path)
    if not any(key in payload for key in RESUME_ONLY):
        return 0
    before = path.stat().st_size
    save_checkpoint(path, {k: v for k, v in payload.items() if k not in RESUME_ONLY and k != "format"})
    return before - path.stat().st_size


def keep_checkpoints(folder: str | Path, keep: str) -> None:
    """Apply an ended trial's ``checkpoints`` policy (``robusttune.config.Keep``) to its folder: ``best`` keeps the final
    and the best weights, ``final`` the final weights only, ``all`` everything (optimizer state included)."""
    from robusttune.experiment import TrialFiles

    files = TrialFiles(Path(folder))
    if keep == "all":
        return
    if files.latest.is_file():
        drop_resume_state(files.latest)
    if keep == "final":
        files.best.unlink(missing_ok=True)
        files.best_meta.unlink(missing_ok=True)
