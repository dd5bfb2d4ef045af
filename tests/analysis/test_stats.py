"""The confirmation's statistics against scipy and closed forms, and its verdicts on planted records."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from robusttune.analysis import stats
from robusttune.experiment import append_record


def test_the_seed_interval_is_scipys_student_t():
    values = [0.61, 0.64, 0.59, 0.66]
    found = stats.seed_interval(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert found.mean == pytest.approx(np.mean(values), abs=1e-12) and found.sd == pytest.approx(np.std(values, ddof=1))
    assert (found.low, found.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    single = stats.seed_interval([0.5])
    assert single.mean == 0.5 and math.isnan(single.low) and stats.verdict(single) == stats.TIED


def test_the_wilson_interval_is_the_closed_form():
    accuracy, n, z = 0.83, 200, scipy_stats.norm.ppf(0.975)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    assert stats.wilson(accuracy, n) == (pytest.approx(centre - half, abs=1e-9), pytest.approx(centre + half, abs=1e-9))
    row = {"id_acc": 0.83, "ood_mean": 0.5, "eval_images": {"id_acc": 200}}
    assert set(stats.point_intervals(row)) == {"id_acc"}  # a mean of sets is not a proportion: no interval


def test_the_gap_against_an_analytic_curve_is_exact_and_never_extrapolated():
    curve = [(x, 1.0 - 0.5 * x) for x in (0.2, 0.4, 0.6, 0.8)]  # a straight line: interpolation is exact on it
    assert stats.curve_at(curve, 0.5) == pytest.approx(0.75, abs=1e-15)
    assert stats.curve_at(curve, 0.1) is None and stats.curve_at(curve, 0.9) is None
    gaps = stats.gaps_against({0: (0.5, 0.80), 1: (0.7, 0.70), 2: (0.95, 0.9)}, {0: curve, 1: curve, 2: curve})
    assert gaps[0] == pytest.approx(0.05, abs=1e-12) and gaps[1] == pytest.approx(0.05, abs=1e-12) and gaps[2] is None


def plant(experiment, source, key, seed, point, curve=()):
    """A confirmation run's rows as ``robusttune.search.confirm`` writes them."""
    common = {"kind": "confirm", "config_key": key, "source": source, "seed": seed, "eval_images": {"id_acc": 1000}}
    x, y = point
    append_record(experiment, {**common, "alpha": None, "id_acc": x, "id_val_acc": x, "ood_mean": y})
    for alpha, (cx, cy) in curve:
        append_record(experiment, {**common, "alpha": alpha, "id_acc": cx, "id_val_acc": cx, "ood_mean": cy})


def vanilla_curve(seed):
    """Vanilla FT's WiSE-FT curve of one seed: a concave arc from zero-shot (0.6, 0.5) to fine-tuned (0.8, 0.4),
    moved a little per seed (the noise)."""
    wobble = 0.004 * (seed - 1)
    return [(a, (0.6 + 0.2 * a + wobble, 0.5 - 0.1 * a + 0.12 * a * (1 - a) + wobble)) for a in (0.0, 0.25, 0.5, 0.75, 1.0)]


def test_verdicts_on_planted_records(tmp_path):
    experiment = tmp_path / "exp"
    experiment.mkdir()
    rng = np.random.default_rng(0)
    for seed in range(3):
        curve = vanilla_curve(seed)
        plant(experiment, "vanilla-ft", "v", seed, curve[-1][1], curve)
        # the same configuration entered under a second name: its runs are vanilla FT's
        plant(experiment, "t-same", "s", seed, curve[-1][1], curve)
        # a real gain: 3 points of OOD above the curve at its ID, noise 0.3 points
        at = stats.curve_at([p for _, p in curve], 0.7)
        plant(experiment, "t-gain", "g", seed, (0.7, at + 0.03 + rng.normal(0, 0.003)))
        # a loss, and one whose ID lies beyond vanilla FT's curve for every seed
        plant(experiment, "t-loss", "l", seed, (0.65, stats.curve_at([p for _, p in curve], 0.65) - 0.04 + rng.normal(0, 0.003)))
        plant(experiment, "t-out", "o", seed, (0.9, 0.6))
    plant(experiment, "zero-shot", "z", 0, (0.6, 0.5))
    rows = {r["source"]: r for r in stats.verdicts(experiment)}
    assert rows["t-same"]["delta_ood_verdict"] == stats.TIED and rows["t-same"]["delta_ood_mean"] == pytest.approx(0, abs=1e-12)
    assert rows["t-gain"]["delta_ood_verdict"] == stats.BETTER and rows["t-gain"]["delta_ood_low"] > 0
    assert rows["t-gain"]["delta_ood_mean"] == pytest.approx(0.03, abs=0.005)
    assert rows["t-loss"]["delta_ood_verdict"] == stats.WORSE
    assert rows["t-out"]["delta_ood_verdict"] == stats.OUTSIDE and math.isnan(rows["t-out"]["delta_ood_mean"])
    assert "vanilla-ft" in rows and "delta_ood_verdict" not in rows["vanilla-ft"]  # the reference has no gap to itself
    assert rows["zero-shot"]["seeds"] == 1 and rows["vanilla-ft"]["seeds"] == 3
    # the interval over seeds is scipy's on the recorded per-seed values
    gains = [r["ood_mean"] for r in stats.confirm_rows(experiment) if r["source"] == "t-gain" and r["alpha"] is None]
    low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(gains), scale=scipy_stats.sem(gains))
    assert (rows["t-gain"]["ood_mean_low"], rows["t-gain"]["ood_mean_high"]) == (pytest.approx(low), pytest.approx(high))
    said = stats.sentence(rows["t-gain"])
    assert said.startswith("Trial t-gain's configuration (3 seeds)") and "better than WiSE-FT at equal ID" in said
    assert "outside vanilla FT's WiSE-FT curve" in stats.sentence(rows["t-out"])
    order = [r["source"] for r in stats.verdicts(experiment)]
    assert order.index("t-gain") < order.index("t-same") < order.index("t-loss")  # best gap first


def test_front_points_within_each_others_noise_are_tied():
    """On 200 validation images one image is 0.5 points: two trials one image apart are tied; one 5 points away is not."""
    sizes = {"id_val_acc": 200, "ood_a": 1000, "ood_b": 1000}

    def row(trial, val, ood):
        return {"trial_id": trial, "id_val_acc": val, "ood_a": ood, "ood_b": ood, "ood_mean": ood, "eval_images": sizes}

    rows = [row("a", 0.900, 0.700), row("b", 0.895, 0.703), row("c", 0.850, 0.760)]
    found = stats.ties(rows, ["id_val_acc", "ood_mean"])
    assert found == {"a": ["b"], "b": ["a"], "c": []}
    # the mean of two sets of 1,000: its half-width is the normal one of a mean of binomials
    expected = scipy_stats.norm.ppf(0.975) * math.sqrt(2 * 0.7 * 0.3 / 1000) / 2
    assert stats.half_width(rows[0], "ood_mean") == pytest.approx(expected)
    assert stats.half_width(rows[0], "id_val_acc") == pytest.approx(
        (stats.wilson(0.9, 200)[1] - stats.wilson(0.9, 200)[0]) / 2)
