"""A constrained search in the report: which trials satisfy the space's constraints, the best feasible one, and a
figure with the feasible region shaded and infeasible trials marked (reads files only: no torch, ray or optuna).

A trial's feasibility is what it reported (``constraint_violation`` of its last row: 0 feasible, ``constraints``
its values, Optuna's convention); each bound is resolved as the trials resolved it, from the records' zero-shot and
vanilla FT rows (``robusttune.constraints``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from robusttune.cache import atomic_write
from robusttune.constraints import CONSTRAINTS, VIOLATION, references_from_rows
from robusttune.experiment import load_frozen_space, read_records
from robusttune.metrics import OOD_MEAN

FEASIBLE_FILL = "rgba(44,160,44,0.12)"


def feasibility(experiment: str | Path) -> dict[str, Any]:
    """``{}`` for a space without constraints; else the constraints with their resolved bounds, every trial's
    feasibility (``trials``: trial id -> {feasible, violation, values, status}), the counts and the best feasible
    complete trial on the first objective metric."""
    try:
        space, _ = load_frozen_space(experiment)
    except Exception:  # no frozen space (a planted or half-written experiment): nothing is constrained
        return {}
    bounds = space.objective.bounds
    if not bounds:
        return {}
    rows = list(read_records(experiment))
    references = references_from_rows(rows)
    resolved = []
    for c in bounds:
        try:
            bound = c.bound(references)
        except LookupError:
            bound = math.nan
        resolved.append({"constraint": c.text, "metric": c.metric, "op": c.op, "bound": bound})
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        if "trial_id" in row:
            latest[row["trial_id"]] = {**latest.get(row["trial_id"], {}), **row}
    trials = {}
    for trial_id, row in latest.items():
        excess = row.get(VIOLATION)
        if isinstance(excess, int | float):
            trials[trial_id] = {"status": row.get("status"), "feasible": excess <= 0, "violation": float(excess),
                                "values": list(row.get(CONSTRAINTS) or [])}
    metric, direction = space.objective.metrics[0], space.objective.directions[0].value
    complete = [(t, latest[t]) for t, f in trials.items() if f["feasible"] and f["status"] == "complete"
                and isinstance(latest[t].get(metric), int | float)]
    summary: dict[str, Any] = {"constraints": resolved, "trials": trials,
                               "feasible": sum(f["feasible"] for f in trials.values()),
                               "infeasible": sum(not f["feasible"] for f in trials.values())}
    if complete:
        pick = max if direction == "max" else min
        best_id, best = pick(complete, key=lambda item: float(item[1][metric]))
        summary["best_feasible"] = {"trial_id": best_id, metric: float(best[metric]),
                                    **{c.metric: float(best[c.metric]) for c in bounds if c.metric in best}}
    return summary


def _axes(summary: dict[str, Any], y: str) -> str:
    """The figure's x axis: the first constrained metric that is not the y axis (else the first constrained one)."""
    metrics = [c["metric"] for c in summary["constraints"]]
    return next((m for m in metrics if m != y), metrics[0])


def _band(summary: dict[str, Any], metric: str) -> tuple[float, float]:
    """The feasible interval of ``metric`` its numeric-resolved constraints leave ([0, 1] when unconstrained)."""
    low, high = 0.0, 1.0
    for c in summary["constraints"]:
        if c["metric"] == metric and not math.isnan(c["bound"]):
            low, high = (max(low, c["bound"]), high) if c["op"] == ">=" else (low, min(high, c["bound"]))
    return low, high


def _points(frame: pd.DataFrame, summary: dict[str, Any], x: str, y: str) -> pd.DataFrame:
    done = frame[frame["status"] == "complete"].dropna(subset=[x, y]) if not frame.empty and {x, y} <= set(frame) else frame.iloc[0:0]
    feasible = [summary["trials"].get(t, {}).get("feasible", True) for t in done["trial_id"]]
    return done.assign(feasible=feasible)


def feasibility_png(frame: pd.DataFrame, summary: dict[str, Any], path: Path, *, y: str = OOD_MEAN) -> Path:
    """Complete trials on (constrained metric, ``y``): the feasible region shaded, infeasible trials as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = _axes(summary, y)
    points = _points(frame, summary, x, y)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    (x0, x1), (y0, y1) = _band(summary, x), _band(summary, y)
    ax.axvspan(100 * x0, 100 * x1, color="#2ca02c", alpha=0.12, label="feasible region")
    if (y0, y1) != (0.0, 1.0):
        ax.axhspan(100 * y0, 100 * y1, color="#2ca02c", alpha=0.08)
    ok, bad = points[points["feasible"]], points[~points["feasible"]]
    ax.scatter(100 * ok[x], 100 * ok[y], c="#1f77b4", s=28, label="feasible trial")
    ax.scatter(100 * bad[x], 100 * bad[y], c="#7f7f7f", marker="x", s=36, label="infeasible trial")
    if not points.empty:
        pad = 2.0
        ax.set_xlim(100 * points[x].min() - pad, 100 * points[x].max() + pad)
        ax.set_ylim(100 * points[y].min() - pad, 100 * points[y].max() + pad)
    ax.set_xlabel(f"{x} (%)")
    ax.set_ylabel(f"{y} (%)")
    ax.set_title("; ".join(c["constraint"] for c in summary["constraints"])[:90], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def feasibility_plotly(frame: pd.DataFrame, summary: dict[str, Any], *, y: str = OOD_MEAN):
    import plotly.graph_objects as go

    x = _axes(summary, y)
    points = _points(frame, summary, x, y)
    fig = go.Figure()
    (x0, x1), (y0, y1) = _band(summary, x), _band(summary, y)
    fig.add_vrect(x0=100 * x0, x1=100 * x1, fillcolor=FEASIBLE_FILL, line_width=0, layer="below")
    if (y0, y1) != (0.0, 1.0):
        fig.add_hrect(y0=100 * y0, y1=100 * y1, fillcolor=FEASIBLE_FILL, line_width=0, layer="below")
    for feasible, name, marker in ((True, "feasible trial", {"color": "#1f77b4", "size": 8}),
                                   (False, "infeasible trial", {"color": "#7f7f7f", "symbol": "x", "size": 9})):
        part = points[points["feasible"] == feasible]
        fig.add_trace(go.Scatter(x=100 * part[x], y=100 * part[y], mode="markers", name=name, marker=marker,
                                 text=part["trial_id"], hovertemplate="%{text}<br>%{x:.1f}, %{y:.1f}<extra></extra>"))
    if not points.empty:
        fig.update_xaxes(range=[100 * points[x].min() - 2, 100 * points[x].max() + 2])
    fig.update_layout(xaxis_title=f"{x} (%)", yaxis_title=f"{y} (%)", height=420, margin={"t": 30})
    return fig
