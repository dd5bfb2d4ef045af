"""The continuous benchmark's surrogate: a model of every learning curve in a space, fitted to a table of random
points (``robusttune bench tabulate --points``), so that a replay can query any configuration (as HPOBench's and
YAHPO Gym's surrogate benchmarks do).

- **Model**: one gradient-boosted tree ensemble (scikit-learn's ``HistGradientBoostingRegressor``) per objective
  metric and for the wall-clock seconds, on the point's parameters (categorical ones as categories, log-scale ones
  as logarithms, a parameter the point does not use as missing) and the evaluation's index. Every row of the table
  is a training example, repeated seeds included, so the model estimates the mean over seeds. The fit is
  deterministic (fixed ``random_state``, no early stopping, no subsampling): nothing is stored but the table.
- **Noise**: what training at another seed changes, measured on the points the table holds at several seeds: per
  metric and evaluation the pooled standard deviation over seeds, and how strongly a seed's deviation carries from
  one evaluation to the next (a correlation). A queried curve is the model's mean plus an AR(1) draw with those
  figures, seeded by the replay's seed and the configuration, so a replay is deterministic for a seed.
- **Quality**: 5-fold cross-validation grouped by point (a point is never in its own training folds): R^2 and
  Spearman's rank correlation per metric, at the last evaluation and over all of them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from robusttune.bench.table import Table
from robusttune.errors import DataError
from robusttune.space import SearchSpace

TIME = "time_s"
FOLDS = 5


def _regressor():
    from sklearn.ensemble import HistGradientBoostingRegressor

    # a few hundred points x a handful of evaluations: shallow trees, slow learning, a little regularisation
    return HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=8,
                                         l2_regularization=1.0, early_stopping=False, categorical_features="from_dtype",
                                         random_state=0)


@dataclass(frozen=True)
class Noise:
    """Per metric: the standard deviation over seeds at each evaluation, and the correlation of a seed's
    deviation between consecutive evaluations."""

    sd: dict[str, list[float]]
    correlation: dict[str, float]
    points: int  # points held at more than one seed

    def to_dict(self) -> dict[str, Any]:
        return {"sd": self.sd, "correlation": self.correlation, "points": self.points}


def measure_noise(table: Table, metrics: list[str]) -> Noise:
    """The training noise, from the points the table holds at more than one seed."""
    frame = table.frame
    if "seed" not in frame:
        return Noise({m: [0.0] * table.evaluations for m in metrics}, {m: 0.0 for m in metrics}, 0)
    seeds_per_point = frame.groupby("point")["seed"].nunique()
    repeated = frame[frame["point"].isin(seeds_per_point[seeds_per_point > 1].index)]
    sd, correlation = {}, {}
    for metric in metrics:
        wide = repeated.pivot_table(index=["point", "seed"], columns="evaluation", values=metric)
        deviation = wide - wide.groupby(level="point").transform("mean")
        counts = wide.groupby(level="point").count()
        dof = (counts - 1).clip(lower=0).sum()
        variance = (deviation ** 2).sum() / dof.where(dof > 0)
        sd[metric] = [float(np.sqrt(variance.get(e, 0.0))) if not math.isnan(variance.get(e, math.nan)) else 0.0
                      for e in range(1, table.evaluations + 1)]
        pairs = [(deviation[e].to_numpy(), deviation[e + 1].to_numpy()) for e in range(1, table.evaluations)
                 if e in deviation and e + 1 in deviation]
        first = np.concatenate([a for a, _ in pairs]) if pairs else np.array([])
        second = np.concatenate([b for _, b in pairs]) if pairs else np.array([])
        keep = np.isfinite(first) & np.isfinite(second)
        if keep.sum() > 2 and first[keep].std() > 0 and second[keep].std() > 0:
            correlation[metric] = float(np.clip(np.corrcoef(first[keep], second[keep])[0, 1], 0.0, 1.0))
        else:
            correlation[metric] = 0.0
    return Noise(sd, correlation, int((seeds_per_point > 1).sum()))


class Surrogate:
    """The fitted benchmark: ``curve(config, seed)`` is a learning curve as a table row list."""

    def __init__(self, table: Table):
        if table.kind != "points":
            raise DataError("a surrogate is fitted to a table of random points (tabulated with `points`)")
        self.table = table
        self.space: SearchSpace = table.space
        self.metrics = list(table.meta["objective"]["metrics"])
        self.targets = [*self.metrics, TIME]
        self.noise = measure_noise(table, self.metrics)
        every = self._features(table.frame, columns=None)
        # a parameter the table holds at one value (or never) says nothing (and the trees cannot bin it)
        self.columns = [c for c in every if every[c].nunique(dropna=True) >= 2]
        self.models = {target: _regressor().fit(self._features(table.frame), table.frame[target].to_numpy(float))
                       for target in self.targets}
        full = max(table.curves.values(), key=len)
        self.steps = [int(row["step"]) for row in full]
        self.epochs = [float(row["epoch"]) for row in full]

    # ------------------------------------------------------------------------------------------- features

    def _features(self, frame, columns: list[str] | None | str = "fitted"):
        """The model's inputs for rows of ``frame`` (columns: the parameters, ``evaluation``): the fitted columns,
        or all of them (``columns=None``)."""
        import pandas as pd

        columns_kept = self.columns if columns == "fitted" else columns
        columns = {}
        for name, parameter in self.space.parameters.items():
            values = frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index)
            if parameter.type == "categorical":
                columns[name] = pd.Categorical(values.where(values.notna(), None), categories=list(parameter.choices))
            else:
                numbers = pd.to_numeric(values, errors="coerce").astype(float)
                columns[name] = np.log10(numbers) if parameter.log else numbers
        columns["evaluation"] = frame["evaluation"].astype(float).to_numpy()
        features = pd.DataFrame(columns, index=frame.index)
        return features if columns_kept is None else features[columns_kept]

    def _query(self, config: dict[str, Any]):
        import pandas as pd

        rows = [{**{k: config.get(k) for k in self.space.parameters}, "evaluation": e}
                for e in range(1, self.table.evaluations + 1)]
        return self._features(pd.DataFrame(rows))

    # -------------------------------------------------------------------------------------------- queries

    def mean_curve(self, config: dict[str, Any]) -> dict[str, np.ndarray]:
        """The model's mean of each target at every evaluation (no noise)."""
        features = self._query(config)
        return {target: model.predict(features) for target, model in self.models.items()}

    def curve(self, config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
        """A learning curve of ``config`` trained at replay seed ``seed``: the mean plus the measured noise, the
        same for the same config and seed."""
        mean = self.mean_curve(config)
        rng = np.random.default_rng([int(seed), _config_hash(config)])
        noisy = {}
        for metric in self.metrics:
            rho, sd = self.noise.correlation[metric], np.asarray(self.noise.sd[metric])
            z = np.empty(len(sd))
            z[0] = rng.standard_normal()
            for e in range(1, len(sd)):  # AR(1): a seed that starts high tends to stay high
                z[e] = rho * z[e - 1] + math.sqrt(1.0 - rho * rho) * rng.standard_normal()
            noisy[metric] = np.clip(mean[metric] + sd * z, 0.0, 1.0)
        seconds = np.maximum.accumulate(np.maximum(mean[TIME], 0.0))  # wall-clock time never runs backwards
        last = self.table.evaluations
        return [{"evaluation": e, "step": self.steps[e - 1], "epoch": self.epochs[e - 1], TIME: float(seconds[e - 1]),
                 **{m: float(noisy[m][e - 1]) for m in self.metrics}, "status": "complete" if e == last else "running"}
                for e in range(1, last + 1)]

    # ------------------------------------------------------------------------------------------ measuring

    @cached_property
    def quality(self) -> dict[str, dict[str, float]]:
        """Held-out R^2 and Spearman's rank correlation per target (grouped 5-fold cross-validation by point): at
        the last evaluation (``r2_final``, ``spearman_final``) and over every evaluation (``r2``, ``spearman``)."""
        from scipy.stats import spearmanr
        from sklearn.metrics import r2_score
        from sklearn.model_selection import GroupKFold

        frame = self.table.frame.reset_index(drop=True)
        features = self._features(frame)
        predicted = {target: np.zeros(len(frame)) for target in self.targets}
        for train, held_out in GroupKFold(n_splits=min(FOLDS, frame["point"].nunique())).split(features, groups=frame["point"]):
            for target in self.targets:
                model = _regressor().fit(features.iloc[train], frame[target].to_numpy(float)[train])
                predicted[target][held_out] = model.predict(features.iloc[held_out])
        final = (frame["evaluation"] == self.table.evaluations).to_numpy()
        quality = {}
        for target in self.targets:
            truth = frame[target].to_numpy(float)
            quality[target] = {"r2": float(r2_score(truth, predicted[target])),
                               "spearman": float(spearmanr(truth, predicted[target]).statistic),
                               "r2_final": float(r2_score(truth[final], predicted[target][final])),
                               "spearman_final": float(spearmanr(truth[final], predicted[target][final]).statistic)}
        return quality

    def front_hypervolume(self, reference: list[float], samples: int = 4096, seed: int = 0) -> float:
        """The benchmark's best hypervolume: that of the model's noiseless last evaluations at ``samples`` random
        configurations of the space (what a search is measured against)."""
        import pandas as pd

        from robusttune.pareto import hypervolume_2d

        rng = np.random.default_rng(seed)
        configs = [random_config(self.space, rng) for _ in range(samples)]
        rows = pd.DataFrame([{**{k: c.get(k) for k in self.space.parameters}, "evaluation": self.table.evaluations}
                             for c in configs])
        features = self._features(rows)
        finals = np.column_stack([self.models[m].predict(features) for m in self.metrics])
        return hypervolume_2d(finals.tolist(), reference)


def random_config(space: SearchSpace, rng: np.random.Generator) -> dict[str, Any]:
    """One configuration drawn uniformly from ``space`` (log-uniformly on log scales; inactive parameters left out)."""
    values: dict[str, Any] = {}
    for name in space.suggestion_order():
        p = space.parameters[name]
        if p.when and any(values.get(parent) not in allowed for parent, allowed in p.when.items()):
            continue
        if p.type == "categorical":
            values[name] = p.choices[int(rng.integers(len(p.choices)))]
        elif p.log:
            values[name] = float(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
        else:
            values[name] = float(rng.uniform(p.low, p.high))
        if p.type == "int":
            values[name] = int(round(values[name]))
    return values


def _config_hash(config: dict[str, Any]) -> int:
    """A stable 63-bit number for a configuration (Python's ``hash`` changes between processes)."""
    text = json.dumps({k: (round(v, 12) if isinstance(v, float) else v) for k, v in sorted(config.items())}, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


_FITTED: dict[str, Surrogate] = {}


def surrogate_of(path: str, table: Table) -> Surrogate:
    """The surrogate of the table at ``path``, fitted once per process."""
    if path not in _FITTED:
        _FITTED[path] = Surrogate(table)
    return _FITTED[path]
