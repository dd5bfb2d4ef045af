"""Parameter effects and importance, from the trials table alone.

Importance comes from scikit-learn, measured on trials the model did not see: for each objective, a random forest
is fitted on the complete trials' searched parameters (categoricals as category codes, numbers as they are,
log-scaled when they span more than a decade) in K folds, and ``sklearn.inspection.permutation_importance`` scores
each parameter on the held-out fold: the drop in held-out R^2 when its column is shuffled, averaged over the folds,
negative means shown as 0. The numbers are not normalised: a parameter that explains nothing of the objective on
unseen trials shows 0 however the others score. (In-sample importance would flatter every parameter a forest can
memorise.) With fewer than MIN_TRIALS complete trials nothing is shown, and the report says why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robusttune.cache import atomic_write
from robusttune.metrics import OOD_MEAN

MIN_TRIALS = 8
FOLDS = 4
READING = ("Each number is the drop in held-out R^2 (in %) when that parameter's values are shuffled: how much of the "
           "objective it predicts on trials the forest did not see. The numbers are not normalised; 0 means it predicts "
           "nothing on unseen trials, however the others score.")


def _design(frame: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    """One column per parameter: numbers (log10 when they span more than a decade), categories as codes."""
    columns = {}
    for p in params:
        values = frame[p]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().sum() == values.notna().sum() and values.notna().any():
            filled = numeric.fillna(numeric.median())
            if filled.min() > 0 and filled.max() / filled.min() > 10:
                filled = np.log10(filled)
            columns[p] = filled.to_numpy(dtype=float)
        else:
            columns[p] = values.astype(str).astype("category").cat.codes.to_numpy(dtype=float)
    return pd.DataFrame(columns, index=frame.index)


def importance(frame: pd.DataFrame, params: list[str], objectives: list[str], *, seed: int = 0) -> pd.DataFrame:
    """Rows: parameters; columns: objectives; values: drop in held-out R^2 when shuffled. Empty when there
    are too few complete trials; ``attrs['method']`` says how it was computed, ``attrs['reason']`` why not."""
    done = frame[frame["status"] == "complete"].dropna(subset=objectives) if not frame.empty else frame
    if not params or len(done) < MIN_TRIALS:
        empty = pd.DataFrame()
        empty.attrs["reason"] = (f"not computed: {len(done)} complete trial(s), at least {MIN_TRIALS} are needed for a "
                                 f"held-out estimate" if params else "not computed: no searched parameters")
        return empty
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import KFold

    design = _design(done, params)
    folds = KFold(n_splits=min(FOLDS, len(done) // 2), shuffle=True, random_state=seed)
    table = {}
    for objective in objectives:
        target = done[objective].to_numpy(dtype=float)
        per_fold = []
        for train, test in folds.split(design):
            model = RandomForestRegressor(n_estimators=200, min_samples_leaf=2, random_state=seed)
            model.fit(design.iloc[train], target[train])
            scored = permutation_importance(model, design.iloc[test], target[test], n_repeats=10, random_state=seed,
                                            scoring="r2")
            per_fold.append(scored.importances_mean)
        table[objective] = dict(zip(params, np.clip(np.mean(per_fold, axis=0), 0.0, None)))
    result = pd.DataFrame(table)
    result.attrs["method"] = (f"held-out permutation importance (scikit-learn) of a random forest, {folds.get_n_splits()}"
                              f"-fold over {len(done)} complete trials")
    return result


def effects_png(frame: pd.DataFrame, params: list[str], path, *, y: str = OOD_MEAN) -> None:
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
    if axes[0][0].get_legend_handles_labels()[0]:  # a legend only when something is labelled (else matplotlib warns)
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
