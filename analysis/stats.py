"""Statistics of a confirmation (numpy and scipy; no torch): what a lab can act on.

- Over seeds, for each confirmed configuration and metric: the mean, the standard deviation (n - 1) and a 95%
  interval of the mean from Student's t with n - 1 degrees of freedom (``seed_interval``).
- For every evaluated point: the Wilson score interval of each accuracy from its number of images
  (``wilson``; ``ood_mean`` is a mean of sets, not a proportion, and gets none).
- The paired gap against WiSE-FT at equal ID: for each seed s, ``ΔOOD(s) = OOD(config, s) - W_s(ID(config, s))``
  where ``W_s`` is the WiSE-FT curve of vanilla FT's seed s (its points joined by straight lines in ID order, on ID
  test accuracy), and the mean of ΔOOD over seeds with its t interval. The same gap for the best point (largest gap)
  of the configuration's own WiSE-FT curve of seed s. A configuration whose ID falls outside vanilla FT's curve for
  some seed gets no gap: it is said to lie outside, never extrapolated.
- The verdict: *better* when the gap's interval lies above 0, *worse* when below, otherwise *indistinguishable*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robusttune.experiment import VANILLA_FT as VANILLA, ZERO_SHOT
from robusttune.metrics import ID_TEST, OOD_MEAN, is_metric

LEVEL = 0.95  # every interval here is a 95% interval
BETTER, WORSE, TIED, OUTSIDE = "better", "worse", "indistinguishable", "outside vanilla FT's WiSE-FT range"


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its standard deviation and 95% Student-t interval (NaN bounds for a single seed)."""

    mean: float
    sd: float
    low: float
    high: float
    n: int

    def to_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_mean": self.mean, f"{prefix}_sd": self.sd, f"{prefix}_low": self.low,
                f"{prefix}_high": self.high}


