"""``robusttune report``: an experiment directory -> ``index.html`` (self-contained), PNGs and CSVs.

The HTML inlines plotly.js and every figure's data, so it opens offline; every string that came from the
experiment (trial ids, configs, failure messages) is HTML-escaped, and figure JSON is embedded so that it
cannot close its script element.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import pandas as pd

from robusttune.cache import atomic_write_text
from robusttune.metrics import ID_TEST, ID_VAL, OBJECTIVE, OOD_MEAN, is_metric, is_ood_set

from robusttune import pareto
from robusttune.analysis import above_wise, costs, effects, feasibility, figures, results, stats

FORMATS = ("html", "png", "csv")


def _pct(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else f"{100 * float(value):.1f}"


def summarise(frame: pd.DataFrame, records_time: tuple[float, float] | None, *, x: str = ID_TEST, y: str = OOD_MEAN,
              refs: pd.DataFrame | None = None) -> dict[str, Any]:
    """The numbers at the top of the report (also returned by ``robusttune report --json``)."""
    counts = {s: int((frame["status"] == s).sum()) for s in ("complete", "stopped-early", "failed", "running")} if not frame.empty else {}
    done = frame[frame["status"] == "complete"].dropna(subset=[x, y]) if not frame.empty else frame
    summary: dict[str, Any] = {"counts": counts, "trials": int(len(frame))}
    if records_time:
        summary["wall_seconds"] = round(records_time[1] - records_time[0], 1)
    if done.empty:
        return summary
    points = done[[x, y]].to_numpy().tolist()
    zero_shot, vanilla, curves = figures._references(refs)
    # The worst observed point, not the zero-shot one: on robust fine-tuning few trials beat zero-shot on OOD,
    # so a zero-shot reference often leaves a volume of zero and says nothing about the search.
    reference, kind = pareto.worst_point(points), "worst observed among complete trials"
    front = figures.front_points(frame, x, y)
    best_id, best_ood = done.loc[done[x].idxmax()], done.loc[done[y].idxmax()]
    summary |= {
        "best_id": {"trial_id": best_id["trial_id"], x: float(best_id[x]), y: float(best_id[y])},
        "best_ood": {"trial_id": best_ood["trial_id"], x: float(best_ood[x]), y: float(best_ood[y])},
        "front_size": int(len(front)),
        "hypervolume": pareto.hypervolume_2d(points, reference),
        "reference_point": {"kind": kind, x: reference[0], y: reference[1]},
        "hypervolume_over_trials": pareto.hypervolume_over_trials(points, reference),
    }
    if zero_shot is not None:
        summary["zero_shot"] = {x: float(zero_shot[x]), y: float(zero_shot[y])}
    if vanilla is not None:
        summary["vanilla_ft"] = {x: float(vanilla[x]), y: float(vanilla[y])}
    curve = curves.get("vanilla-ft")
    if curve is not None and not curve.empty:
        margins = {row["trial_id"]: results.wise_ood_at(curve, row[x], x=x, y=y) for _, row in front.iterrows()}
        summary["margin_over_wise"] = {k: (None if v != v else float(front.set_index("trial_id").loc[k, y] - v)) for k, v in margins.items()}
        half = curve[curve["alpha"].round(2) == 0.5]
        if not half.empty:
            floor = float(half.iloc[0][x])
            eligible = done[done[x] >= floor]
            summary["wise_alpha_0.5"] = {x: floor, y: float(half.iloc[0][y])}
            if not eligible.empty:
                best = eligible.loc[eligible[y].idxmax()]
                summary["best_ood_at_id_of_wise_0.5"] = {"trial_id": best["trial_id"], x: float(best[x]), y: float(best[y])}
    return summary


def _table_html(frame: pd.DataFrame, columns: list[str], *, percent: set[str]) -> str:
    head = "".join(f"<th>{html.escape(c.removeprefix('param.'))}</th>" for c in columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            value = row.get(c)
            if c in percent:
                text = _pct(value)
            elif value is None or (isinstance(value, float) and pd.isna(value)):
                text = ""
            else:
                text = f"{value:.3g}" if isinstance(value, float) else str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure_script(index: int, figure) -> str:
    payload = figure.to_json().replace("<", "\\u003c")  # no markup can appear inside the script element
    return f'<div class="plot" id="plot-{index}"></div><script type="application/json" id="fig-{index}">{payload}</script>'


PAGE_SCRIPT = """
window.addEventListener('error', function (e) { document.body.dataset.errors = (document.body.dataset.errors || '') + e.message + ';'; });
(function () {
  var jobs = [];
  document.querySelectorAll('script[type="application/json"][id^="fig-"]').forEach(function (node) {
    var fig = JSON.parse(node.textContent);
    var target = document.getElementById('plot-' + node.id.slice(4));
    jobs.push(Plotly.newPlot(target, fig.data, fig.layout, {responsive: true, displaylogo: false}));
  });
  Promise.all(jobs).then(function () { document.body.dataset.plots = 'ready'; },
                         function (err) { document.body.dataset.errors = String(err); });
})();
"""

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4}.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px}
.card b{display:block;font-size:1.4em}.note{color:#666;font-size:0.85em}
"""


