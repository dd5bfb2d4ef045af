"""What the API's functions share: the cache directory, torch's threads, output folders, the trial table."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robusttune.bounds import check_threads
from robusttune.cache import resolve_cache_dir
from robusttune.errors import ParameterError
from robusttune.experiment import STATUSES, latest_by_trial
from robusttune.metrics import OBJECTIVE, is_metric


def cache_directory(value: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory (``value``, else ``$ROBUSTTUNE_CACHE_DIR``, else ``~/.cache/robusttune``)."""
    path = resolve_cache_dir(value)
    if path.exists() and not path.is_dir():
        raise ParameterError("cache_dir", f"{path} is a file, not a folder")
    return path


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads: ``threads``, else every core."""
    import torch

    check_threads(threads)
    torch.set_num_threads(max(1, threads or os.cpu_count() or 1))


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """``out`` is a writable folder (made if missing) that is empty unless the run resumes or replaces it."""
    if out.exists() and not out.is_dir():
        raise ParameterError("out", f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise ParameterError("out", f"{out} is not empty (pass `resume` to continue it or `overwrite` to replace it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ParameterError("out", f"{out} is not writable ({error.strerror})") from None


def check_out_file(out: Path) -> None:
    """``out`` can be written as a file (checked before the work, not after it)."""
    if out.is_dir() or not out.parent.is_dir():
        raise ParameterError("out", f"{out} must be a file in an existing folder")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ParameterError("out", f"{out} is not writable")


def trial_table(experiment: Path) -> list[dict[str, Any]]:
    """One row per trial: status, step, metrics, failure and the searched values."""
    rows = []
    for trial_id, row in sorted(latest_by_trial(experiment).items()):
        sampled = row.get("sampled") if isinstance(row.get("sampled"), dict) else {}
        rows.append({"trial_id": trial_id, "status": row.get("status"), "step": row.get("step"),
                     **{k: v for k, v in row.items() if is_metric(k) or k in (OBJECTIVE, "failure")},
                     **{k: v for k, v in sampled.items() if k != "seed"}})
    return rows


def status_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {status: sum(1 for r in rows if r["status"] == status) for status in STATUSES}
