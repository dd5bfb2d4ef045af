"""Parameter effects and importance, from the trials table alone.

Importance is our own, stated in the report: for each objective, a random forest (scikit-learn) is fitted on
the complete trials' searched parameters (categoricals one-hot encoded, numbers as they are, log-scaled when
they span more than a decade) and each parameter's importance is its permutation importance (drop in R^2 when
that parameter's columns are shuffled), normalised to sum to 1. With fewer than 6 complete trials it is not
computed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robusttune.cache import atomic_write

MIN_TRIALS = 6


def _design(frame: pd.DataFrame, params: list[str]) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    columns: dict[str, list[str]] = {}
    parts = []
    for p in params:
        values = frame[p]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().sum() == values.notna().sum() and values.notna().any():
            filled = numeric.fillna(numeric.median())
            if filled.min() > 0 and filled.max() / filled.min() > 10:
                filled = np.log10(filled)
            parts.append(filled.rename(p).to_frame())
            columns[p] = [p]
        else:
            dummies = pd.get_dummies(values.astype(str), prefix=p, dtype=float)
            parts.append(dummies)
            columns[p] = list(dummies.columns)
    return pd.concat(parts, axis=1), columns


def importance(frame: pd.DataFrame, params: list[str], objectives: list[str], *, seed: int = 0) -> pd.DataFrame:
    """Rows: parameters; columns: objectives; values: normalised permutation importance (empty if too few trials)."""
    done = frame[frame["status"] == "complete"].dropna(subset=objectives)
    if len(done) < MIN_TRIALS or not params:
        return pd.DataFrame()
    from sklearn.ensemble import RandomForestRegressor

    design, columns = _design(done, params)
    rng = np.random.default_rng(seed)
    table = {}
    for objective in objectives:
        target = done[objective].to_numpy(dtype=float)
        model = RandomForestRegressor(n_estimators=200, random_state=seed, min_samples_leaf=1).fit(design, target)
        base = model.score(design, target)
        drops = {}
        for p, cols in columns.items():
            losses = []
            for _ in range(5):
                shuffled = design.copy()
                order = rng.permutation(len(shuffled))
                shuffled[cols] = shuffled[cols].to_numpy()[order]
                losses.append(base - model.score(shuffled, target))
            drops[p] = max(0.0, float(np.mean(losses)))
        total = sum(drops.values()) or 1.0
        table[objective] = {p: v / total for p, v in drops.items()}
    return pd.DataFrame(table)


def effects_png(frame: pd.DataFrame, params: list[str], path, *, y: str = "ood_mean") -> None:
    """OOD mean against each numeric parameter, coloured by masking region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robusttune.analysis.figures import REGION_COLOURS

    done = frame[frame["status"] == "complete"]
    numeric = [p for p in params if pd.to_numeric(done[p], errors="coerce").notna().any()]
    if not numeric:
        return None
    fig, axes = plt.subplots(1, len(numeric), figsize=(4.2 * len(numeric), 3.6), squeeze=False)
    for ax, p in zip(axes[0], numeric):
        values = pd.to_numeric(done[p], errors="coerce")
        regions = done.get("param.region", pd.Series(["none"] * len(done), index=done.index)).fillna("none")
        for region, colour in REGION_COLOURS.items():
            pick = (regions == region) & values.notna()
            if pick.any():
                ax.scatter(values[pick], 100 * done.loc[pick, y], c=colour, label=region, s=30)
        if values.dropna().min() > 0 and values.max() / values.dropna().min() > 10:
            ax.set_xscale("log")
        ax.set_xlabel(p.removeprefix("param."))
        ax.set_ylabel(f"{y} (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
