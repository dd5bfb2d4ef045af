"""A trial's cost: the meter's split of device-seconds, images and evaluations (with a resume carried over), and
where it shows: status (totals, against a plan) and the report (trials.csv's cost columns, the cost figure)."""

import json

import pytest

from helpers import invoke


def test_the_meter_splits_time_counts_images_and_carries_over_a_resume(tmp_path, monkeypatch):
    from robusttune.training import cost as module
    from robusttune.training.cost import CostMeter

    clock = iter([0.0, 2.0, 5.0, 9.0, 20.0, 21.0, 24.0])  # start, training starts, 2 evaluations; then a resume
    monkeypatch.setattr(module.time, "perf_counter", lambda: next(clock))
    meter = CostMeter.start(tmp_path / "cost.json", workers=2)
    meter.training_starts()
    meter.evaluated(eval_seconds=1.0, images=100, trained_images=64)
    meter.evaluated(eval_seconds=0.5, images=100, trained_images=128)
    meter.note_device("cpu")
    meter.save(tmp_path / "cost.json")
    found = meter.to_dict()
    assert (found["startup_s"], found["train_s"], found["eval_s"]) == (4.0, 2 * 3 - 2 + 2 * 4 - 1, 3.0)
    assert found["device_s"] == found["startup_s"] + found["train_s"] + found["eval_s"]
    assert (found["images_trained"], found["images_evaluated"], found["evaluations"]) == (128, 200, 2)
    assert found["peak_memory_kind"] == "host_rss" and found["peak_memory_bytes"] > 10_000_000  # a Python process
    assert found["device"].startswith("cpu") and found["host"]
    again = CostMeter.start(tmp_path / "cost.json", workers=2)  # the trial resumed in a new process
    again.training_starts()
    again.evaluated(eval_seconds=1.0, images=100, trained_images=192)
    resumed = again.to_dict()
    assert resumed["resumes"] == 1 and resumed["evaluations"] == 3 and resumed["startup_s"] == 4.0 + 2.0
    assert resumed["eval_s"] == 3.0 + 2.0 and resumed["train_s"] == found["train_s"] + 4.0


PLAN = {"trial_hours": 0.01, "evaluations_per_trial": 2, "eval_images_per_trial": 400}


def plant(folder):
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"space": "planted", "trials": 2, "parameters": []}))
    rows = []
    for trial, (device_s, evaluations, status) in {"t1": (36.0, 2, "complete"), "t2": (9.0, 1, "stopped-early")}.items():
        cost = {"device_s": device_s, "startup_s": 1.0, "train_s": device_s - 3.0, "eval_s": 2.0, "images_trained": 64,
                "images_evaluated": 200 * evaluations, "evaluations": evaluations, "peak_memory_bytes": 2 ** 30,
                "peak_memory_kind": "host_rss", "host": "h", "device": "cpu: x86_64", "workers": 1, "resumes": 0}
        rows.append({"trial_id": trial, "status": status, "step": 4, "final": True, "id_acc": 0.5, "ood_mean": 0.4,
                     "cost": cost})
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_status_totals_each_trials_cost_and_compares_it_with_a_plan(tmp_path):
    from robusttune.analysis.costs import against_plan, trial_costs

    exp = plant(tmp_path / "exp")
    result = invoke("status", exp, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    cost = json.loads(result.stdout.strip().splitlines()[-1])["cost"]
    assert cost["total"]["device_s"] == 45.0 and cost["total"]["evaluations"] == 3 and cost["total"]["devices"] == ["cpu: x86_64"]
    assert set(cost["trials"]) == {"t1", "t2"}
    compared = against_plan(trial_costs(exp), PLAN)["trials"]
    assert compared["t1"]["planned_device_s"] == pytest.approx(36.0) and compared["t1"]["ratio"] == pytest.approx(1.0)
    assert compared["t2"]["planned_device_s"] == pytest.approx(18.0) and compared["t2"]["ratio"] == pytest.approx(0.5)
    assert compared["t2"]["planned_images_evaluated"] == 200


def test_the_report_holds_each_trials_cost_and_the_front_against_cost(tmp_path):
    import pandas as pd

    from robusttune.analysis.report import write_report

    exp = plant(tmp_path / "exp")
    written = write_report(exp, formats=("html", "png", "csv"))
    trials = pd.read_csv(written["files"]["trials.csv"]).set_index("trial_id")
    assert trials.loc["t1", "cost.device_s"] == 36.0 and trials.loc["t2", "cost.evaluations"] == 1
    assert (exp / "report" / "cost.png").stat().st_size > 1000
    assert "<h2>Front against cost</h2>" in (exp / "report" / "index.html").read_text()
    assert written["cost"]["device_s"] == 45.0