def write_report(experiment: Path, out: Path | None = None, formats: tuple[str, ...] = FORMATS, *,
                 logit_axes: bool = False) -> dict[str, Any]:
    """Write the report files; returns the summary and the paths written."""
    experiment = Path(experiment)
    out = Path(out) if out else experiment / "report"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frame = results.trials(experiment)
    refs = results.baselines(experiment)
    times = [r.get("time") for r in results._rows(experiment) if r.get("time")]
    summary = summarise(frame, (min(times), max(times)) if times else None, refs=refs)
    front = figures.front_points(frame, ID_TEST, OOD_MEAN) if summary.get("front_size") else frame.iloc[0:0]
    if not front.empty:
        latest = {row["trial_id"]: row for row in results._rows(experiment) if row.get("final") and "trial_id" in row}
        summary["front_ties"] = stats.ties([latest[t] for t in front["trial_id"] if t in latest], [ID_TEST, OOD_MEAN])
    confirmed = confirmation(experiment, front)
    if confirmed:
        summary["confirmation"] = confirmed
    shares = above_wise.share_above_wise(experiment)
    spent = costs.trial_costs(experiment)
    if spent:  # each trial's measured cost (robusttune.training.cost): columns cost.* of trials.csv
        summary["cost"] = costs.totals(spent)
        frame = costs.cost_frame(frame, spent)
    feasible = feasibility.feasibility(experiment)
    if feasible:
        summary["constraints"] = feasible
        marks = feasible["trials"]
    if feasible and not frame.empty:
        frame = frame.assign(feasible=[marks.get(t, {}).get("feasible") for t in frame["trial_id"]],
                             constraint_violation=[marks.get(t, {}).get("violation") for t in frame["trial_id"]])
    if shares:
        summary["above_wise"] = shares
    merges = figures.merge_rows(refs)
    if merges:
        summary["merges"] = merge_frame(merges).to_dict(orient="records")
    written: dict[str, str] = {}
    if "csv" in formats:
        written["trials.csv"] = str(results.export(frame, out / "trials.csv"))
        written["front.csv"] = str(results.export(front, out / "front.csv"))
        if confirmed:
            written["confirm.csv"] = str(results.export(stats.verdict_frame(confirmed["verdicts"]), out / "confirm.csv"))
        if shares.get("rows"):
            written["above_wise.csv"] = str(results.export(above_wise.frame(shares), out / "above_wise.csv"))
        if merges:
            written["merges.csv"] = str(results.export(merge_frame(merges), out / "merges.csv"))
    curve = summary.get("hypervolume_over_trials", [])
    params = results.parameters(frame) if not frame.empty else []
    effects_path = None
    if not frame.empty and ("png" in formats or "html" in formats):
        effects_path = effects.effects_png(frame, params, out / "effects.png")
    if "png" in formats and not frame.empty:
        written["pareto.png"] = str(figures.pareto_png(frame, out / "pareto.png", title=experiment.name, refs=refs,
                                                       logit=logit_axes, confirmed=confirmed))
        written["hypervolume.png"] = str(figures.hypervolume_png(curve, out / "hypervolume.png"))
        if effects_path:
            written["effects.png"] = str(effects_path)
        if spent:
            written["cost.png"] = str(costs.cost_png(frame, list(front["trial_id"]) if not front.empty else [],
                                                     out / "cost.png"))
        if feasible:
            written["feasibility.png"] = str(feasibility.feasibility_png(frame, feasible, out / "feasibility.png"))
    importance = effects.importance(frame, params, [ID_VAL, OOD_MEAN]) if not frame.empty and ID_VAL in frame else pd.DataFrame()
    summary["importance"] = importance.round(4).to_dict() if not importance.empty else {}
    summary["importance_method"] = importance.attrs.get("method") or importance.attrs.get("reason", "not computed: no trials")
    if "html" in formats:
        written["index.html"] = str(_write_html(experiment, out / "index.html", frame, front, summary, curve, refs,
                                                effects_path=effects_path, importance=importance, logit_axes=logit_axes))
        if effects_path and "png" not in formats:
            effects_path.unlink()
    summary["files"] = written
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def merge_frame(merges: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per merge of the sweep's models: its method, how many trials went in (and which), its metrics."""
    rows = [{"method": m["method"], "trials": len(m["members"]), "members": " ".join(m["members"]),
             **{k: v for k, v in m.items() if is_metric(k) and not pd.isna(v)}} for m in merges]
    return pd.DataFrame(rows)


def confirmation(experiment: Path, front: pd.DataFrame) -> dict[str, Any]:
    """The confirmation's verdicts for the report (empty without one): the rows, a sentence each, vanilla FT's
    WiSE-FT band over seeds, and how many single-seed front trials were confirmed."""
    rows = stats.verdicts(experiment)
    if not rows:
        return {}
    confirmed = {r["source"] for r in rows}
    return {"verdicts": rows, "sentences": [stats.sentence(r) for r in rows], "band": stats.curve_band(experiment),
            "front_confirmed": int(sum(t in confirmed for t in front["trial_id"])) if not front.empty else 0,
            "interval": "95% Student-t intervals over seeds; gaps paired by seed against vanilla FT's WiSE-FT curve "
                        f"at equal ID ({ID_TEST})"}


VERDICT_TABLE = (("source", "configuration"), ("seeds", "seeds"), (f"{ID_TEST}_mean", "ID"), (f"{OOD_MEAN}_mean", "OOD mean"),
                 ("delta_ood_mean", "ΔOOD vs WiSE-FT at equal ID"), ("delta_ood_own_wise_mean", "own WiSE-FT's best ΔOOD"),
                 ("delta_ood_verdict", "verdict"))


def _verdict_html(confirmed: dict[str, Any]) -> str:
    """The verdict table (each figure with its interval) and one sentence per row."""
    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if key.endswith("_mean") and isinstance(value, float):
            stem = key[: -len("_mean")]
            low, high = row.get(f"{stem}_low"), row.get(f"{stem}_high")
            shown = f"{100 * value:+.2f}" if stem.startswith("delta_") else f"{100 * value:.1f}"
            if isinstance(low, float) and isinstance(high, float) and not pd.isna(low):
                shown += f" [{100 * low:.2f}, {100 * high:.2f}]"
            return "" if pd.isna(value) else shown
        return "" if value is None else str(value)

    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in VERDICT_TABLE)
    body = "".join("<tr>" + "".join(f'<td data-key="{key}">{html.escape(cell(row, key))}</td>' for key, _ in VERDICT_TABLE)
                   + "</tr>" for row in confirmed["verdicts"])
    sentences = "".join(f"<li>{html.escape(s)}</li>" for s in confirmed["sentences"])
    return (f'<h2>Verdict: confirmed configurations against WiSE-FT at equal ID</h2><table class="verdict"><tr>{head}</tr>'
            f'{body}</table><ul class="sentences">{sentences}</ul><p class="note">Accuracies in %, gaps in points; '
            f'{html.escape(confirmed["interval"])}. "better" or "worse" only when the gap\'s interval excludes 0.</p>')


