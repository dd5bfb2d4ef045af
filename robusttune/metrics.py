"""The metric names and the rules about them, defined here only (layer 0: imports nothing of the package).

An evaluation reports ``id_val_acc`` (a held-out split of the training data: what a search ranks trials on),
``id_acc`` (the ID test set), one ``ood_<set>`` accuracy per OOD set and their mean ``ood_mean``; records and
reports add ``objective``, the space's scalarisation of its objective metrics. A space that scores trials by their
own WiSE-FT curve (``objective.wise``) also reports, per objective metric, ``wise_<metric>``: that metric at the
curve's best point, whose mixing coefficient is ``wise_alpha``; the curve itself is ``wise_curve`` in the run's
history.
"""

from __future__ import annotations

from collections.abc import Iterable

ID_VAL = "id_val_acc"
ID_TEST = "id_acc"
OOD_PREFIX = "ood_"
OOD_MEAN = "ood_mean"
OBJECTIVE = "objective"
METRIC_PREFIXES = ("id_", OOD_PREFIX)
WISE_PREFIX = "wise_"
WISE_ALPHA = "wise_alpha"
WISE_CURVE = "wise_curve"
ID_METRICS = (ID_VAL, ID_TEST)  # their order in every table


def ood_metric(set_name: str) -> str:
    """The metric of the OOD set ``set_name`` (``ood_<set_name>``)."""
    return f"{OOD_PREFIX}{set_name}"


def is_ood_set(name: str) -> bool:
    """Whether ``name`` is one OOD set's accuracy (not their mean)."""
    return name.startswith(OOD_PREFIX) and name != OOD_MEAN


def is_metric(name: str) -> bool:
    """Whether ``name`` is an accuracy an evaluation reports (``id_*`` or ``ood_*``)."""
    return name.startswith(METRIC_PREFIXES)


def wise_key(metric: str) -> str:
    """The report's name of ``metric`` at the best point of the trial's own WiSE-FT curve."""
    return f"{WISE_PREFIX}{metric}"


def is_wise_value(name: str) -> bool:
    """Whether ``name`` is a value of the best WiSE-FT point (``wise_<metric>`` or ``wise_alpha``)."""
    return name == WISE_ALPHA or (name.startswith(WISE_PREFIX) and is_metric(name[len(WISE_PREFIX):]))


def is_accuracy_column(name: str) -> bool:
    """Columns shown in %: the accuracies (the trial's own and its best WiSE-FT point's) and the objective (a
    weighted mean of accuracies)."""
    return is_metric(name) or name == OBJECTIVE or (is_wise_value(name) and name != WISE_ALPHA)


GAP_PREFIX = "delta_"  # the confirmation's gaps (robusttune.analysis.stats): differences of accuracies


def is_gap_column(name: str) -> bool:
    """A gap between accuracies (``delta_ood_mean``, ``delta_ood_low``, ...), shown in points; not its verdict."""
    return name.startswith(GAP_PREFIX) and not name.endswith("_verdict")


def task_metrics(ood_sets: Iterable[str]) -> list[str]:
    """What every evaluation of a task with these OOD sets reports, in table order."""
    oods = [ood_metric(name) for name in ood_sets]
    return [*ID_METRICS, *oods, *([OOD_MEAN] if oods else [])]


def metric_columns(names: Iterable[str]) -> list[str]:
    """The metrics among ``names`` in table order: ID validation, ID test, each OOD set (by name), the OOD mean."""
    names = set(names)
    return ([m for m in ID_METRICS if m in names] + sorted(n for n in names if is_ood_set(n))
            + ([OOD_MEAN] if OOD_MEAN in names else []))


def ood_mean(metrics: dict[str, float]) -> float:
    """The mean over every OOD set's accuracy (NaN without one)."""
    values = [v for k, v in metrics.items() if is_ood_set(k)]
    return float(sum(values) / len(values)) if values else float("nan")
