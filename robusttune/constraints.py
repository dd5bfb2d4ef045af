"""Constraints in a search's objective (layer 0: no torch, ray or optuna).

A space says what a lab can accept, next to what it maximises::

    objective:
      metrics: [ood_mean]
      directions: [max]
      constraints: ["id_val_acc >= zero_shot + 1.0", "id_acc >= 0.80"]

Each constraint is ``<metric> >= <bound>`` or ``<metric> <= <bound>``; the metric is an accuracy a trial reports
(``id_val_acc``, ``id_acc``, ``ood_mean``, ``ood_<set>``), the bound one of:

- a number: the accuracy itself, a fraction as records hold it (``0.80``, not ``80``);
- a reference the experiment measures, ``zero_shot`` or ``vanilla_ft``: that run's value of the same metric,
  optionally plus or minus an offset in points of accuracy (``zero_shot + 1.0``: one point above zero-shot).
  A sweep whose constraints name a reference runs zero-shot and vanilla fine-tuning (and its WiSE-FT curve) before
  its first trial.

A constraint's value follows Optuna's convention: at most 0 when it holds (``bound - metric`` for ``>=``,
``metric - bound`` for ``<=``), in accuracy units. A trial's ``constraint_violation`` is the sum of the positive
values; it is feasible when that is 0. What the searcher and the schedulers rank on (``score``): an infeasible
evaluation's scalar objective lies below every feasible one's (``infeasible_scalar``), its MO-ASHA vector below
every feasible vector in every component (``infeasible_vector``), the less violation the higher.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from robusttune.metrics import ID_METRICS, OBJECTIVE, OOD_MEAN, is_ood_set

ZERO_SHOT_REF, VANILLA_FT_REF = "zero_shot", "vanilla_ft"
REFERENCES = {ZERO_SHOT_REF: "zero-shot", VANILLA_FT_REF: "vanilla-ft"}  # name in a bound -> the records' method
CONSTRAINTS = "constraints"  # a result's / record's key: the constraint values, in the space's order
VIOLATION = "constraint_violation"  # ... and the sum of their positive parts
MAX_CONSTRAINTS = 16
_UNSIGNED = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_SHAPE = re.compile(r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|==|=>|=<|>|<|=)\s*(?P<bound>.*?)\s*$")
_BOUND = re.compile(rf"^(?:(?P<ref>[A-Za-z_][A-Za-z0-9_]*)\s*(?:(?P<sign>[+-])\s*(?P<offset>{_UNSIGNED}))?|(?P<number>[+-]?{_UNSIGNED}))$")


@dataclass(frozen=True)
class Constraint:
    """One parsed constraint: ``metric op (reference's metric + offset / 100 | number)``."""

    text: str
    metric: str
    op: str  # ">=" or "<="
    reference: str | None  # zero_shot, vanilla_ft or None (a number)
    number: float  # the bound (no reference) or the offset in points (with one)

    @property
    def lower(self) -> bool:
        return self.op == ">="

    def bound(self, references: Mapping[str, Mapping[str, float]] | None = None) -> float:
        """The bound in accuracy units; a reference's value from ``references`` (``{zero_shot: {metric: value}}``)."""
        if self.reference is None:
            return self.number
        measured = (references or {}).get(self.reference, {}).get(self.metric)
        if not isinstance(measured, int | float) or math.isnan(measured):
            raise LookupError(f"constraint '{self.text}' needs {self.reference}'s {self.metric}, which the "
                              f"experiment has not measured")
        return float(measured) + self.number / 100

    def value(self, metrics: Mapping[str, float], references: Mapping[str, Mapping[str, float]] | None = None) -> float:
        """At most 0 when the constraint holds (Optuna's convention)."""
        bound, measured = self.bound(references), float(metrics[self.metric])
        return bound - measured if self.lower else measured - bound


def parse_constraint(text: Any) -> Constraint:
    """One constraint from its text; a ValueError of one line that names the problem otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"a constraint is a string like 'id_val_acc >= zero_shot + 1.0', got {_short(text)}")
    shape = _SHAPE.match(text)
    if not shape:
        raise ValueError(f"constraint {_short(text)} must read '<metric> >= <bound>' or '<metric> <= <bound>'")
    metric, op, bound = shape["metric"], shape["op"], shape["bound"]
    if op not in (">=", "<="):
        raise ValueError(f"constraint {_short(text)}: use >= or <= (a bound on a measured accuracy), not {op}")
    if metric not in (*ID_METRICS, OOD_MEAN) and not is_ood_set(metric):
        names = [*ID_METRICS, OOD_MEAN]
        close = difflib.get_close_matches(metric, names, n=1)
        raise ValueError(f"constraint {_short(text)}: unknown metric '{metric}'"
                         + (f" (did you mean '{close[0]}'?)" if close else "") + f"; use {', '.join(names)} or ood_<set>")
    found = _BOUND.match(bound)
    if not found:
        raise ValueError(f"constraint {_short(text)}: the bound must be a number (an accuracy, e.g. 0.8) or a "
                         f"reference ({', '.join(REFERENCES)}) with an optional '+ <points>' or '- <points>'")
    if found["number"] is not None:
        number = float(found["number"])
        if not 0.0 <= number <= 1.0:
            raise ValueError(f"constraint {_short(text)}: an accuracy bound is a fraction in [0, 1] as records hold it "
                             f"(0.8 for 80%), got {found['number']}")
        return Constraint(text, metric, op, None, number)
    reference = found["ref"]
    if reference not in REFERENCES:
        close = difflib.get_close_matches(reference, list(REFERENCES), n=1)
        raise ValueError(f"constraint {_short(text)}: unknown reference '{reference}'"
                         + (f" (did you mean '{close[0]}'?)" if close else "")
                         + f"; a bound is a number or one of {', '.join(REFERENCES)}")
    offset = float(found["offset"] or 0.0) * (-1 if found["sign"] == "-" else 1)
    if not abs(offset) <= 100:
        raise ValueError(f"constraint {_short(text)}: the offset is in points of accuracy, at most 100, got {abs(offset):g}")
    return Constraint(text, metric, op, reference, offset)


def parse_constraints(texts: Sequence[Any]) -> tuple[Constraint, ...]:
    """Every constraint parsed, then checked together: no constraint twice, no metric bounded so that nothing can
    satisfy it (a lower bound above an upper bound on the same reference, or on numbers)."""
    if len(texts) > MAX_CONSTRAINTS:
        raise ValueError(f"objective.constraints holds at most {MAX_CONSTRAINTS} constraints, got {len(texts)}")
    parsed = tuple(parse_constraint(t) for t in texts)
    seen: set[tuple[str, str, str | None, float]] = set()
    for c in parsed:
        key = (c.metric, c.op, c.reference, c.number)
        if key in seen:
            raise ValueError(f"constraint '{c.text}' is given twice")
        seen.add(key)
    for low in (c for c in parsed if c.lower):
        for high in (c for c in parsed if not c.lower and c.metric == low.metric and c.reference == low.reference):
            if low.number > high.number:
                raise ValueError(f"constraints '{low.text}' and '{high.text}' contradict each other: no {low.metric} "
                                 f"satisfies both")
    return parsed


def references_needed(constraints: Iterable[Constraint]) -> set[str]:
    return {c.reference for c in constraints if c.reference is not None}


def references_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{zero_shot: {metric: value}, vanilla_ft: {...}}`` from an experiment's baseline rows (the last one wins)."""
    by_method = {method: ref for ref, method in REFERENCES.items()}
    found: dict[str, dict[str, float]] = {}
    for row in rows:
        if row.get("kind") == "baseline" and row.get("method") in by_method:
            found[by_method[row["method"]]] = {k: float(v) for k, v in row.items()
                                               if isinstance(v, int | float) and not isinstance(v, bool)}
    return found


def values(constraints: Sequence[Constraint], metrics: Mapping[str, float],
           references: Mapping[str, Mapping[str, float]] | None = None) -> list[float]:
    return [c.value(metrics, references) for c in constraints]


def violation(constraint_values: Iterable[float]) -> float:
    """The sum of the positive constraint values (0: feasible)."""
    return float(sum(max(0.0, v) for v in constraint_values))


def infeasible_scalar(weights_sum: float, excess: float) -> float:
    """A scalar objective below every feasible one: feasible scalars of accuracies (fractions, weights >= 0, a
    minimised metric counted negative) lie in [-sum(weights), sum(weights)]."""
    return -float(weights_sum) - 1.0 - float(excess)


def infeasible_vector(size: int, excess: float) -> list[float]:
    """An MO-ASHA vector (signed, larger is better) dominated by every feasible one: feasible components are signed
    accuracies, in [-1, 1]."""
    return [-2.0 - float(excess)] * size


def score(objective: Any, reported: Mapping[str, float],
          references: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
    """What an evaluation reports as its scalar objective (``objective``: a ``robusttune.space.Objective``): the
    scalarisation alone without constraints; with them, also the constraint values and the violation, and an
    infeasible evaluation's scalar put below every feasible one."""
    scalar = objective.scalar(reported)
    constraints = objective.bounds
    if not constraints:
        return {OBJECTIVE: scalar}
    found = values(constraints, reported, references)
    excess = violation(found)
    weights = objective.scalarization.weights or tuple(1.0 / len(objective.metrics) for _ in objective.metrics)
    return {OBJECTIVE: scalar if excess == 0 else infeasible_scalar(sum(weights), excess), CONSTRAINTS: found,
            VIOLATION: excess}


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