def seed_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean, standard deviation (ddof 1) and the Student-t interval of the mean of ``values`` (one per seed)."""
    from scipy import stats

    array = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(array)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(array.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1)
    sd = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, sd, mean - half, mean + half, n)


def wilson(accuracy: float, images: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on ``images`` images."""
    from scipy import stats

    correct = int(round(accuracy * images))
    ci = stats.binomtest(correct, images).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def point_intervals(row: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``{metric: Wilson interval}`` of one evaluated row, for each accuracy whose image count it recorded."""
    sizes = row.get("eval_images") or {}
    return {m: wilson(float(row[m]), int(sizes[m])) for m in row if is_metric(m) and m in sizes and sizes[m]}


def curve_at(curve: Sequence[tuple[float, float]], x: float) -> float | None:
    """The curve's y at ``x``: its (x, y) points joined by straight lines in order of x; None outside its x range."""
    points = sorted(curve)
    xs = np.asarray([p[0] for p in points], dtype=float)
    if not len(xs) or x < xs[0] or x > xs[-1]:
        return None
    return float(np.interp(x, xs, [p[1] for p in points]))


def verdict(interval: Interval) -> str:
    if interval.n < 2 or math.isnan(interval.low):
        return TIED  # one seed says nothing about noise
    return BETTER if interval.low > 0 else WORSE if interval.high < 0 else TIED


def gaps_against(config_points: dict[int, tuple[float, float]], curves: dict[int, list[tuple[float, float]]]) -> dict[int, float | None]:
    """Per seed: the config's OOD minus vanilla FT's WiSE-FT curve of the same seed at the config's ID (None when the
    seed has no curve or the ID lies outside it)."""
    gaps: dict[int, float | None] = {}
    for seed, (x, y) in config_points.items():
        at = curve_at(curves.get(seed, []), x)
        gaps[seed] = None if at is None else y - at
    return gaps


def best_gaps(own_curves: dict[int, list[tuple[float, float]]],
              curves: dict[int, list[tuple[float, float]]]) -> dict[int, float | None]:
    """Per seed: the largest gap of any point of the configuration's own WiSE-FT curve that lies within vanilla FT's
    curve of the same seed (None when none does)."""
    best: dict[int, float | None] = {}
    for seed, own in own_curves.items():
        gaps = [g for g in (gaps_against({0: p}, {0: curves.get(seed, [])})[0] for p in own) if g is not None]
        best[seed] = max(gaps) if gaps else None
    return best


# ------------------------------------------------------------------------------------------------ an experiment


def confirm_rows(experiment: str | Path) -> list[dict[str, Any]]:
    """The experiment's confirmation rows (``kind: confirm``), failed runs included."""
    from robusttune.experiment import is_confirm_row, read_records

    return [row for row in read_records(experiment) if is_confirm_row(row)]


def verdicts(experiment: str | Path, x: str = ID_TEST, y: str = OOD_MEAN) -> list[dict[str, Any]]:
    """One row per confirmed configuration (vanilla FT and zero-shot included), best gap first: its source, seeds,
    each metric's mean, sd and interval over seeds, the paired gap ΔOOD against vanilla FT's WiSE-FT at equal ID
    (mean and interval), the same for its own WiSE-FT's best point, and the verdict word."""
    rows = confirm_rows(experiment)
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    curves: dict[str, dict[int, list[tuple[float, float]]]] = {}
    sources: dict[str, str] = {}
    methods: dict[str, str] = {}
    failed: dict[str, int] = {}
    for row in rows:
        key, seed = row["config_key"], int(row["seed"])
        sources[key] = row["source"]
        methods[key] = method_of(row) or methods.get(key, "")  # a curve's rows carry no config
        if row.get("status") == "failed":
            failed[key] = failed.get(key, 0) + 1
        elif row.get("alpha") is None:
            runs.setdefault(key, {})[seed] = row
        elif x in row and y in row:
            curves.setdefault(key, {}).setdefault(seed, []).append((float(row[x]), float(row[y])))
    vanilla_key = next((k for k, s in sources.items() if s == VANILLA), None)
    vanilla_curves = curves.get(vanilla_key, {}) if vanilla_key else {}
    table = []
    for key, by_seed in runs.items():
        metrics = sorted({m for r in by_seed.values() for m in r if is_metric(m)})
        summary: dict[str, Any] = {"config_key": key, "source": sources[key], "method": methods[key], "seeds": len(by_seed),
                                   "failed_seeds": failed.get(key, 0)}
        for metric in metrics:
            summary |= seed_interval([r.get(metric) for r in by_seed.values()]).to_dict(metric)
        if sources[key] not in (VANILLA, ZERO_SHOT):
            points = {s: (float(r[x]), float(r[y])) for s, r in by_seed.items() if x in r and y in r}
            gaps = gaps_against(points, vanilla_curves)
            own = best_gaps(curves.get(key, {}), vanilla_curves)
            summary |= _gap_summary("delta_ood", gaps) | _gap_summary("delta_ood_own_wise", own)
        table.append(summary)
    return sorted(table, key=lambda r: -(r.get("delta_ood_mean") if _finite(r.get("delta_ood_mean")) else -math.inf))


def method_of(row: dict[str, Any]) -> str:
    """What a confirmation row measured: a merge's name, else the method its config trained with."""
    from robusttune.methods import method_name

    if row.get("method"):
        return str(row["method"])
    return str(method_name(row["config"].get("method", {}))) if isinstance(row.get("config"), dict) else ""


def _gap_summary(prefix: str, gaps: dict[int, float | None]) -> dict[str, Any]:
    if not gaps:
        return {f"{prefix}_verdict": None}
    if any(g is None for g in gaps.values()):
        return {f"{prefix}_mean": math.nan, f"{prefix}_low": math.nan, f"{prefix}_high": math.nan,
                f"{prefix}_verdict": OUTSIDE}
    interval = seed_interval(list(gaps.values()))  # type: ignore[arg-type]
    return {f"{prefix}_mean": interval.mean, f"{prefix}_low": interval.low, f"{prefix}_high": interval.high,
            f"{prefix}_verdict": verdict(interval)}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def sentence(row: dict[str, Any]) -> str:
    """One sentence about a verdict row, for readers (points of accuracy, 95% t intervals over seeds)."""
    def pts(v: float) -> str:
        return f"{100 * v:+.2f}"

    from robusttune.methods import MergeName

    method = row.get("method") or ""
    name = {VANILLA: "Vanilla fine-tuning", ZERO_SHOT: "The zero-shot model"}.get(
        row["source"], f"The {method.replace('_', ' ')}" if method in set(MergeName)
        else f"Trial {row['source']}'s configuration" + (f" ({method})" if method else ""))
    seeds = f"{row['seeds']} seed{'s' if row['seeds'] != 1 else ''}"
    base = (f"{name} ({seeds}): ID {100 * row.get(f'{ID_TEST}_mean', math.nan):.1f}%, "
            f"OOD mean {100 * row.get(f'{OOD_MEAN}_mean', math.nan):.1f}%")
    word = row.get("delta_ood_verdict")
    if word is None:
        return base + "."
    if word == OUTSIDE:
        return base + "; its ID lies outside vanilla FT's WiSE-FT curve for some seed, so no gap at equal ID is claimed."
    gap = f"{pts(row['delta_ood_mean'])} points [{pts(row['delta_ood_low'])}, {pts(row['delta_ood_high'])}]"
    said = {BETTER: "better than", WORSE: "worse than", TIED: "indistinguishable from"}[word]
    return base + f"; {said} WiSE-FT at equal ID: ΔOOD {gap}" + (
        f" (its own WiSE-FT's best point: {pts(row['delta_ood_own_wise_mean'])})"
        if _finite(row.get("delta_ood_own_wise_mean")) else "") + "."


def curve_band(experiment: str | Path, source: str = VANILLA, x: str = ID_TEST, y: str = OOD_MEAN) -> list[dict[str, float]]:
    """A confirmed configuration's WiSE-FT curve over seeds, per alpha: the mean ID and OOD and the OOD's 95%
    t interval (the band the report draws for vanilla FT)."""
    by_alpha: dict[float, list[tuple[float, float]]] = {}
    for row in confirm_rows(experiment):
        if row["source"] == source and row.get("alpha") is not None and x in row and y in row:
            by_alpha.setdefault(float(row["alpha"]), []).append((float(row[x]), float(row[y])))
    band = []
    for alpha in sorted(by_alpha):
        xs, ys = zip(*by_alpha[alpha])
        interval = seed_interval(list(ys))
        band.append({"alpha": alpha, x: float(np.mean(xs)), y: interval.mean, "low": interval.low, "high": interval.high,
                     "seeds": interval.n})
    return band


CSV_COLUMNS = ("source", "method", "config_key", "seeds", "failed_seeds")


def verdict_frame(rows: list[dict[str, Any]]):
    """The verdict rows as ``report/confirm.csv`` holds them: one row per configuration, for each metric its mean and
    the interval's bounds, then the gaps and the verdicts."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    metric_parts = sorted(c for c in frame.columns if c.endswith(("_mean", "_low", "_high")) and not c.startswith("delta_"))
    gaps = [c for c in frame.columns if c.startswith("delta_")]
    return frame[[*[c for c in CSV_COLUMNS if c in frame], *metric_parts, *gaps]]


def half_width(row: dict[str, Any], metric: str, level: float = LEVEL) -> float | None:
    """Half the 95% interval of one evaluated accuracy: Wilson's from its image count, or, for ``ood_mean`` (the mean
    of K sets' accuracies), the normal interval of a mean of independent binomials (var = sum p(1-p)/n / K^2)."""
    from scipy import stats

    from robusttune.metrics import WISE_PREFIX, is_wise_value

    if is_wise_value(metric):  # the best point of the trial's WiSE-FT curve: measured on its own metrics' images
        point = {k[len(WISE_PREFIX):]: v for k, v in row.items() if is_wise_value(k)}
        return half_width({**point, "eval_images": row.get("eval_images")}, metric[len(WISE_PREFIX):], level)
    sizes = row.get("eval_images") or {}
    if metric in sizes and sizes[metric] and isinstance(row.get(metric), int | float):
        low, high = wilson(float(row[metric]), int(sizes[metric]), level)
        return (high - low) / 2
    if metric == OOD_MEAN:
        from robusttune.metrics import is_ood_set

        parts = [(float(row[m]), int(n)) for m, n in sizes.items() if is_ood_set(m) and n and isinstance(row.get(m), int | float)]
        if parts:
            variance = sum(p * (1 - p) / n for p, n in parts) / len(parts) ** 2
            return float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt(variance)
    return None


def ties(rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> dict[str, list[str]]:
    """Front points the evaluation's noise cannot order: for each row (by ``trial_id``), the other rows that lie within
    its 95% interval on every axis (an empty list: distinguishable from all the others)."""
    widths = {r["trial_id"]: [half_width(r, a) for a in axes] for r in rows}
    tied: dict[str, list[str]] = {}
    for r in rows:
        mine = widths[r["trial_id"]]
        tied[r["trial_id"]] = [o["trial_id"] for o in rows if o is not r and all(
            w is not None and abs(float(o[a]) - float(r[a])) <= w for a, w in zip(axes, mine))]
    return tied
