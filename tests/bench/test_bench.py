"""The tabular benchmark through the real path: tabulate a tiny grid (real training on the tiny world), replay
searches on it, and resume an interrupted MO-ASHA replay with its rungs intact."""

import json
import math
import os
from pathlib import Path

import pytest
import yaml
from helpers import invoke, records

pytestmark = pytest.mark.slow

EVALUATIONS = 3


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory, tiny_world_config, tiny_prepared, cache_dir, ray_local):
    root = tmp_path_factory.mktemp("bench")
    space = {"name": "tinygrid", "task": {"world": tiny_world_config.to_dict()},
             "parameters": {"region": {"type": "categorical", "choices": ["object", "random"]},
                            "w_distill": {"type": "float", "low": 0.1, "high": 10.0, "log": True, "grid": [0.1, 10.0]}},
             "fixed": {"steps": 2 * EVALUATIONS, "batch_size": 16, "eval_every": 2, "eval_batch_size": 128, "lr": 1e-3},
             "budget": {"concurrency": 2}, "resources": {"cpu": 1}}
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    out = root / "tiny.parquet"
    result = invoke("bench", "tabulate", root / "space.yaml", "--out", out, "--storage", root / "runs", "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return out, summary, root


def test_tabulate_stores_every_grid_points_full_learning_curve(tiny_table):
    from robusttune.bench.table import read_table

    out, summary, root = tiny_table
    assert summary["points"] == 4 and summary["full_curves"] == 4 and summary["evaluations_per_curve"] == EVALUATIONS
    table = read_table(out)
    assert len(table.frame) == 4 * EVALUATIONS and table.meta["tabulate_seconds"] > 0
    recorded = {(r["trial_id"], r["evaluation"]): r for r in records(Path(summary["experiment"]), trials_only=False)
                if not r.get("final") and "evaluation" in r}
    for point, curve in table.curves.items():
        assert [row["evaluation"] for row in curve] == [1, 2, 3] and [row["step"] for row in curve] == [2, 4, 6]
        assert all(b["time_s"] > a["time_s"] for a, b in zip(curve, curve[1:]))  # wall time accumulates
        config = {"region": curve[0]["region"], "w_distill": curve[0]["w_distill"]}
        assert table.point_of(config) == point
        # the table's numbers are the trial's reported numbers (real training, not made up)
        matches = [r for r in recorded.values() if r["sampled"]["region"] == config["region"]
                   and r["sampled"]["w_distill"] == config["w_distill"] and r["evaluation"] == EVALUATIONS]
        assert matches and matches[-1]["ood_mean"] == curve[-1]["ood_mean"]
    assert table.point_of({"region": "random", "w_distill": 3.5}) == table.point_of({"region": "random", "w_distill": 10.0})
    assert table.point_of({"region": "random", "w_distill": 0.9}) == table.point_of({"region": "random", "w_distill": 0.1})


def test_an_existing_table_is_not_overwritten(tiny_table, cache_dir):
    out, _, root = tiny_table
    result = invoke("bench", "tabulate", root / "space.yaml", "--out", out, cache_dir=cache_dir)
    assert result.returncode != 0 and "exists (pass --overwrite to replace it)" in result.stderr


def test_replay_reports_the_tables_curves_within_the_budget(tiny_table, cache_dir):
    from robusttune.bench.table import read_table

    out, _, root = tiny_table
    table = read_table(out)
    result = invoke("bench", "replay", out, "--sampler", "random", "--scheduler", "none", "--budget", "1.5", "--seeds", "0,1",
                 "--storage", root / "replays", "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["budget_evaluations"] == round(1.5 * 4 * EVALUATIONS)
    for run in payload["runs"]:
        assert run["evaluations"] <= payload["budget_evaluations"]
        replayed = [r for r in records(Path(run["experiment"]), trials_only=False) if not r.get("final") and "evaluation" in r]
        assert len(replayed) == run["evaluations"]
        for row in replayed:  # every reported evaluation is the nearest grid point's stored one
            stored = table.curves[table.point_of(row["sampled"])][row["evaluation"] - 1]
            assert row["id_val_acc"] == stored["id_val_acc"] and row["ood_mean"] == stored["ood_mean"]
        assert 0 <= run["hv_fraction"] <= 1 + 1e-9
    assert {run["seed"] for run in payload["runs"]} == {0, 1}


def test_mo_asha_keeps_its_rungs_through_kill_9_and_resume(tiny_table, cache_dir, kill_9_when):
    out, _, root = tiny_table
    storage = root / "killed"
    env = {**os.environ, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}
    experiment = storage / "random+mo_asha-seed0"
    state = experiment / "scheduler.json"

    def several_decisions_one_a_stop() -> bool:
        decisions = json.loads(state.read_text())["decisions"] if state.exists() else []
        return len(decisions) >= 4 and not all(d["promoted"] for d in decisions)

    kill_9_when(["bench", "replay", out, "--sampler", "random", "--scheduler", "mo_asha", "--reduction-factor", "2",
                 "--budget", "3", "--pace", "0.3", "--storage", storage], env, several_decisions_one_a_stop,
                timeout=240, never="the replay never made four rung decisions")
    before = json.loads(state.read_text())
    result = invoke("resume", experiment, "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads(state.read_text())
    assert after["decisions"][: len(before["decisions"])] == before["decisions"]  # nothing forgotten
    new = after["decisions"][len(before["decisions"]):]
    assert new, "no rung decision after the resume"
    for level in before["rungs"]:  # each later decision saw the rung as it was before the kill, plus newcomers
        held = len(before["rungs"][level])
        later = [d for d in new if str(d["level"]) == level and d["trial_id"] not in before["rungs"][level]]
        assert later or level != "1", "no new trial reached the first rung after the resume"
        if later:
            assert later[0]["rung_size"] == held + 1
    finals = [r for r in records(experiment, trials_only=False) if r.get("final")]
    assert any(r["status"] == "stopped-early" for r in finals)
    budget = math.ceil(3 * 4 * EVALUATIONS)
    evaluations = {(r["trial_id"], r["evaluation"]) for r in records(experiment, trials_only=False) if not r.get("final") and "evaluation" in r}
    assert len(evaluations) <= budget + 1  # the budget counted across the interruption (one in flight may finish)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_mo_asha_with_optunas_multi_objective_samplers(tiny_table, cache_dir, sampler):
    out, _, root = tiny_table
    result = invoke("bench", "replay", out, "--sampler", sampler, "--scheduler", "mo_asha", "--reduction-factor", "2",
                 "--budget", "2", "--storage", root / f"mo-{sampler}", "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(result.stdout.strip().splitlines()[-1])["runs"][0]
    experiment = Path(run["experiment"])
    decisions = json.loads((experiment / "scheduler.json").read_text())["decisions"]
    stopped = {d["trial_id"] for d in decisions if not d["promoted"]}
    finals = {r["trial_id"]: r["status"] for r in records(experiment, trials_only=False) if r.get("final")}
    assert stopped and all(finals[t] == "stopped-early" for t in stopped if t in finals)
    assert run["trials"] > run["evaluations"] / EVALUATIONS  # early stopping bought more trials than full runs would
    # the Optuna study tells the same story as the records: stopped-early trials are PRUNED, not COMPLETE
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name=experiment.name,
                              storage=JournalStorage(JournalFileBackend(str(experiment / "optuna.journal"))))
    states = [t.state.name for t in study.trials]
    expected = {"complete": "COMPLETE", "stopped-early": "PRUNED", "failed": "FAIL"}
    for status, state in expected.items():
        assert states.count(state) == sum(s == status for s in finals.values()), (status, states, finals)
