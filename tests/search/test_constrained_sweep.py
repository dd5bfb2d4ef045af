"""A constrained sweep on the tiny world (real Ray Tune, Optuna journal, ASHA), killed with -9 after its first
trial and resumed: zero-shot and vanilla FT run before the first trial, every evaluation carries its constraint values
against them, Optuna's study holds them once per trial, an infeasible evaluation's scalar objective lies below every
feasible one's, and the report marks them; each trial's final row carries its measured cost."""

import json
import os

import pytest

from helpers import invoke, records, tiny_space, write_space

pytestmark = pytest.mark.slow

CONSTRAINT = "id_val_acc >= zero_shot + 0.5"


def test_a_constrained_sweep_measures_its_references_first_and_tells_optuna(tmp_path, tiny_world_config, tiny_prepared,
                                                                          cache_dir, kill_9_when):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    space = tiny_space(tiny_world_config, objective={"metrics": ["ood_mean"], "directions": ["max"],
                                                      "constraints": [CONSTRAINT]},
                       sampler={"name": "tpe", "seed": 0}, scheduler={"name": "asha", "grace_period": 1, "max_t": 2},
                       baselines={"wise_alphas": [0.0, 1.0]})
    experiment = tmp_path / "c"

    def a_trial_finished() -> bool:  # the references are measured by then: the kill lands between trials' work
        return (experiment / "records.jsonl").exists() and any(
            r.get("final") for r in records(experiment, trials_only=False) if "trial_id" in r)

    kill_9_when(["sweep", write_space(tmp_path / "c.yaml", space), "--storage", tmp_path, "--name", "c"],
                {**os.environ, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}, a_trial_finished, timeout=600,
                never="the constrained sweep never finished a trial")
    result = invoke("resume", experiment, "--json", cache_dir=cache_dir)  # a constrained sweep resumes exactly once
    assert result.returncode == 0, result.stderr[-3000:]
    rows = records(tmp_path / "c", trials_only=False)
    first_trial = next(i for i, r in enumerate(rows) if "trial_id" in r)
    before = {r.get("method") for r in rows[:first_trial] if r.get("kind") == "baseline"}
    assert before == {"zero-shot", "vanilla-ft"}  # the references exist before any trial reports
    zero_shot = next(r for r in rows if r.get("kind") == "baseline" and r["method"] == "zero-shot")["id_val_acc"]
    evaluations = [r for r in rows if "trial_id" in r and "evaluation" in r and r["status"] != "failed"]
    assert evaluations
    for row in evaluations:
        value = zero_shot + 0.005 - row["id_val_acc"]
        assert row["constraints"] == [pytest.approx(value)] and row["constraint_violation"] == pytest.approx(max(0.0, value))
    feasible = [r["objective"] for r in evaluations if r["constraint_violation"] == 0]
    infeasible = [r["objective"] for r in evaluations if r["constraint_violation"] > 0]
    assert not feasible or not infeasible or max(infeasible) < min(feasible)
    finals = {r["trial_id"]: r for r in rows if r.get("final")}
    for row in finals.values():  # each trial's cost, measured where it ran (robusttune.training.cost)
        cost = row["cost"]
        assert cost["evaluations"] == 2 and cost["images_trained"] == 4 * 16 and cost["images_evaluated"] > 0
        assert 0 < cost["startup_s"] and 0 < cost["eval_s"] and 0 < cost["train_s"]
        assert cost["device_s"] == pytest.approx(cost["startup_s"] + cost["train_s"] + cost["eval_s"], abs=2e-3)
        assert cost["device"].startswith("cpu") and cost["peak_memory_kind"] == "host_rss" and cost["peak_memory_bytes"] > 0
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "c" / "optuna.journal")))
    study = optuna.load_study(study_name="c", storage=storage)
    told = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(told) == len(finals) == 3
    assert sorted(t.constraints[CONSTRAINT] for t in told) == pytest.approx(sorted(r["constraints"][0] for r in finals.values()))

    report = invoke("report", tmp_path / "c", "--json", cache_dir=cache_dir)
    assert report.returncode == 0, report.stderr[-2000:]
    summary = json.loads(report.stdout.strip().splitlines()[-1])["constraints"]
    assert summary["feasible"] + summary["infeasible"] == 3
    assert summary["constraints"][0]["bound"] == pytest.approx(zero_shot + 0.005)
    assert (tmp_path / "c" / "report" / "feasibility.png").stat().st_size > 1000
    assert "<h2>Constraints</h2>" in (tmp_path / "c" / "report" / "index.html").read_text()
