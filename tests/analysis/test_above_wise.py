"""The share of each method's configurations above vanilla FT's WiSE-FT curve, against a computation by hand from
planted records; and where it shows (status --json, the report's verdict section, report/above_wise.csv)."""

import json
import math

import numpy as np
import pytest

from helpers import invoke

# vanilla FT's curve: ID 0.60 -> 0.80 with OOD 0.50 -> 0.40 (a straight line: OOD(x) = 0.80 - 0.5 x), alphas 0, .5, 1
CURVE = [(0.0, 0.60, 0.50), (0.5, 0.70, 0.45), (1.0, 0.80, 0.40)]
# (trial, method, status, id_acc, ood_mean)
TRIALS = [("a1", "ft", "complete", 0.65, 0.50), ("a2", "ft", "complete", 0.75, 0.40), ("a3", "ft", "complete", 0.70, 0.46),
          ("a4", "ft", "complete", 0.55, 0.90),  # below the curve's ID range: counted apart
          ("b1", "l2sp", "complete", 0.62, 0.48), ("b2", "l2sp", "complete", 0.78, 0.43),
          ("b3", "l2sp", "complete", 0.85, 0.99),  # above the range: counted apart
          ("b4", "l2sp", "stopped-early", 0.70, 0.90), ("b5", "l2sp", "failed", 0.70, 0.90)]  # never counted


def plant(folder):
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"space": "planted", "trials": len(TRIALS), "parameters": ["method"]}))
    rows = [{"kind": "wise", "source": "vanilla-ft", "alpha": a, "id_acc": x, "id_val_acc": x, "ood_mean": y}
            for a, x, y in CURVE]
    rows += [{"kind": "baseline", "method": "zero-shot", "id_acc": 0.60, "id_val_acc": 0.60, "ood_mean": 0.50},
             {"kind": "baseline", "method": "vanilla-ft", "id_acc": 0.80, "id_val_acc": 0.80, "ood_mean": 0.40}]
    rows.append({"kind": "wise", "source": "a1", "alpha": 0.5, "id_acc": 0.61, "ood_mean": 0.99})  # another curve: ignored
    for trial, method, status, x, y in TRIALS:
        common = {"trial_id": trial, "config": {"method": {"name": method}}, "sampled": {"method": method}}
        rows.append({**common, "status": "running", "step": 1, "evaluation": 1, "id_acc": 0.3, "ood_mean": 0.1})
        rows.append({**common, "status": status, "step": 2, "final": True, "id_acc": x, "id_val_acc": x, "ood_mean": y})
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def by_hand(method):
    """The gaps of the method's complete trials inside the range, against the line OOD(x) = 0.80 - 0.5 x."""
    inside = [y - (0.80 - 0.5 * x) for _, m, s, x, y in TRIALS if m == method and s == "complete" and 0.60 <= x <= 0.80]
    return inside


def wilson(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_each_methods_share_and_median_gap_equal_a_computation_from_the_records(tmp_path):
    from robusttune.analysis.above_wise import share_above_wise

    found = share_above_wise(plant(tmp_path / "exp"))
    rows = {r["method"]: r for r in found["rows"]}
    assert set(rows) == {"ft", "l2sp"} and found["curve_points"] == 3 and found["curve_range"] == [0.60, 0.80]
    for method, (below, beyond) in {"ft": (1, 0), "l2sp": (0, 1)}.items():
        gaps, row = by_hand(method), rows[method]
        above = sum(g > 0 for g in gaps)
        assert (row["trials"], row["with_gap"], row["above"]) == (len(gaps) + below + beyond, len(gaps), above)
        assert (row["outside_below"], row["outside_above"]) == (below, beyond)
        assert row["share_above"] == pytest.approx(above / len(gaps))
        assert (row["share_low"], row["share_high"]) == pytest.approx(wilson(above, len(gaps)), abs=1e-9)
        assert row["median_gap"] == pytest.approx(float(np.median(gaps)), abs=1e-12)
        assert row["median_low"] <= row["median_gap"] <= row["median_high"]
        assert min(gaps) - 1e-12 <= row["median_low"] and row["median_high"] <= max(gaps) + 1e-12
    assert rows["ft"]["above"] == 2 and rows["l2sp"]["above"] == 1  # a1 (+0.025), a3 (+0.01); b1 (-0.01)
    again = share_above_wise(tmp_path / "exp")
    assert again == found  # the bootstrap is seeded


def test_without_a_curve_nothing_is_claimed(tmp_path):
    from robusttune.analysis.above_wise import share_above_wise

    exp = plant(tmp_path / "exp")
    kept = [line for line in (exp / "records.jsonl").read_text().splitlines() if '"vanilla-ft"' not in line]
    (exp / "records.jsonl").write_text("\n".join(kept) + "\n")
    found = share_above_wise(exp)
    assert found["rows"] == [] and "not recorded" in found["reason"]


def test_status_json_the_report_and_its_csv_show_the_shares(tmp_path):
    import pandas as pd

    from robusttune.analysis.above_wise import share_above_wise
    from robusttune.analysis.report import write_report

    exp = plant(tmp_path / "exp")
    expected = share_above_wise(exp)
    status = invoke("status", exp, "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    shown = json.loads(status.stdout.strip().splitlines()[-1])["above_wise"]
    assert [r["above"] for r in shown["rows"]] == [r["above"] for r in expected["rows"]]
    human = invoke("status", exp)
    assert "ft: 2 of 3 complete trial(s) above WiSE-FT at equal ID" in human.stdout
    written = write_report(exp, formats=("html", "csv"))
    csv = pd.read_csv(written["files"]["above_wise.csv"])
    assert list(csv["method"]) == ["ft", "l2sp"] and list(csv["above"]) == [2, 1]
    assert csv["share_low"].tolist() == pytest.approx([r["share_low"] for r in expected["rows"]])
    page = (exp / "report" / "index.html").read_text()
    assert "share of configurations above WiSE-FT, per method" in page and "2 of 3 complete trial(s) above WiSE-FT" in page
