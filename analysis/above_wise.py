"""How often each method beats WiSE-FT at equal ID: the share of its configurations above the curve, not its best one.

For each method of a sweep (``config.method.name`` of its trials; ``masked_distill`` when the config names none),
over its *complete* trials (stopped-early, failed and running ones never count):

- each trial's gap ``ΔOOD = OOD(trial) - W(ID(trial))``, where ``W`` is vanilla FT's WiSE-FT curve recorded in the
  same experiment (``kind: wise``, ``source: vanilla-ft``; its points joined by straight lines in ID order:
  ``robusttune.analysis.stats.curve_at``), on ID test accuracy and the OOD mean;
- a trial whose ID lies outside the curve's ID range gets no gap: it is counted apart (``outside_below``: less ID
  than the curve's lowest point, ``outside_above``: more than its highest), never extrapolated;
- ``above``: the trials with a gap > 0, their share of the trials with a gap and its 95% Wilson score interval
  (scipy), the median gap and its 95% percentile bootstrap interval (``RESAMPLES`` resamples of the gaps, a
  generator seeded by ``SEED`` and the method's name: the same records give the same interval, in any order).

Reads ``records.jsonl`` only (no torch, ray or optuna). ``rows`` is what ``status --json`` shows under
``above_wise``, the report's verdict section draws and ``report/above_wise.csv`` holds.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robusttune.analysis.stats import LEVEL, curve_at
from robusttune.experiment import VANILLA_FT, read_records
from robusttune.metrics import ID_TEST, OOD_MEAN

RESAMPLES = 2000
SEED = 0
CSV_COLUMNS = ("method", "trials", "with_gap", "above", "share_above", "share_low", "share_high", "median_gap",
               "median_low", "median_high", "outside_below", "outside_above")


def vanilla_curve(rows: Iterable[Mapping[str, Any]], *, x: str = ID_TEST, y: str = OOD_MEAN) -> list[tuple[float, float]]:
    """Vanilla FT's WiSE-FT curve as the records hold it: ``(x, y)`` per alpha, the last row of an alpha winning."""
    by_alpha: dict[float, tuple[float, float]] = {}
    for row in rows:
        if row.get("kind") == "wise" and row.get("source") == VANILLA_FT and _number(row.get("alpha")) \
                and _number(row.get(x)) and _number(row.get(y)):
            by_alpha[round(float(row["alpha"]), 6)] = (float(row[x]), float(row[y]))
    return [by_alpha[a] for a in sorted(by_alpha)]


