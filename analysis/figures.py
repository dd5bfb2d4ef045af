"""The report's charts, each drawn twice with the same content: matplotlib (PNG) and plotly (HTML).

Trials of the paper's method are coloured by masking region and shaped by refill, those of the other methods (a
sweep that searches ``method``) coloured by method; the Pareto front is a step line.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robusttune import pareto
from robusttune.cache import atomic_write
from robusttune.experiment import MERGE_KIND, VANILLA_FT, ZERO_SHOT
from robusttune.metrics import ID_TEST, OOD_MEAN, is_ood_set

REGION_COLOURS = {"object": "#d62728", "context": "#1f77b4", "random": "#2ca02c", "none": "#7f7f7f",
                  # the other methods (robusttune.methods), when a sweep searches the method
                  "ft": "#8c564b", "lp": "#bcbd22", "lp_ft": "#17becf", "l2sp": "#9467bd",
                  "flyp": "#ff7f0e", "lipsum": "#e377c2"}
REFILL_MARKERS = {"single": ("o", "circle"), "multi": ("s", "square"), "none": ("^", "triangle-up"), "-": ("D", "diamond")}


def _style(row) -> tuple[str, str, str]:
    """(colour group, marker group, legend label) of a trial."""
    method = row.get("param.method")
    if isinstance(method, str) and method != "masked_distill":
        return method, "-", method
    region = str(row.get("param.region", "none") or "none")
    refill = row.get("param.refill")
    refill = "-" if refill is None or (isinstance(refill, float) and pd.isna(refill)) else str(refill)
    return region, refill, f"{region} / {refill}"


def front_points(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The trials on the Pareto front of (x, y) (``robusttune.pareto.front``), in order of x."""
    return frame.iloc[pareto.front(frame.to_dict("records"), [x, y])].sort_values(x)


