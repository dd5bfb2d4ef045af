"""What each trial cost, as its records say (``cost`` of its last row, measured by ``robusttune.training.cost``),
against ``plan``'s prediction when one is given, and the front read against cost (reads files only: no torch, ray
or optuna).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from robusttune.cache import atomic_write
from robusttune.experiment import read_records
from robusttune.metrics import ID_TEST, OOD_MEAN

COST_COLUMNS = ("device_s", "startup_s", "train_s", "eval_s", "images_trained", "images_evaluated", "evaluations",
                "peak_memory_bytes", "peak_memory_kind", "host", "device", "workers", "resumes")


def trial_costs(experiment: str | Path) -> dict[str, dict[str, Any]]:
    """Trial id -> its cost as last recorded (trials that recorded none are left out)."""
    found: dict[str, dict[str, Any]] = {}
    for row in read_records(experiment):
        if "trial_id" in row and isinstance(row.get("cost"), dict):
            found[row["trial_id"]] = {k: row["cost"].get(k) for k in COST_COLUMNS}
    return found


def totals(costs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The sweep's trials together: device-seconds by phase, images, evaluations and the largest peak memory."""
    summed = {k: round(sum(float(c.get(k) or 0) for c in costs.values()), 3)
              for k in ("device_s", "startup_s", "train_s", "eval_s")}
    summed |= {k: int(sum(int(c.get(k) or 0) for c in costs.values())) for k in ("images_trained", "images_evaluated", "evaluations")}
    peaks = [int(c["peak_memory_bytes"]) for c in costs.values() if c.get("peak_memory_bytes")]
    return {"trials": len(costs), **summed, "peak_memory_bytes": max(peaks) if peaks else None,
            "devices": sorted({str(c.get("device")) for c in costs.values() if c.get("device")}),
            "hosts": sorted({str(c.get("host")) for c in costs.values() if c.get("host")})}


def against_plan(costs: Mapping[str, Mapping[str, Any]], plan: Mapping[str, Any]) -> dict[str, Any]:
    """Each trial's measured device-seconds, evaluations and images against ``plan``'s (``Plan.to_dict()``) for a
    trial of as many evaluations (a stopped-early trial: that share of a full-length one). ``ratio``: measured over
    predicted."""
    full_s = float(plan["trial_hours"]) * 3600
    per_trial = max(1, int(plan["evaluations_per_trial"]))
    rows = {}
    for trial_id, cost in costs.items():
        share = min(1.0, int(cost.get("evaluations") or 0) / per_trial)
        predicted = {"device_s": full_s * share, "images_evaluated": int(plan["eval_images_per_trial"]) * share}
        rows[trial_id] = {"evaluations": cost.get("evaluations"), "planned_evaluations": per_trial,
                          "device_s": cost.get("device_s"), "planned_device_s": round(predicted["device_s"], 3),
                          "ratio": round(float(cost["device_s"]) / predicted["device_s"], 3)
                          if predicted["device_s"] and cost.get("device_s") is not None else None,
                          "images_evaluated": cost.get("images_evaluated"),
                          "planned_images_evaluated": round(predicted["images_evaluated"])}
    ratios = sorted(r["ratio"] for r in rows.values() if r["ratio"] is not None)
    return {"trials": rows, "median_ratio": ratios[len(ratios) // 2] if ratios else None,
            "trial_hours": plan["trial_hours"], "evaluations_per_trial": per_trial}


def cost_frame(frame: pd.DataFrame, costs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """``frame`` (``results.trials``) with each trial's cost columns (``cost.<name>``)."""
    if frame.empty or not costs:
        return frame
    columns = {f"cost.{k}": [costs.get(t, {}).get(k) for t in frame["trial_id"]] for k in COST_COLUMNS}
    return frame.assign(**columns)


def cost_png(frame: pd.DataFrame, front_ids: list[str], path: Path, *, x: str = ID_TEST, y: str = OOD_MEAN) -> Path:
    """Left: each complete trial's OOD mean against its device-seconds (front trials marked). Right: the best OOD
    mean and the best ID found so far against the device-seconds the sweep had spent (trials in the order they ended)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = frame[(frame["status"] == "complete")].dropna(subset=[x, y, "cost.device_s"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    on_front = done["trial_id"].isin(front_ids)
    left.scatter(done.loc[~on_front, "cost.device_s"], 100 * done.loc[~on_front, y], c="#9ecae1", s=24, label="trial")
    left.scatter(done.loc[on_front, "cost.device_s"], 100 * done.loc[on_front, y], c="#d62728", s=36, label="Pareto front")
    left.set_xlabel("device-seconds of the trial")
    left.set_ylabel(f"{y} (%)")
    left.grid(alpha=0.3)
    if len(done):
        left.legend(fontsize=7)
    spent = frame.dropna(subset=["cost.device_s"]).sort_values("order")
    if not spent.empty:
        cumulative = spent["cost.device_s"].astype(float).cumsum()
        complete = spent["status"] == "complete"
        for metric, colour in ((y, "#d62728"), (x, "#1f77b4")):
            if metric in spent:
                best = spent[metric].where(complete).astype(float).cummax()
                right.step(cumulative, 100 * best, where="post", color=colour, label=f"best {metric}")
        right.legend(fontsize=7)
    right.set_xlabel("device-seconds spent by the sweep's trials")
    right.set_ylabel("best so far (%)")
    right.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def cost_plotly(frame: pd.DataFrame, front_ids: list[str], *, y: str = OOD_MEAN):
    import plotly.graph_objects as go

    done = frame[(frame["status"] == "complete")].dropna(subset=[y, "cost.device_s"])
    fig = go.Figure()
    for on, name, colour in ((False, "trial", "#9ecae1"), (True, "Pareto front", "#d62728")):
        part = done[done["trial_id"].isin(front_ids) == on]
        fig.add_trace(go.Scatter(x=part["cost.device_s"], y=100 * part[y], mode="markers", name=name,
                                 marker={"color": colour, "size": 8}, text=part["trial_id"],
                                 hovertemplate="%{text}<br>%{x:.1f} device-s, %{y:.1f}%<extra></extra>"))
    fig.update_layout(xaxis_title="device-seconds of the trial", yaxis_title=f"{y} (%)", height=400, margin={"t": 30})
    return fig