def complete_trials(rows: Iterable[Mapping[str, Any]], *, x: str = ID_TEST, y: str = OOD_MEAN) -> dict[str, dict[str, Any]]:
    """Each complete trial's merged row (its rows in file order), when it carries both axes."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        if "trial_id" in row:
            latest[row["trial_id"]] = {**latest.get(row["trial_id"], {}), **row}
    return {t: r for t, r in latest.items() if r.get("status") == "complete" and _number(r.get(x)) and _number(r.get(y))}


def method_of(row: Mapping[str, Any]) -> str:
    """The method a trial trained with (its config's, else the sampled one, else the default)."""
    from robusttune.methods import method_name

    config = row.get("config") if isinstance(row.get("config"), dict) else {}
    sampled = row.get("sampled") if isinstance(row.get("sampled"), dict) else {}
    raw = config.get("method", sampled.get("method", {}))
    try:
        return str(method_name(raw))
    except ValueError:
        return str(raw.get("name") if isinstance(raw, dict) else raw)


def share_interval(above: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of ``above`` successes in ``n`` (NaN bounds when ``n`` is 0)."""
    if n == 0:
        return math.nan, math.nan
    from scipy import stats

    ci = stats.binomtest(above, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def median_interval(gaps: list[float], *, seed: int, resamples: int = RESAMPLES, level: float = LEVEL) -> tuple[float, float]:
    """The percentile bootstrap interval of the median of ``gaps`` (NaN bounds without gaps)."""
    if not gaps:
        return math.nan, math.nan
    values = np.asarray(gaps, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    medians = np.median(values[picks], axis=1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def method_row(method: str, points: list[tuple[float, float]], curve: list[tuple[float, float]], *,
               resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """One method's row from its complete trials' ``(ID, OOD)`` points and vanilla FT's curve."""
    low_id = min(p[0] for p in curve) if curve else math.nan
    gaps, below, beyond = [], 0, 0
    for x, y in points:
        at = curve_at(curve, x) if curve else None
        if at is None:
            below += int(bool(curve) and x < low_id)
            beyond += int(bool(curve) and x >= low_id)
            continue
        gaps.append(y - at)
    above = sum(g > 0 for g in gaps)
    share_low, share_high = share_interval(above, len(gaps))
    median_low, median_high = median_interval(gaps, seed=seed + zlib.crc32(method.encode()), resamples=resamples)
    return {"method": method, "trials": len(points), "with_gap": len(gaps), "above": int(above),
            "share_above": above / len(gaps) if gaps else math.nan, "share_low": share_low, "share_high": share_high,
            "median_gap": float(np.median(gaps)) if gaps else math.nan, "median_low": median_low,
            "median_high": median_high, "outside_below": below, "outside_above": beyond}


def share_above_wise(experiment: str | Path, *, x: str = ID_TEST, y: str = OOD_MEAN, resamples: int = RESAMPLES,
                     seed: int = SEED) -> dict[str, Any]:
    """Per method, the share of its complete trials above vanilla FT's WiSE-FT curve at equal ID (see the module).
    ``{}`` when the experiment has no complete trial; ``rows`` empty (and ``reason`` said) when it has no curve."""
    rows = list(read_records(experiment))
    trials = complete_trials(rows, x=x, y=y)
    if not trials:
        return {}
    curve = vanilla_curve(rows, x=x, y=y)
    summary: dict[str, Any] = {"x": x, "y": y, "level": LEVEL, "curve_points": len(curve), "resamples": resamples,
                               "seed": seed, "rows": []}
    if len(curve) < 2:
        summary["reason"] = "vanilla FT's WiSE-FT curve is not recorded yet (it needs two points or more)"
        return summary
    summary["curve_range"] = [min(p[0] for p in curve), max(p[0] for p in curve)]
    by_method: dict[str, list[tuple[float, float]]] = {}
    for row in trials.values():
        by_method.setdefault(method_of(row), []).append((float(row[x]), float(row[y])))
    summary["rows"] = [method_row(m, by_method[m], curve, resamples=resamples, seed=seed) for m in sorted(by_method)]
    return summary


def sentence(row: Mapping[str, Any]) -> str:
    """One sentence per method for readers (points of accuracy)."""
    apart = row["outside_below"] + row["outside_above"]
    tail = (f"; {apart} outside the curve's ID range ({row['outside_below']} below, {row['outside_above']} above), "
            "not counted" if apart else "")
    if not row["with_gap"]:
        return f"{row['method']}: none of its {row['trials']} complete trial(s) lies within the curve's ID range{tail}."
    return (f"{row['method']}: {row['above']} of {row['with_gap']} complete trial(s) above WiSE-FT at equal ID "
            f"({100 * row['share_above']:.0f}% [{100 * row['share_low']:.0f}, {100 * row['share_high']:.0f}]); "
            f"median ΔOOD {100 * row['median_gap']:+.2f} points [{100 * row['median_low']:+.2f}, "
            f"{100 * row['median_high']:+.2f}]{tail}.")


def frame(summary: Mapping[str, Any]):
    """The rows as ``report/above_wise.csv`` holds them."""
    import pandas as pd

    return pd.DataFrame(list(summary.get("rows") or []), columns=list(CSV_COLUMNS))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
