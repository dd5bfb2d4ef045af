"""The experiment directory: the contract between search and analysis, owned by this module alone.

    <storage>/<name>/
        manifest.json      versions, command, seed, space name, how trials run, start time
        space.yaml         the search space exactly as validated (frozen copy)
        optuna.journal     the Optuna study (JournalFileBackend; ``optuna-dashboard`` opens it)
        records.jsonl      append-only: one row per reported evaluation and one per trial end
        checkpoints/<trial>/  latest.pt (every evaluation) and best.pt (best objective), replaced atomically
        baselines/         the vanilla fine-tuning baseline's weights
        heads/             zero-shot heads, built once for every trial and the baselines
        train/             Ray Train's state of trials trained on several workers
        scheduler.json     MO-ASHA's rungs and decisions (reloaded on resume)
        tune/              Ray Tune's experiment state
        report/            written by ``robusttune report``
        robusttune.log     what Ray, Ray Tune and other libraries said during a run (``search.console.LibraryLog``)
        .lock              the lock of the process that runs the experiment (``ExperimentLock``; never removed)

A ``records.jsonl`` row is a JSON object. Trial rows have ``trial_id``, ``status`` (running / complete /
stopped-early / failed), ``config`` (the full trial config), ``sampled``, ``step``, ``epoch``, ``evaluation``,
every metric (``id_acc``, ``id_val_acc``, ``ood_<set>``, ``ood_mean``, ``objective``), ``time``, ``failure`` for
failed trials and ``final: true`` on a trial's last row. Reference rows have ``kind`` ``baseline`` or ``wise``.
After an interrupted sweep is resumed an evaluation may be reported twice: readers keep the last row per
``(trial_id, evaluation)``.

Layer 0: stdlib, yaml, numpy and our own config only (no torch, ray or optuna), so ``robusttune.analysis``
reads experiments on a laptop.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robusttune.errors import ConfigError, DataError, storage_error
from robusttune.experiment_lock import LOCK, ExperimentLock, lock_holder  # noqa: F401 (the lock, re-exported)

log = logging.getLogger(__name__)

MANIFEST, SPACE, JOURNAL, RECORDS, TUNE_DIR = "manifest.json", "space.yaml", "optuna.journal", "records.jsonl", "tune"
CHECKPOINTS_DIR, BASELINES_DIR, SCHEDULER_STATE, REPORT_DIR = "checkpoints", "baselines", "scheduler.json", "report"
HEADS_DIR, HEARTBEATS, TRAIN_RUNS_DIR, CONFIRM_DIR = "heads", "heartbeats.json", "train", "confirm"
MANIFEST_FORMAT = "robusttune.experiment/1"
STOPPED_EARLY = "stopped-early"  # a trial the scheduler stopped before its last step
STATUSES = ("running", "complete", STOPPED_EARLY, "failed")
MERGE_KIND = "merge"  # a post-hoc merge of the sweep's models (robusttune.search.merges): method, members, metrics
REFERENCE_KINDS = ("baseline", "wise", MERGE_KIND)
ZERO_SHOT, VANILLA_FT = "zero-shot", "vanilla-ft"  # the reference runs' names in the records (method, source)
CONFIRM_KIND = "confirm"  # a confirmation run's row: its point (alpha null) or one point of its WiSE-FT curve


# ------------------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class TrialFiles:
    """A trial's own files, in ``<experiment>/checkpoints/<trial_id>/`` (``trial_checkpoints``)."""

    folder: Path

    @property
    def latest(self) -> Path:
        """Every evaluation's weights and optimizer state (resumable); the final weights once the trial ended."""
        return self.folder / "latest.pt"

    @property
    def best(self) -> Path:
        """The weights of the best evaluation by the objective."""
        return self.folder / "best.pt"

    @property
    def best_meta(self) -> Path:
        """``best.pt``'s objective, step and whether it was a subset evaluation."""
        return self.folder / "best.json"

    @property
    def config(self) -> Path:
        """The TrainConfig the trial trains with, as its trainable built it (the records' ``config`` is this file's)."""
        return self.folder / "config.json"

    @property
    def replay(self) -> Path:
        """A benchmark replay's progress (``robusttune.bench.replay``)."""
        return self.folder / "replay.json"