ABOVE_WISE_TABLE = (("method", "method"), ("with_gap", "trials with a gap"), ("above", "above"),
                    ("share_above", "share above [95% Wilson]"), ("median_gap", "median ΔOOD [95% bootstrap]"),
                    ("outside_below", "ID below the curve"), ("outside_above", "ID above the curve"))


def _above_wise_html(shares: dict[str, Any]) -> str:
    """Each method's share of complete trials above vanilla FT's WiSE-FT curve at equal ID, and its median gap."""
    def cell(row: dict[str, Any], key: str) -> str:
        if key == "share_above":
            return "" if pd.isna(row[key]) else f"{100 * row[key]:.0f}% [{100 * row['share_low']:.0f}, {100 * row['share_high']:.0f}]"
        if key == "median_gap":
            return "" if pd.isna(row[key]) else f"{100 * row[key]:+.2f} [{100 * row['median_low']:+.2f}, {100 * row['median_high']:+.2f}]"
        return str(row[key])

    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in ABOVE_WISE_TABLE)
    body = "".join("<tr>" + "".join(f'<td data-key="{key}">{html.escape(cell(row, key))}</td>' for key, _ in ABOVE_WISE_TABLE)
                   + "</tr>" for row in shares["rows"])
    sentences = "".join(f"<li>{html.escape(above_wise.sentence(r))}</li>" for r in shares["rows"])
    return (f'<h2>Verdict: share of configurations above WiSE-FT, per method</h2><table class="above-wise"><tr>{head}</tr>'
            f'{body}</table><ul class="sentences">{sentences}</ul><p class="note">Each method\'s complete trials (one '
            f'seed each), their OOD mean against vanilla FT\'s WiSE-FT curve of this experiment at the same {ID_TEST}: '
            f'how many lie above it (share with its 95% Wilson interval) and the median gap in points (95% percentile '
            f'bootstrap interval, {shares["resamples"]} resamples, seeded). Trials whose {ID_TEST} lies outside the '
            f'curve\'s range are counted apart, never extrapolated.</p>')