def _step_xy(front: pd.DataFrame, x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for _, row in front.sort_values(x, ascending=False).iterrows():
        if xs:
            xs.append(row[x])
            ys.append(ys[-1])
        xs.append(row[x])
        ys.append(row[y])
    return xs, ys


def _references(refs: pd.DataFrame | None):
    """(zero-shot row, vanilla-FT row, {source: WiSE curve}) from the experiment's baseline rows."""
    if refs is None or refs.empty or "kind" not in refs:
        return None, None, {}
    base = refs[refs["kind"] == "baseline"]
    pick = lambda method: base[base["method"] == method].iloc[-1] if (base["method"] == method).any() else None  # noqa: E731
    wise = refs[refs["kind"] == "wise"]
    curves = {source: group.drop_duplicates("alpha", keep="last").sort_values("alpha") for source, group in wise.groupby("source")}
    return pick("zero-shot"), pick("vanilla-ft"), curves


# the merges of the sweep's models (robusttune.search.merges): label, matplotlib marker, plotly symbol
MERGE_STYLES = {"uniform_soup": ("uniform soup", "P", "cross"), "greedy_soup": ("greedy soup", "X", "x"),
                "model_stock": ("Model Stock", "h", "hexagon")}


def merge_rows(refs: pd.DataFrame | None) -> list[dict]:
    """The experiment's merge rows, one per method (the last recorded), in MERGE_STYLES' order."""
    if refs is None or refs.empty or "kind" not in refs:
        return []
    merges = refs[refs["kind"] == MERGE_KIND]
    rows = {row["method"]: row.to_dict() for _, row in merges.iterrows()}
    return [rows[m] for m in MERGE_STYLES if m in rows]


LOGIT_TICKS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def _logit(values):
    import numpy as np

    clipped = np.clip(np.asarray(values, dtype=float), 1e-4, 1 - 1e-4)
    return np.log(clipped / (1 - clipped))


def confirmed_crosses(confirmed: dict | None, x: str, y: str) -> list[dict[str, float | str]]:
    """The confirmed configurations (not the references) as crosses: the seed means and their 95% intervals."""
    crosses = []
    for row in (confirmed or {}).get("verdicts", []):
        if row["source"] in (VANILLA_FT, ZERO_SHOT) or pd.isna(row.get(f"{x}_mean")) or pd.isna(row.get(f"{y}_mean")):
            continue
        half = {axis: (row[f"{axis}_high"] - row[f"{axis}_low"]) / 2 if not pd.isna(row.get(f"{axis}_low")) else 0.0
                for axis in (x, y)}
        crosses.append({"source": row["source"], "x": row[f"{x}_mean"], "y": row[f"{y}_mean"], "dx": half[x],
                        "dy": half[y], "verdict": row.get("delta_ood_verdict") or ""})
    return crosses


def pareto_png(frame: pd.DataFrame, path: Path, *, x: str = ID_TEST, y: str = OOD_MEAN, title: str = "",
               refs: pd.DataFrame | None = None, logit: bool = False, confirmed: dict | None = None) -> Path:
    """With ``logit``, both axes are logit-scaled (as in the WiSE-FT paper), labelled in %. ``confirmed`` (the
    report's confirmation) adds, on the first panel, each confirmed configuration as a cross of its 95% intervals
    and vanilla FT's WiSE-FT curve as a band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    oods = [c for c in frame.columns if is_ood_set(c) and not c.startswith(OOD_MEAN)]
    panels = [y, *sorted(oods)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    done = frame[frame["status"] == "complete"]
    for ax, metric in zip(axes[0], panels):
        if logit:
            from matplotlib.ticker import FuncFormatter

            ax.set_xscale("logit")
            ax.set_yscale("logit")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}"))
                axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        seen = set()
        k = 1.0 if logit else 100.0  # the logit scale takes fractions
        for _, row in done.dropna(subset=[x, metric]).iterrows():
            region, refill, label = _style(row)
            ax.scatter(k * row[x], k * row[metric], c=REGION_COLOURS.get(region, "k"), marker=REFILL_MARKERS.get(refill, ("o",))[0],
                       s=46, alpha=0.85, edgecolors="white", linewidths=0.5, label=None if label in seen else label)
            seen.add(label)
        front = front_points(frame, x, metric)
        if not front.empty:
            xs, ys = _step_xy(front, x, metric)
            ax.plot([k * v for v in xs], [k * v for v in ys], color="black", lw=1.2, label="Pareto front")
        zero_shot, vanilla, curves = _references(refs)
        for source, curve in curves.items():
            main = source == "vanilla-ft"
            ax.plot(k * curve[x], k * curve[metric], color="#9467bd" if main else "#c5b0d5", lw=1.6 if main else 0.8,
                    ls="-" if main else "--", label=("WiSE-FT of vanilla FT" if main else ("WiSE-FT of Pareto trials" if "wise_trials" not in seen else None)))
            if not main:
                seen.add("wise_trials")
        if zero_shot is not None:
            ax.scatter(k * zero_shot[x], k * zero_shot[metric], marker="*", s=220, c="gold", edgecolors="black", label="zero-shot", zorder=5)
        if vanilla is not None:
            ax.scatter(k * vanilla[x], k * vanilla[metric], marker="D", s=80, c="black", label="vanilla FT", zorder=5)
        for merge in merge_rows(refs):
            name, marker, _ = MERGE_STYLES[merge["method"]]
            if not pd.isna(merge.get(x)) and not pd.isna(merge.get(metric)):
                ax.scatter(k * merge[x], k * merge[metric], marker=marker, s=110, c="#17becf", edgecolors="black",
                           label=name, zorder=5)
        if metric == y and confirmed:
            band = [b for b in confirmed.get("band", []) if not pd.isna(b["low"])]
            if band:
                ax.fill_between([k * b[x] for b in band], [k * b["low"] for b in band], [k * b["high"] for b in band],
                                color="#9467bd", alpha=0.18, lw=0, label="vanilla FT's WiSE-FT, 95% band over seeds")
            for cross in confirmed_crosses(confirmed, x, y):
                ax.errorbar(k * cross["x"], k * cross["y"], xerr=k * cross["dx"], yerr=k * cross["dy"], fmt="s",
                            color="#d62728", ms=5, capsize=3, lw=1.2,
                            label=None if "confirmed" in seen else "confirmed (seed mean, 95% interval)")
                seen.add("confirmed")
        ax.set_xlabel(f"{x} (%)")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax.set_title(metric)
    if axes[0][0].get_legend_handles_labels()[0]:  # a legend only when something is labelled (else matplotlib warns)
        axes[0][0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def hypervolume_png(curve: list[float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3)
    ax.set_xlabel("complete trials")
    ax.set_ylabel("hypervolume")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def pareto_plotly(frame: pd.DataFrame, *, x: str, y: str, refs: pd.DataFrame | None = None, logit: bool = False,
                  confirmed: dict | None = None):
    import plotly.graph_objects as go

    def t(values):  # percent, or logit of the fraction with ticks labelled in percent
        return list(_logit(values)) if logit else [100 * float(v) for v in values]

    fig = go.Figure()
    done = frame[frame["status"] == "complete"].dropna(subset=[x, y])
    groups: dict[str, list] = {}
    for _, row in done.iterrows():
        groups.setdefault(_style(row)[2], []).append(row)
    for label, rows in groups.items():
        region, refill, _ = _style(rows[0])
        params = [c for c in done.columns if c.startswith("param.")]
        text = ["<br>".join([f"trial {r['trial_id']}", *(f"{p[6:]}: {r[p]}" for p in params)]) for r in rows]
        fig.add_trace(go.Scatter(x=t([r[x] for r in rows]), y=t([r[y] for r in rows]), mode="markers", name=label,
                                 text=text, hoverinfo="text+x+y",
                                 marker={"color": REGION_COLOURS.get(region, "black"), "size": 9,
                                         "symbol": REFILL_MARKERS.get(refill, ("o", "circle"))[1]}))
    front = front_points(frame, x, y)
    if not front.empty:
        xs, ys = _step_xy(front, x, y)
        fig.add_trace(go.Scatter(x=t(xs), y=t(ys), mode="lines", name="Pareto front",
                                 line={"color": "black", "width": 1.5}))
    zero_shot, vanilla, curves = _references(refs)
    for source, curve in curves.items():
        main = source == "vanilla-ft"
        fig.add_trace(go.Scatter(x=t(curve[x]), y=t(curve[y]), mode="lines+markers",
                                 name="WiSE-FT of vanilla FT" if main else f"WiSE-FT of {source}",
                                 text=[f"alpha {a:.1f}" for a in curve["alpha"]], hoverinfo="text+x+y",
                                 line={"color": "#9467bd" if main else "#c5b0d5", "width": 2 if main else 1, "dash": "solid" if main else "dash"},
                                 marker={"size": 4}, showlegend=main or source == next(iter(curves))))
    band = [b for b in (confirmed or {}).get("band", []) if not pd.isna(b["low"])]
    if band and not logit:
        fig.add_trace(go.Scatter(x=t([b[x] for b in band] + [b[x] for b in reversed(band)]),
                                 y=t([b["high"] for b in band] + [b["low"] for b in reversed(band)]), fill="toself",
                                 mode="lines", line={"width": 0}, fillcolor="rgba(148,103,189,0.18)",
                                 name="vanilla FT's WiSE-FT, 95% band over seeds", hoverinfo="skip"))
    crosses = confirmed_crosses(confirmed, x, y)
    if crosses and not logit:
        fig.add_trace(go.Scatter(x=t([c["x"] for c in crosses]), y=t([c["y"] for c in crosses]), mode="markers",
                                 name="confirmed (seed mean, 95% interval)", text=[f"{c['source']}: {c['verdict']}" for c in crosses],
                                 hoverinfo="text+x+y", marker={"symbol": "square", "size": 8, "color": "#d62728"},
                                 error_x={"type": "data", "array": [100 * c["dx"] for c in crosses]},
                                 error_y={"type": "data", "array": [100 * c["dy"] for c in crosses]}))
    if zero_shot is not None:
        fig.add_trace(go.Scatter(x=t([zero_shot[x]]), y=t([zero_shot[y]]), mode="markers", name="zero-shot",
                                 marker={"symbol": "star", "size": 16, "color": "gold", "line": {"color": "black", "width": 1}}))
    if vanilla is not None:
        fig.add_trace(go.Scatter(x=t([vanilla[x]]), y=t([vanilla[y]]), mode="markers", name="vanilla FT",
                                 marker={"symbol": "diamond", "size": 11, "color": "black"}))
    for merge in merge_rows(refs):
        name, _, symbol = MERGE_STYLES[merge["method"]]
        if not pd.isna(merge.get(x)) and not pd.isna(merge.get(y)):
            fig.add_trace(go.Scatter(x=t([merge[x]]), y=t([merge[y]]), mode="markers", name=name,
                                     text=[f"{name} of {len(merge['members'])} trial(s)"], hoverinfo="text+x+y",
                                     marker={"symbol": symbol, "size": 12, "color": "#17becf",
                                             "line": {"color": "black", "width": 1}}))
    fig.update_layout(xaxis_title=f"{x} (%)" + (", logit scale" if logit else ""),
                      yaxis_title=f"{y} (%)" + (", logit scale" if logit else ""), height=460, margin={"t": 30})
    if logit:
        ticks = {"tickvals": list(_logit(LOGIT_TICKS)), "ticktext": [f"{100 * v:g}" for v in LOGIT_TICKS]}
        fig.update_xaxes(**ticks)
        fig.update_yaxes(**ticks)
    return fig


def hypervolume_plotly(curve: list[float]):
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=list(range(1, len(curve) + 1)), y=curve, mode="lines+markers", name="hypervolume"))
    fig.update_layout(xaxis_title="complete trials", yaxis_title="hypervolume", height=340, margin={"t": 30})
    return fig