def trial_files(experiment: str | Path, trial_id: str) -> TrialFiles:
    return TrialFiles(trial_checkpoints(experiment, trial_id))


@dataclass(frozen=True)
class RunFiles:
    """A ``robusttune train`` run's folder (``robusttune.training.train_dir``)."""

    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "config.json"

    @property
    def metrics(self) -> Path:
        """One row per evaluation."""
        return self.folder / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        """The latest, resumable checkpoint."""
        return self.folder / "checkpoint.pt"

    @property
    def final(self) -> Path:
        """The final weights, with the config, the task and the metrics."""
        return self.folder / "final.pt"

    @property
    def summary(self) -> Path:
        return self.folder / "summary.json"


def vanilla_checkpoint(experiment: str | Path) -> Path:
    """The experiment's vanilla fine-tuning baseline (trained once)."""
    return baselines_dir(experiment) / "vanilla_ft.pt"


def trial_checkpoints(experiment: str | Path, trial_id: str) -> Path:
    """``<experiment>/checkpoints/<trial_id>/``: ``latest.pt`` (every evaluation) and ``best.pt`` (best objective).

    Trials keep these themselves instead of handing checkpoints to Tune: Tune deletes checkpoints it no longer
    ranks while its saved experiment state may still point at them, so a restore after ``kill -9`` could find
    its checkpoint gone. Ours are replaced atomically and found again by trial id."""
    return Path(experiment) / CHECKPOINTS_DIR / trial_id


def latest_checkpoint(experiment: str | Path, trial_id: str) -> Path | None:
    """The trial's latest checkpoint (its final weights once the trial is complete), if it has one."""
    path = trial_files(experiment, trial_id).latest
    return path if path.is_file() else None


def train_runs_dir(experiment: str | Path) -> Path:
    """Ray Train's own state for trials trained on several workers (one folder per trial id; our checkpoints stay
    in ``checkpoints/<trial>``)."""
    return Path(experiment) / TRAIN_RUNS_DIR


def worker_group_record(experiment: str | Path, trial_id: str) -> Path:
    """The placement group of a data-parallel trial's workers, as its rank 0 last wrote it (the driver removes it
    when the trial ends: ``robusttune.search.data_parallel.WorkerGroupReaper``)."""
    return train_runs_dir(experiment) / f"{trial_id}.placement_group"


def heads_dir(experiment: str | Path) -> Path:
    """Zero-shot heads built once for all trials and the baselines (``robusttune.models.heads``)."""
    return Path(experiment) / HEADS_DIR


def baselines_dir(experiment: str | Path) -> Path:
    return Path(experiment) / BASELINES_DIR


def confirm_weights(experiment: str | Path, config_key: str, seed: int) -> Path:
    """A confirmation run's final weights (``confirm/<config key>-s<seed>.pt``)."""
    return Path(experiment) / CONFIRM_DIR / f"{config_key}-s{seed}.pt"


def confirm_progress(experiment: str | Path, config_key: str, seed: int) -> Path:
    """A confirmation run's latest checkpoint while it trains (a killed run continues from it)."""
    return Path(experiment) / CONFIRM_DIR / f"{config_key}-s{seed}.latest.pt"


def is_confirm_row(row: dict[str, Any]) -> bool:
    return row.get("kind") == CONFIRM_KIND


def scheduler_state(experiment: str | Path) -> Path:
    return Path(experiment) / SCHEDULER_STATE


def heartbeats(experiment: str | Path) -> Path:
    """Each running trial's latest heartbeat (step, loss, images/s, ETA, when), rewritten by the sweep driver."""
    return Path(experiment) / HEARTBEATS


