"""The experiment directory: the contract between search and analysis (stdlib only).

    <storage>/<name>/
        manifest.json      versions, command, seed, space name, start time
        space.yaml         the search space exactly as validated (frozen copy)
        optuna.journal     the Optuna study (JournalFileBackend; ``optuna-dashboard`` opens it)
        records.jsonl      append-only: one row per reported evaluation and one per trial end
        checkpoints/<trial>/  latest.pt (every evaluation) and best.pt (best objective), replaced atomically
        baselines/         the vanilla fine-tuning baseline's weights
        scheduler.json     MO-ASHA's rungs and decisions (reloaded on resume)
        tune/              Ray Tune's experiment state

A ``records.jsonl`` row: ``trial_id``, ``status`` (running / complete / stopped-early / failed), ``config`` (the
full trial config), ``step``, ``epoch``, every metric (``id_acc``, ``id_val_acc``, ``ood_<set>``, ``ood_mean``,
``objective``), ``time``, and ``failure`` for failed trials. After an interrupted sweep is resumed, an
evaluation may be reported twice: readers keep the last row per ``(trial_id, step)``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robusttune.errors import ConfigError, DataError

MANIFEST, SPACE, JOURNAL, RECORDS, TUNE_DIR = "manifest.json", "space.yaml", "optuna.journal", "records.jsonl", "tune"
STATUSES = ("running", "complete", "stopped-early", "failed")


def append_record(experiment: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a crash loses at most the line being written)."""
    line = json.dumps({"time": round(time.time(), 3), **row}, sort_keys=True, default=float) + "\n"
    with open(experiment / RECORDS, "a", encoding="utf-8") as stream:
        stream.write(line)
        stream.flush()
        os.fsync(stream.fileno())


def is_evaluation(row: dict[str, Any]) -> bool:
    """A row that reports one evaluation of a trial (not a trial-end row, not a failure)."""
    return "trial_id" in row and "evaluation" in row and not row.get("final") and row.get("status") != "failed"


def reported_evaluations(experiment: Path) -> set[tuple[str, int]]:
    """``(trial_id, evaluation)`` of every evaluation reported so far; one re-reported after a resume counts once."""
    return {(row["trial_id"], int(row["evaluation"])) for row in read_records(experiment) if is_evaluation(row)}


def read_records(experiment: Path) -> Iterator[dict[str, Any]]:
    """Rows of ``records.jsonl``; a torn last line (a crash mid-write) is skipped."""
    path = Path(experiment) / RECORDS
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def latest_by_trial(experiment: Path) -> dict[str, dict[str, Any]]:
    """The last row of every trial (its current status and latest metrics)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in read_records(experiment):
        if "trial_id" in row:
            latest[row["trial_id"]] = {**latest.get(row["trial_id"], {}), **row}
    return latest


def check_experiment(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: experiment directory not found")
    if not (path / MANIFEST).is_file():
        raise DataError(f"{path}: not a robusttune experiment (no {MANIFEST})")
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads((check_experiment(path) / MANIFEST).read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path / MANIFEST}: corrupt manifest") from None


def new_experiment_dir(storage: Path, name: str, *, overwrite: bool) -> Path:
    """Create ``storage/name``; refuses an existing experiment unless ``overwrite`` (then it is replaced)."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"experiment name must be a plain folder name, got {name!r}")
    path = Path(storage) / name
    if path.exists():
        if not overwrite:
            raise ConfigError(f"{path}: experiment already exists (use 'robusttune resume {path}', another --name, or --overwrite)")
        import shutil

        shutil.rmtree(path)
    try:
        path.mkdir(parents=True)
    except OSError as error:
        raise ConfigError(f"{path}: cannot create the experiment directory ({error.strerror})") from None
    return path