def _constraints_html(feasible: dict[str, Any]) -> str:
    """The constraints with their resolved bounds, the counts and the best feasible trial."""
    items = "".join(f"<li>{html.escape(c['constraint'])}" + ("" if pd.isna(c["bound"]) else
                    f" (bound {100 * c['bound']:.1f}%)") + "</li>" for c in feasible["constraints"])
    best = feasible.get("best_feasible")
    said = (f"Best feasible complete trial: {html.escape(str(best['trial_id']))} ("
            + ", ".join(f"{html.escape(k)} {_pct(v)}%" for k, v in best.items() if k != "trial_id") + ")."
            if best else "No complete trial is feasible.")
    return (f'<ul class="constraints">{items}</ul><p>{feasible["feasible"]} feasible and {feasible["infeasible"]} '
            f'infeasible trial(s). {said}</p><p class="note">Shaded: the region the constraints on the axes allow; '
            'crosses: infeasible trials (a scheduler ranks them below every feasible one; the sampler is told their '
            'constraint values).</p>')


def _write_html(experiment: Path, path: Path, frame: pd.DataFrame, front: pd.DataFrame, summary: dict, curve: list[float],
                refs: pd.DataFrame | None = None, *, effects_path: Path | None = None, importance: pd.DataFrame | None = None,
                logit_axes: bool = False) -> Path:
    import base64

    import plotly.offline

    metrics = results.metric_columns(frame) if not frame.empty else []
    params = results.parameters(frame) if not frame.empty else []
    percent = set(metrics) | {OBJECTIVE}
    counts = summary.get("counts", {})
    cards = [("trials", str(summary.get("trials", 0))), *((k, str(v)) for k, v in counts.items())]
    if "best_id" in summary:
        cards += [("best ID (%)", _pct(summary["best_id"][ID_TEST])), ("best OOD mean (%)", _pct(summary["best_ood"][OOD_MEAN])),
                  ("Pareto front", str(summary["front_size"])), ("hypervolume", f"{summary['hypervolume']:.5f}")]
    if "wall_seconds" in summary:
        cards.append(("wall time (s)", f"{summary['wall_seconds']:.0f}"))
    card_html = "".join(f'<div class="card" data-key="{html.escape(k)}">{html.escape(k)}<b>{html.escape(v)}</b></div>' for k, v in cards)
    parts = [f"<h1>robusttune report: {html.escape(experiment.name)}</h1>", f'<div class="cards">{card_html}</div>']
    confirmed = summary.get("confirmation")
    if confirmed:  # the report leads with the verdict
        parts.append(_verdict_html(confirmed))
    if summary.get("above_wise", {}).get("rows"):
        parts.append(_above_wise_html(summary["above_wise"]))
    if "reference_point" in summary:
        ref = summary["reference_point"]
        parts.append(f'<p class="note">Hypervolume over ({ID_TEST}, {OOD_MEAN}) with reference point ({_pct(ref[ID_TEST])}, '
                     f'{_pct(ref[OOD_MEAN])}): the {html.escape(ref["kind"])}. Fronts here use ID test accuracy ({ID_TEST}); the search itself selected on the ID '
                     f'validation split ({ID_VAL}). Stopped-early, failed and running trials are kept out of fronts.</p>')
    if "vanilla_ft" in summary:
        zs, ft = summary["zero_shot"], summary["vanilla_ft"]
        parts.append(f'<p class="note">Zero-shot: ID {_pct(zs[ID_TEST])}, OOD mean {_pct(zs[OOD_MEAN])}. Vanilla fine-tuning: '
                     f'ID {_pct(ft[ID_TEST])}, OOD mean {_pct(ft[OOD_MEAN])}. "above WiSE-FT" is how far a trial\'s OOD mean lies '
                     f'above the WiSE-FT curve of vanilla FT at the same ID accuracy (points, blank outside the curve\'s ID range).</p>')
    parts.append("<h2>Pareto-optimal trials" + (" (single seed, unconfirmed)" if confirmed else "") + "</h2>")
    if not front.empty:
        margins = summary.get("margin_over_wise", {})
        tied = summary.get("front_ties", {})
        shown = front.assign(above_wise=[margins.get(t) for t in front["trial_id"]],
                             tied_with=[", ".join(tied.get(t, [])) for t in front["trial_id"]])
        parts.append(_table_html(shown, ["trial_id", *metrics, *(["above_wise"] if margins else []),
                                         *(["tied_with"] if any(tied.values()) else []), *params],
                                 percent=percent | {"above_wise"}))
        if any(tied.values()):
            parts.append('<p class="note">tied_with: front trials within this trial\'s 95% evaluation intervals on both '
                         f'axes ({ID_TEST}, {OOD_MEAN}; Wilson for an accuracy, the normal interval of a mean of sets for '
                         f'{OOD_MEAN}): the noise of one evaluation cannot order them.</p>')
    else:
        parts.append("<p>No complete trial yet.</p>")
    merges = summary.get("merges") or []
    if merges:
        parts.append("<h2>Merges of the sweep's models</h2>"
                     + _table_html(pd.DataFrame(merges), ["method", "trials", *[m for m in metrics if m in merges[0]]],
                                   percent=percent)
                     + '<p class="note">uniform soup: the average of every complete trial; greedy soup: the trials by '
                       f'decreasing {ID_VAL}, each kept if the soup\'s {ID_VAL} does not drop; Model Stock: the two best '
                       f'trials by {ID_VAL}, pulled toward the zero-shot weights layer by layer by the angle between their '
                       'updates (robusttune.method.merge).</p>')
    figs = []
    if not frame.empty:
        parts.append("<h2>ID vs OOD</h2>")
        oods = [OOD_MEAN, *(c for c in metrics if is_ood_set(c))] if OOD_MEAN in metrics else []
        for metric in oods:
            figs.append(figures.pareto_plotly(frame, x=ID_TEST, y=metric, refs=refs, logit=logit_axes,
                                              confirmed=confirmed if metric == OOD_MEAN else None))
            parts.append(f"<h3>{html.escape(metric)}</h3>" + _figure_script(len(figs) - 1, figs[-1]))
        if summary.get("cost"):
            spent = summary["cost"]
            figs.append(costs.cost_plotly(frame, list(front["trial_id"]) if not front.empty else []))
            parts.append("<h2>Front against cost</h2>" + _figure_script(len(figs) - 1, figs[-1])
                         + f'<p class="note">{spent["trials"]} trial(s) measured: {spent["device_s"]:.0f} device-seconds '
                         f'(start-up {spent["startup_s"]:.0f}, training {spent["train_s"]:.0f}, evaluation '
                         f'{spent["eval_s"]:.0f}), {spent["images_trained"]} images trained, {spent["images_evaluated"]} '
                         f'evaluated in {spent["evaluations"]} evaluations, on {html.escape(", ".join(spent["devices"]))} '
                         f'({html.escape(", ".join(spent["hosts"]))}); per trial in trials.csv (cost.*).</p>')
        feasible = summary.get("constraints")
        if feasible:
            figs.append(feasibility.feasibility_plotly(frame, feasible))
            parts.append("<h2>Constraints</h2>" + _constraints_html(feasible) + _figure_script(len(figs) - 1, figs[-1]))
        if curve:
            figs.append(figures.hypervolume_plotly(curve))
            parts.append("<h2>Hypervolume after each complete trial</h2>" + _figure_script(len(figs) - 1, figs[-1]))
        if effects_path is not None:
            encoded = base64.b64encode(Path(effects_path).read_bytes()).decode()
            parts.append(f'<h2>Parameter effects</h2><img alt="OOD mean against each numeric parameter" '
                         f'src="data:image/png;base64,{encoded}" style="max-width:100%">')
        if importance is not None and not importance.empty:
            shown = importance.reset_index().rename(columns={"index": "parameter"})
            parts.append("<h2>Parameter importance</h2>" + _table_html(shown, ["parameter", *importance.columns], percent=set(importance.columns))
                         + f'<p class="note">{html.escape(importance.attrs.get("method", ""))}. '
                         f'{html.escape(effects.READING)}</p>')
        elif importance is not None:
            reason = importance.attrs.get("reason", "not computed")
            parts.append(f'<h2>Parameter importance</h2><p class="note">{html.escape(reason)}.</p>')
        for name, title in (("gallery_best_ood.png", "best OOD trial"), ("gallery_best_joint.png", "best joint (scalar objective) trial")):
            gallery = path.parent / name
            if gallery.is_file():
                encoded = base64.b64encode(gallery.read_bytes()).decode()
                parts.append(f"<h2>Counterfactual gallery: {html.escape(title)}</h2>"
                             f'<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}" style="max-width:100%">')
        parts.append("<h2>All trials</h2>" + _table_html(frame, ["trial_id", "status", "step", *metrics, OBJECTIVE, *params], percent=percent))
        bad = frame[frame["status"].isin(["failed", "stopped-early"])]
        if not bad.empty:
            parts.append("<h2>Failed and stopped trials</h2>" + _table_html(bad, ["trial_id", "status", "step", "failure", *params], percent=set()))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>robusttune report: {html.escape(experiment.name)}</title>"
            f"<style>{STYLE}</style><script>{plotly.offline.get_plotlyjs()}</script></head><body>{''.join(parts)}"
            f"<script>{PAGE_SCRIPT}</script></body></html>")
    atomic_write_text(path, page)  # a reader (a browser, a sync) never sees half a report
    return path