def read_heartbeats(experiment: str | Path) -> dict[str, dict[str, Any]]:
    """``{trial_id: heartbeat}``; empty when there is none or the file is unreadable (it is only a progress view)."""
    try:
        data = json.loads(heartbeats(experiment).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def tune_dir(experiment: str | Path) -> Path:
    return Path(experiment) / TUNE_DIR


def journal(experiment: str | Path) -> Path:
    return Path(experiment) / JOURNAL


def report_dir(experiment: str | Path) -> Path:
    return Path(experiment) / REPORT_DIR


# ------------------------------------------------------------------------------------- creating, checking


NAME_CHARACTERS = "letters, digits, '.', '_', '-' and '+'"


def check_experiment_name(name: str) -> str:
    """An experiment name is a plain folder name: no path separators, no leading dot, no shell metacharacters."""
    import re

    if not name or name.startswith(".") or not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
        raise ConfigError(f"experiment name must be a plain folder name of {NAME_CHARACTERS}, got {name!r}")
    return name


def check_new_experiment(storage: Path, name: str, *, overwrite: bool, held: bool = False) -> Path:
    """Where ``storage/name`` would go, checked without touching anything: an existing folder is only replaced
    with ``overwrite``, only when it is a robusttune experiment (never any other folder) and only when no other
    process holds it (``held``: this process does, see ``claim_new_experiment``)."""
    path = Path(storage) / check_experiment_name(name)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise ConfigError(f"{path}: experiment already exists (use 'robusttune resume {path}', another `name`, or `overwrite`)")
        holder = None if held or path.is_symlink() or not path.is_dir() else lock_holder(path)
        if holder:  # before the manifest: a sweep that is starting has its lock before its manifest
            raise ConfigError(f"{path}: in use by {holder}; not replaced")
        if path.is_symlink() or not path.is_dir() or not _is_experiment(path):
            raise ConfigError(f"{path}: not a robusttune experiment (no valid {MANIFEST}); `overwrite` only replaces experiments")
    return path


def _is_experiment(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == MANIFEST_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def new_experiment_dir(storage: Path, name: str, *, overwrite: bool) -> Path:
    """Create ``storage/name`` (see ``check_new_experiment``; call that first to validate before any other work)."""
    path = check_new_experiment(storage, name, overwrite=overwrite)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    try:
        path.mkdir(parents=True)
    except OSError as error:
        raise ConfigError(f"{path}: cannot create the experiment directory ({error.strerror})") from None
    return path


# --------------------------------------------------------------------------------------------------- lock

def claim_new_experiment(storage: Path, name: str, *, overwrite: bool, command: str) -> ExperimentLock:
    """Create ``storage/name`` and take its lock (the caller releases it), in that order so that no other process
    runs in it meanwhile: a new folder is made atomically (an existing one is refused unless ``overwrite``); an
    existing experiment is locked first and only then emptied (all but its lock file), so the loser of two
    overwrites is refused naming the winner, and never finds its files removed under it."""
    path = check_new_experiment(storage, name, overwrite=overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where the storage folder should be, a read-only place
        raise ConfigError(f"{path}: cannot create the experiment directory ({error.strerror})") from None
    try:
        path.mkdir(exist_ok=overwrite)
    except FileExistsError:
        raise ConfigError(f"{path}: experiment already exists (use 'robusttune resume {path}', another `name`, or `overwrite`)") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot create the experiment directory ({error.strerror})") from None
    lock = ExperimentLock(path, command).__enter__()
    try:
        leftovers = [p for p in path.iterdir() if p.name != LOCK]
        if leftovers:  # an experiment being overwritten: checked again now that we hold it
            check_new_experiment(storage, name, overwrite=overwrite, held=True)
            import shutil

            for entry in leftovers:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    return lock


def remove_experiment(lock: ExperimentLock) -> None:
    """Remove the folder of an experiment whose lock ``lock`` holds, lock file last, then release: a process waiting
    on the removed lock file finds it replaced and never runs in a folder that is gone."""
    import shutil

    folder = lock.path.parent
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    lock.path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass
    lock.release()


def check_experiment(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: experiment directory not found")
    if not (path / MANIFEST).is_file():
        raise DataError(f"{path}: not a robusttune experiment (no {MANIFEST})")
    for name in (RECORDS, JOURNAL, SPACE):  # what a reader opens as a file must be one (checked before anything starts)
        if (path / name).exists() and not (path / name).is_file():
            raise DataError(f"{path / name}: not a file; the experiment is damaged")
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    try:
        manifest = json.loads((check_experiment(path) / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{Path(path) / MANIFEST}: corrupt manifest") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{Path(path) / MANIFEST}: corrupt manifest")
    return manifest


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ["robusttune", "torch", "open_clip_torch", "ray", "optuna", "pandas"]:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return {"python": platform.python_version(), **found}


def write_manifest(experiment: Path, space: Any, space_text: str, *, seed: int, trials: int, concurrency: int,
                   runner: Mapping[str, Any], loggers: Sequence[str] = (),
                   warm_start: Mapping[str, Any] | None = None) -> None:
    """The frozen space and the manifest; ``runner`` says how trials run (``robusttune.search.sweep.TrialRunner``);
    ``warm_start``: where the first trials came from (``robusttune.search.warm_start``)."""
    from robusttune.cache import atomic_write_json, atomic_write_text

    text = space_text or json.dumps(space.to_dict(), indent=2)
    atomic_write_text(experiment / SPACE, text)
    atomic_write_json(experiment / MANIFEST, {
        "format": MANIFEST_FORMAT, "name": experiment.name, "space": space.name,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "seed": seed,
        "trials": trials, "concurrency": concurrency, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(), "objective": space.objective.to_dict(), "parameters": list(space.parameters),
        "runner": dict(runner), "space_sha256": _sha256(text), "loggers": list(loggers),
        **({"warm_start": dict(warm_start)} if warm_start else {}),
    })


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_space_unchanged(experiment: Path, *, allow_change: bool = False) -> None:
    """Refuse a ``space.yaml`` edited since the sweep started (unless ``allow_change``): resuming under another
    space or objective would mix incomparable trials."""
    manifest = read_manifest(experiment)
    expected = manifest.get("space_sha256")
    if expected is None or allow_change:
        return
    try:
        actual = _sha256((Path(experiment) / SPACE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        raise DataError(f"{Path(experiment) / SPACE}: the experiment's frozen search space is missing or unreadable") from None
    if actual != expected:
        raise ConfigError(f"{Path(experiment) / SPACE}: changed since the sweep started; restore it, or pass "
                          f"`allow_space_change` to resume under the edited space")


def load_frozen_space(experiment: str | Path):
    """The experiment's search space as it was validated when the sweep started, and its YAML text."""
    import yaml

    from robusttune.config import load_yaml_text, parse
    from robusttune.space import SearchSpace

    path = Path(experiment) / SPACE
    try:
        text = path.read_text(encoding="utf-8")
        data = load_yaml_text(text, str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: the experiment's frozen search space is missing") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise DataError(f"{path}: the experiment's frozen search space is corrupt") from None
    return parse(SearchSpace, data, str(path)), text


def parse_space_text(text: str, source: str = "frozen search space"):
    """A frozen space's YAML text (as trials receive it) back into a validated ``SearchSpace``."""

    from robusttune.config import load_yaml_text, parse
    from robusttune.space import SearchSpace

    return parse(SearchSpace, load_yaml_text(text, source), source)


# ------------------------------------------------------------------------------------------------ records


def append_record(experiment: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk. A crash loses at most the line being written: a torn last line
    left by an earlier crash is ended first, so it never swallows this record."""

    line = json.dumps({"time": round(time.time(), 3), **row}, sort_keys=True, default=float) + "\n"
    try:
        with open(Path(experiment) / RECORDS, "ab+", buffering=0) as stream:  # unbuffered: we see every short write
            end = stream.seek(0, os.SEEK_END)
            if end > 0:
                stream.seek(-1, os.SEEK_END)
                if stream.read(1) != b"\n":
                    line = "\n" + line
            data = memoryview(line.encode("utf-8"))
            try:
                while data:
                    data = data[stream.write(data):]
                os.fsync(stream.fileno())
            except OSError:
                os.ftruncate(stream.fileno(), end)  # a full disk: the records as they were, never a torn line
                raise
    except OSError as error:
        translated = storage_error(error, Path(experiment))
        if translated is None:
            raise
        raise translated from None


def end_torn_tail(path: Path) -> int:
    """Cut a torn last line (bytes after the last newline: a write a crash interrupted) from an append-only log such
    as the Optuna journal, whose reader would otherwise glue the next append onto it. Returns the bytes cut."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "rb+") as stream:
        size = stream.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        stream.seek(max(0, size - 1))
        if stream.read(1) == b"\n":
            return 0
        block, end = 65536, size
        while end > 0:  # find the last newline, reading backwards
            start = max(0, end - block)
            stream.seek(start)
            chunk = stream.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        else:
            keep = 0
        stream.truncate(keep)
        stream.flush()
        os.fsync(stream.fileno())
    log.warning("%s: cut a torn last line of %d byte(s) left by a crash", path, size - keep)
    return size - keep


@dataclass(frozen=True)
class Records:
    rows: list[dict[str, Any]]  # every valid row, in file order
    skipped: int  # lines that were not a JSON object of a row's shape (a torn write, foreign text, a hand edit)


_WARNED: dict[str, int] = {}  # records file -> the skipped rows last warned about


def load_records(experiment: str | Path) -> Records:
    """The one reader of ``records.jsonl``: a valid row is a line holding a JSON object of a row's shape
    (``_well_typed``); other lines (a torn last line after a crash, invalid UTF-8, foreign text, a row a person or
    another tool wrote with the wrong types) are skipped and counted, with one warning."""
    path = Path(experiment) / RECORDS
    rows: list[dict[str, Any]] = []
    skipped = 0
    if not path.exists():
        return Records(rows, 0)
    if not path.is_file():
        raise DataError(f"{path}: the experiment's records are not a file")
    with open(path, "rb") as stream:
        for raw in stream:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                row = None
            if isinstance(row, dict) and _well_typed(row):
                rows.append(row)
            else:
                skipped += 1
    if skipped and _WARNED.get(str(path)) != skipped:  # once per process and count: readers read it many times
        _WARNED[str(path)] = skipped
        log.warning("%s: skipped %d unreadable or wrongly shaped row(s)", path, skipped)
    return Records(rows, skipped)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_or_none(value: Any) -> bool:
    return value is None or _number(value)


# The shape of a row, key by key: what a reader may rely on once ``load_records`` kept it. Any other key is free.
_SHAPE: dict[str, Any] = {
    "step": _number_or_none, "evaluation": _number, "epoch": _number_or_none, "total_steps": _number_or_none,
    "time": _number_or_none, "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "alpha": _number_or_none, "final": lambda v: isinstance(v, bool), "errored": lambda v: isinstance(v, bool),
    "retry": lambda v: isinstance(v, bool),
    "sampled": lambda v: v is None or isinstance(v, dict), "config": lambda v: v is None or isinstance(v, dict),
    "eval_images": lambda v: isinstance(v, dict), "failure": lambda v: v is None or isinstance(v, str),
    "kind": lambda v: isinstance(v, str), "method": lambda v: isinstance(v, str),
    "source": lambda v: isinstance(v, str), "config_key": lambda v: isinstance(v, str),
    "members": lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v),
    "status": lambda v: v in STATUSES,
}


def _well_typed(row: dict[str, Any]) -> bool:
    """A row has the shape readers rely on: a trial row (a non-empty string ``trial_id``) or a reference row (a
    ``kind``), every known key of its type, every metric a number (or null)."""
    from robusttune.metrics import WISE_ALPHA, is_accuracy_column

    if "trial_id" in row:
        if not isinstance(row["trial_id"], str) or not row["trial_id"].strip():
            return False
    elif not isinstance(row.get("kind"), str):
        return False  # neither a trial's row nor a reference row: nothing reads it
    for key, value in row.items():
        check = _SHAPE.get(key)
        if check is not None and not check(value):
            return False
        if (is_accuracy_column(key) or key == WISE_ALPHA) and not _number_or_none(value):
            return False
    if row.get("kind") == CONFIRM_KIND and not (isinstance(row.get("config_key"), str) and "seed" in row):
        return False
    if row.get("kind") == MERGE_KIND and not isinstance(row.get("method"), str):
        return False
    return True


def read_records(experiment: str | Path) -> Iterator[dict[str, Any]]:
    """Valid rows of ``records.jsonl`` in file order (see ``load_records``)."""
    yield from load_records(experiment).rows


def is_trial_row(row: dict[str, Any]) -> bool:
    return "trial_id" in row


def is_reference_row(row: dict[str, Any]) -> bool:
    return row.get("kind") in REFERENCE_KINDS


def is_evaluation(row: dict[str, Any]) -> bool:
    """A row that reports one evaluation of a trial (not a trial-end row, not a failure)."""
    return "trial_id" in row and "evaluation" in row and not row.get("final") and row.get("status") != "failed"


def reported_evaluations(experiment: str | Path) -> set[tuple[str, int]]:
    """``(trial_id, evaluation)`` of every evaluation reported so far; one re-reported after a resume counts once."""
    return {(row["trial_id"], int(row["evaluation"])) for row in read_records(experiment) if is_evaluation(row)}


def latest_by_trial(experiment: str | Path) -> dict[str, dict[str, Any]]:
    """Every trial's rows merged in file order: its current status and latest metrics."""
    latest: dict[str, dict[str, Any]] = {}
    for row in read_records(experiment):
        if is_trial_row(row):
            latest[row["trial_id"]] = {**latest.get(row["trial_id"], {}), **row}
    return latest


def started_trials(experiment: str | Path, latest: Mapping[str, dict[str, Any]],
                   known: set[str] | frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """``latest`` without the trials this sweep never started: a trial it started is in Tune's saved state
    (``known``) or wrote its ``checkpoints/<trial>/config.json`` before its first report. A row for any other trial
    id (appended by hand or by another tool) is ignored with a warning: never resumed, trained or counted."""
    kept, foreign = {}, []
    for trial_id, row in latest.items():
        if trial_id in known or trial_files(experiment, trial_id).config.is_file():
            kept[trial_id] = row
        else:
            foreign.append(trial_id)
    if foreign:
        log.warning("%s: ignored the records of %d trial(s) this sweep never started: %s", Path(experiment) / RECORDS,
                    len(foreign), ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else ""))
    return kept


LOST_BEFORE_SAVE = "interrupted before Ray Tune saved this trial; its budget slot is run again"


def budget_used(latest: Mapping[str, dict[str, Any]]) -> set[str]:
    """The trials that used a slot of the sweep's budget, by the records: every trial that ended (complete, stopped
    early, failed on its own, e.g. a non-finite loss), whenever Ray Tune last saved its state. A trial lost to an
    interruption before Tune saved it, or one that raised (a full disk, a lost node: ``errored``), did not end on its
    own: Tune resumes it when it can, else its slot is run again."""
    return {trial_id for trial_id, row in latest.items()
            if row.get("final") and row.get("failure") != LOST_BEFORE_SAVE
            and not (row.get("status") == "failed" and row.get("errored"))}


def end_status(result: Mapping[str, Any]) -> str:
    """How a trial whose last reported result is ``result`` ended: ``failed`` (it said so), ``complete`` (it
    reached its last step) or ``stopped-early`` (a scheduler stopped it before that)."""
    if result.get("trial_status") == "failed":
        return "failed"
    if result.get("step", -1) >= result.get("total_steps", float("inf")):
        return "complete"
    return STOPPED_EARLY


def pareto_trials(latest: Mapping[str, dict[str, Any]], metrics: list[str],
                  directions: list[str] | None = None) -> list[dict[str, Any]]:
    """The Pareto-optimal complete trials on ``metrics`` (``robusttune.pareto.front``), best on the first first."""
    from robusttune.pareto import front

    rows = [{"trial_id": trial_id, **row} for trial_id, row in latest.items()]
    return [rows[i] for i in front(rows, metrics, directions)]
