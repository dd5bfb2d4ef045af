"""``robusttune report`` on a synthetic experiment, checked as a person would: in headless Chromium."""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

HOSTILE = "<script>alert('x')</script>\"'&"


def make_experiment(root: Path, n_trials: int = 12) -> Path:
    experiment = root / "exp"
    experiment.mkdir()
    (experiment / "manifest.json").write_text(json.dumps({"space": "synthetic", "trials": n_trials, "parameters": ["region"]}))
    rng = random.Random(0)
    rows = []
    for i in range(n_trials):
        trial_id = HOSTILE if i == 3 else f"t{i:03d}"
        sampled = {"region": rng.choice(["object", "context", "random", "none"]), "refill": rng.choice(["single", "multi"]),
                   "w_distill": round(10 ** rng.uniform(-2, 1), 4), "note": HOSTILE, "seed": 0}
        ident, ood = rng.uniform(0.9, 0.96), rng.uniform(0.7, 0.86)
        metrics = {"id_acc": ident, "id_val_acc": ident, "ood_background": ood + 0.05, "ood_source": ood, "ood_style": ood - 0.05,
                   "ood_mean": ood, "objective": (ident + ood) / 2}
        status = "failed" if i == 5 else ("stopped-early" if i == 7 else "complete")
        for step in (50, 100):
            rows.append({"trial_id": trial_id, "status": "running", "step": step, "sampled": sampled, **metrics, "time": 1000 + i * 10 + step / 100})
        final = {"trial_id": trial_id, "status": status, "step": 100, "sampled": sampled, "final": True, "time": 1001 + i * 10, **metrics}
        if status == "failed":
            final["failure"] = f"non-finite loss {HOSTILE}"
        rows.append(final)
    # a trial still running (the report must work on a live experiment's snapshot)
    rows.append({"trial_id": "live", "status": "running", "step": 50, "sampled": {"region": "object"}, "id_acc": 0.99,
                 "ood_mean": 0.99, "time": 2000})
    (experiment / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return experiment


def test_report_files_and_front_match_brute_force(tmp_path):
    from robusttune.analysis.report import write_report

    experiment = make_experiment(tmp_path)
    summary = write_report(experiment)
    out = experiment / "report"
    assert {p.name for p in out.iterdir()} >= {"index.html", "pareto.png", "trials.csv", "front.csv"}
    trials = pd.read_csv(out / "trials.csv")
    front = pd.read_csv(out / "front.csv")
    assert {"trial_id", "status", "id_acc", "ood_mean", "param.region", "param.w_distill"} <= set(trials.columns)
    assert len(trials) == 13 and set(front.columns) == set(trials.columns)
    assert "live" not in set(front["trial_id"])  # running trials stay off the front, even when they look best
    complete = trials[trials["status"] == "complete"]
    brute = [r.trial_id for r in complete.itertuples()
             if not any((o.id_acc >= r.id_acc and o.ood_mean >= r.ood_mean) and (o.id_acc > r.id_acc or o.ood_mean > r.ood_mean)
                        for o in complete.itertuples())]
    assert sorted(front["trial_id"]) == sorted(brute)
    assert "failed" not in set(front["status"]) and summary["counts"] == {"complete": 10, "stopped-early": 1, "failed": 1, "running": 1}
    page = (out / "index.html").read_text()
    assert "<script>alert(" not in page and "&lt;script&gt;alert(" in page
    assert "<script src" not in page and "<link" not in page  # nothing is loaded from the network


def test_report_cli_rejects_bad_format(tmp_path):
    experiment = make_experiment(tmp_path)
    result = subprocess.run([sys.executable, "-m", "robusttune.cli", "report", str(experiment), "--format", "pdf"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--format must be a comma-separated subset" in result.stderr


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is needed for the report test (Debian package 'chromium'; .ci/run installs it)"
    return path


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--no-first-run", "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=15000", "--window-size=1280,2000"]
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=180)


def test_report_renders_in_a_real_browser(tmp_path):
    from PIL import Image

    from robusttune.analysis.report import write_report

    experiment = make_experiment(tmp_path)
    write_report(experiment)
    page = experiment / "report" / "index.html"
    dom = run_chromium(["--dump-dom", page.as_uri()], tmp_path / "profile1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-plots="ready"' in html, "plots did not finish rendering"
    assert "data-errors" not in html
    assert html.count('class="main-svg"') >= 4  # plotly drew the charts
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and ("Error" in line or "error" in line)]
    assert not console_errors, console_errors
    # the summary numbers are the CSV's numbers
    trials = pd.read_csv(experiment / "report" / "trials.csv")
    complete = trials[trials["status"] == "complete"]
    assert f'best ID (%)<b>{100 * complete["id_acc"].max():.1f}</b>' in html
    assert f'best OOD mean (%)<b>{100 * complete["ood_mean"].max():.1f}</b>' in html
    assert f'complete<b>{len(complete)}</b>' in html
    shot = tmp_path / "shot.png"
    result = run_chromium([f"--screenshot={shot}", page.as_uri()], tmp_path / "profile2")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    image = Image.open(shot).convert("L")
    low, high = image.getextrema()
    assert high - low > 100 and len(set(image.resize((64, 64)).getdata())) > 20  # not a blank page


def test_logit_axes_option(tmp_path):
    import math

    from robusttune.analysis.report import write_report

    experiment = make_experiment(tmp_path)
    write_report(experiment, tmp_path / "logit", ("html", "png"), logit_axes=True)
    page = (tmp_path / "logit" / "index.html").read_text()
    assert "logit scale" in page
    from robusttune.analysis import figures, results

    fig = figures.pareto_plotly(results.trials(experiment), x="id_acc", y="ood_mean", logit=True)
    ticks = dict(zip(fig.layout.xaxis.ticktext, fig.layout.xaxis.tickvals))
    assert ticks["90"] == pytest.approx(math.log(0.9 / 0.1))  # the 90% tick sits at logit(0.9)
    assert (tmp_path / "logit" / "pareto.png").is_file() and not (tmp_path / "logit" / "trials.csv").exists()


def test_a_confirmed_experiment_leads_with_its_verdict_and_its_files_agree(tmp_path):
    """Planted confirmation rows (``tests/analysis/test_stats.py``'s): the HTML opens with the verdict table, whose
    figures are confirm.csv's; the single-seed front is labelled so; the PNG draws the crosses."""
    import html as html_lib
    import re

    from test_stats import plant, vanilla_curve

    from robusttune.analysis import stats
    from robusttune.analysis.report import write_report

    experiment = make_experiment(tmp_path)
    for seed in range(3):
        curve = vanilla_curve(seed)
        plant(experiment, "vanilla-ft", "v", seed, curve[-1][1], curve)
        plant(experiment, "t000", "a", seed, (0.7, stats.curve_at([p for _, p in curve], 0.7) + 0.03 + 0.001 * seed), curve)
    summary = write_report(experiment)
    out = experiment / "report"
    assert {"confirm.csv", "pareto.png", "index.html"} <= {p.name for p in out.iterdir()}
    page = (out / "index.html").read_text()
    assert page.index("Verdict: confirmed configurations") < page.index("Pareto-optimal trials (single seed, unconfirmed)")
    table = pd.read_csv(out / "confirm.csv")
    assert list(table["source"]) == [r["source"] for r in summary["confirmation"]["verdicts"]]
    row = table[table["source"] == "t000"].iloc[0]
    assert row["delta_ood_verdict"] == "better" and row["seeds"] == 3
    assert re.findall(r'<td data-key="source">([^<]*)</td>', page)[0] == "t000"  # best gap first, as in the CSV
    shown = html_lib.unescape(re.findall(r'<td data-key="delta_ood_mean">([^<]*)</td>', page)[0])
    assert shown.startswith(f"{100 * row['delta_ood_mean']:+.2f} [{100 * row['delta_ood_low']:.2f}, ")
    assert "better than WiSE-FT at equal ID" in page and "95% Student-t intervals over seeds" in page
    assert {"ood_mean_mean", "ood_mean_low", "ood_mean_high", "id_acc_mean", "delta_ood_low"} <= set(table.columns)
