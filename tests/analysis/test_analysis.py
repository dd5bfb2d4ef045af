import json
import random

import numpy as np
import pandas as pd
import pytest

from robusttune.analysis import pareto, results


def brute_force_hypervolume(points, reference):
    """Union area of the rectangles [ref, p] by coordinate compression (exact, O(n^3))."""
    pts = [p for p in points if p[0] > reference[0] and p[1] > reference[1]]
    xs = sorted({reference[0], *(p[0] for p in pts)})
    ys = sorted({reference[1], *(p[1] for p in pts)})
    area = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        for y0, y1 in zip(ys, ys[1:]):
            if any(p[0] >= x1 and p[1] >= y1 for p in pts):
                area += (x1 - x0) * (y1 - y0)
    return area


def brute_force_front(points):
    return [i for i, p in enumerate(points)
            if not any(all(a >= b for a, b in zip(q, p)) and q != p for q in points)]


@pytest.mark.parametrize("seed", range(20))
def test_front_and_hypervolume_match_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 25)
    # coarse values make ties and duplicates common
    points = [(rng.randint(0, 10) / 10, rng.randint(0, 10) / 10) for _ in range(n)]
    reference = (rng.choice([0.0, 0.2]), rng.choice([0.0, 0.3]))
    assert pareto.non_dominated(points) == brute_force_front(points)
    assert pareto.hypervolume_2d(points, reference) == pytest.approx(brute_force_hypervolume(points, reference))
    curve = pareto.hypervolume_over_trials(points, reference)
    assert all(b >= a for a, b in zip(curve, curve[1:])) and curve[-1] == pytest.approx(brute_force_hypervolume(points, reference))


def test_hypervolume_simple_cases():
    assert pareto.hypervolume_2d([(1.0, 1.0)], (0.0, 0.0)) == 1.0
    assert pareto.hypervolume_2d([(1.0, 0.5), (0.5, 1.0)], (0.0, 0.0)) == pytest.approx(0.75)
    assert pareto.hypervolume_2d([(0.5, 0.5)], (0.5, 0.0)) == 0.0  # not beyond the reference
    assert pareto.worst_point([(0.2, 0.9), (0.8, 0.1)]) == (0.2, 0.1)


def write_records(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn": ')


def test_results_tables(tmp_path):
    cfg = {"region": "object", "w_distill": 1.0, "seed": 0}
    rows = [
        {"trial_id": "a", "status": "running", "step": 50, "evaluation": 1, "id_acc": 0.9, "ood_mean": 0.8, "objective": 0.85, "sampled": cfg},
        {"trial_id": "a", "status": "running", "step": 100, "evaluation": 2, "id_acc": 0.95, "ood_mean": 0.7, "objective": 0.82, "sampled": cfg},
        {"trial_id": "a", "status": "running", "step": 100, "evaluation": 2, "id_acc": 0.95, "ood_mean": 0.7, "objective": 0.82, "sampled": cfg},
        {"trial_id": "a", "status": "complete", "step": 100, "evaluation": 2, "id_acc": 0.95, "ood_mean": 0.7, "objective": 0.82,
         "sampled": cfg, "final": True},
        {"trial_id": "b", "status": "failed", "step": 3, "failure": "non-finite loss", "final": True, "sampled": cfg},
    ]
    write_records(tmp_path, rows)
    evals = results.evaluations(tmp_path)
    assert len(evals) == 2 and list(evals["step"]) == [50, 100]  # the re-reported step appears once
    table = results.trials(tmp_path)
    a = table.set_index("trial_id").loc["a"]
    assert a["status"] == "complete" and a["id_acc"] == 0.95 and a["best_ood_mean"] == 0.8 and a["best_step"] == 50
    assert a["param.region"] == "object" and "param.seed" not in table
    b = table.set_index("trial_id").loc["b"]
    assert b["status"] == "failed" and b["failure"] == "non-finite loss"
    results.export(table, tmp_path / "t.parquet")
    results.export(table, tmp_path / "t.csv")
    import pandas as pd

    assert pd.read_parquet(tmp_path / "t.parquet")["trial_id"].tolist() == ["a", "b"]


def test_importance_is_held_out_and_gives_noise_nothing():
    from robusttune.analysis import effects

    rng = np.random.default_rng(0)
    n = 40
    frame = pd.DataFrame({
        "status": ["complete"] * n,
        "param.w_distill": 10 ** rng.uniform(-2, 1.5, n),  # spans decades: log-scaled
        "param.noise": rng.uniform(0, 1, n),
        "param.region": rng.choice(["object", "context", "none"], n),
    })
    frame["ood_mean"] = 0.7 + 0.05 * np.log10(frame["param.w_distill"]) + rng.normal(0, 0.002, n)
    frame["id_val_acc"] = 0.9 + 0.04 * (frame["param.region"] == "none") + rng.normal(0, 0.002, n)
    table = effects.importance(frame, ["param.w_distill", "param.noise", "param.region"], ["id_val_acc", "ood_mean"])
    assert table.loc["param.w_distill", "ood_mean"] > 0.5 and table.loc["param.region", "id_val_acc"] > 0.5
    assert table.loc["param.noise", "ood_mean"] < 0.05 and table.loc["param.noise", "id_val_acc"] < 0.05
    assert "held-out" in table.attrs["method"] and "40 complete trials" in table.attrs["method"]
    few = effects.importance(frame.head(effects.MIN_TRIALS - 1), ["param.noise"], ["ood_mean"])
    assert few.empty and f"{effects.MIN_TRIALS - 1} complete trial(s)" in few.attrs["reason"]
