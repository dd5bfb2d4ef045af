"""An experiment directory as pandas tables (reads ``records.jsonl`` only; no torch, ray or optuna).

* ``evaluations(exp)``: one row per reported evaluation (the last report wins when a resumed trial re-reported
  a step);
* ``trials(exp)``: one row per trial: its status, failure, searched parameters, the final evaluation's metrics
  and, prefixed ``best_``, the evaluation with the best scalar objective.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robusttune.cache import atomic_write
from robusttune import metrics
from robusttune.metrics import ID_TEST, OBJECTIVE, OOD_MEAN
from robusttune.errors import DataError
from robusttune.experiment import MANIFEST, RECORDS, is_evaluation, is_reference_row, is_trial_row, read_records

META_COLUMNS = ("trial_id", "status", "step", "epoch", "time")


def _rows(experiment: Path) -> list[dict]:
    """The experiment's trial rows, through the experiment's one records reader."""
    if not (Path(experiment) / RECORDS).is_file():
        if (Path(experiment) / MANIFEST).is_file():  # a sweep that has not recorded its first evaluation yet
            return []
        raise DataError(f"{Path(experiment) / RECORDS}: no records (is this a robusttune experiment?)")
    return [row for row in read_records(experiment) if is_trial_row(row)]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The frame's metric columns in table order (``robusttune.metrics.metric_columns``)."""
    return metrics.metric_columns(frame.columns)


def evaluations(experiment: Path) -> pd.DataFrame:
    """Every reported evaluation, deduplicated by ``(trial_id, step)`` (keep the last)."""
    rows = [r for r in _rows(experiment) if is_evaluation(r)]
    frame = pd.DataFrame([{k: v for k, v in r.items() if k not in ("config", "sampled")} |
                          {f"param.{k}": v for k, v in (r.get("sampled") or {}).items() if k != "seed"} for r in rows])
    if frame.empty:
        return frame
    return frame.drop_duplicates(["trial_id", "step"], keep="last").reset_index(drop=True)


def trials(experiment: Path) -> pd.DataFrame:
    """One row per trial: ``trial_id``, ``status``, ``failure``, parameters, final metrics, ``best_*`` metrics,
    ``order`` (when the trial ended, for hypervolume-over-trials)."""
    rows = _rows(experiment)
    latest: dict[str, dict] = {}
    for index, row in enumerate(rows):
        merged = {**latest.get(row["trial_id"], {}), **row}
        merged["_index"] = index
        latest[row["trial_id"]] = merged
    evals = evaluations(experiment)
    records = []
    for trial_id, row in latest.items():
        record = {"trial_id": trial_id, "status": row.get("status", "running"), "failure": row.get("failure"),
                  "step": row.get("step"), "total_steps": row.get("total_steps"), "order": row["_index"]}
        record |= {f"param.{k}": v for k, v in (row.get("sampled") or {}).items() if k != "seed"}
        record |= {k: v for k, v in row.items() if metrics.is_accuracy_column(k)}
        mine = evals[evals["trial_id"] == trial_id] if not evals.empty else evals
        if "eval_subset" in mine:  # best_* compares like with like: full-set evaluations only, never subset ones
            mine = mine[mine["eval_subset"].isna()]
        scored = mine[OBJECTIVE].dropna() if not mine.empty and OBJECTIVE in mine else pd.Series(dtype=float)
        if not scored.empty:
            best = mine.loc[scored.idxmax()]
            record |= {f"best_{k}": best[k] for k in [*metric_columns(mine), OBJECTIVE, "step"] if k in best}
        records.append(record)
    frame = pd.DataFrame(records)
    if not frame.empty:
        frame = frame.sort_values("order").reset_index(drop=True)
    return frame


def baselines(experiment: Path) -> pd.DataFrame:
    """The experiment's reference rows: ``kind`` baseline (``method`` zero-shot / vanilla-ft) and ``kind`` wise
    (``source`` vanilla-ft or a trial id, ``alpha``). A point recorded twice (a baselines task of a killed driver
    may finish a row the resumed one also computes) appears once: the last row wins, as for evaluations."""
    rows = [{k: v for k, v in row.items() if k != "config"} for row in read_records(experiment) if is_reference_row(row)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    keys = [k for k in ("kind", "method", "source", "alpha") if k in frame]
    return frame.drop_duplicates(keys, keep="last").reset_index(drop=True)


def wise_ood_at(curve: pd.DataFrame, id_value: float, *, x: str = ID_TEST, y: str = OOD_MEAN) -> float:
    """The WiSE-FT curve's OOD accuracy at a given ID accuracy (linear between alphas; NaN outside its range).

    Where the curve is not monotone in ID, the best OOD among the crossing segments is used (the curve's upper
    envelope), so margins above it are never flattered."""
    points = curve.sort_values("alpha")[[x, y]].to_numpy()
    best = float("nan")
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        low, high = min(x0, x1), max(x0, x1)
        if low <= id_value <= high:
            value = y0 if high == low else y0 + (y1 - y0) * (id_value - x0) / (x1 - x0)
            best = value if best != best else max(best, value)
    return best


def parameters(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("param.")]


def export(frame: pd.DataFrame, path: Path) -> Path:
    """Write CSV or Parquet by the file's suffix."""
    path = Path(path)
    if path.suffix == ".parquet":
        return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
