"""The confirmation stage through the real path: a sweep whose space asks for it, ``robusttune confirm`` on its own,
its bad inputs, and a kill -9 in the middle of it."""

import json
from collections import Counter

import pytest
from helpers import assert_one_line_exit_2, invoke, records, snapshot, tiny_space, write_space

from robusttune.experiment import ExperimentLock, confirm_weights, is_confirm_row

pytestmark = pytest.mark.slow

ALPHAS = [0.0, 1.0]


def confirm_rows(experiment):
    return [r for r in records(experiment, trials_only=False) if is_confirm_row(r)]


def confirmed_space(tiny_world_config, **overrides):
    return tiny_space(tiny_world_config, **{"budget": {"trials": 2, "concurrency": 1},
                                            "baselines": {"wise_alphas": ALPHAS}, "confirm": {"seeds": 2, "top": 1},
                                            **overrides})


def assert_each_point_once(rows, sources_seeds):
    """Every (configuration, seed) of ``sources_seeds`` has its own point and its curve, each recorded once."""
    seen = Counter((r["source"], r["seed"], r["alpha"]) for r in rows)
    assert all(n == 1 for n in seen.values()), [k for k, n in seen.items() if n > 1]
    for source, seeds in sources_seeds.items():
        for seed in seeds:
            alphas = {None} if source == "zero-shot" else {None, *ALPHAS}
            assert {a for (s, k, a) in seen if (s, k) == (source, seed)} == alphas, (source, seed)


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory, tiny_world_config, tiny_prepared, cache_dir, ray_local):
    root = tmp_path_factory.mktemp("confirm")
    result = invoke("sweep", write_space(root / "c.yaml", confirmed_space(tiny_world_config)), "--storage",
                    root / "runs", "--name", "c", "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "runs" / "c"


def test_a_sweep_whose_space_asks_ends_with_its_confirmation(confirmed):
    rows = confirm_rows(confirmed)
    trials = {r["source"] for r in rows} - {"vanilla-ft", "zero-shot"}
    assert len(trials) == 1  # top 1
    (trial,) = trials
    assert_each_point_once(rows, {trial: [0, 1], "vanilla-ft": [0, 1], "zero-shot": [0]})
    # seed 0 of the trial is the trial: its recorded numbers, no retraining; seed 1 trained with the next seed
    final = next(r for r in records(confirmed) if r.get("trial_id") == trial and r.get("final"))
    (own,) = [r for r in rows if r["source"] == trial and r["seed"] == 0 and r["alpha"] is None]
    assert own["id_acc"] == final["id_acc"] and own["ood_mean"] == final["ood_mean"]
    (other,) = [r for r in rows if r["source"] == trial and r["seed"] == 1 and r["alpha"] is None]
    assert other["config"]["seed"] == final["config"]["seed"] + 1 and other["config_key"] == own["config_key"]
    assert not confirm_weights(confirmed, own["config_key"], 0).exists() and confirm_weights(confirmed, own["config_key"], 1).is_file()
    assert all(r["eval_images"]["id_acc"] > 0 for r in rows)


def test_confirm_on_its_own_adds_only_what_is_missing(confirmed, cache_dir):
    again = invoke("confirm", confirmed, "--json", cache_dir=cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    payload = json.loads(again.stdout.strip().splitlines()[-1])
    assert payload["written"] == 0  # nothing computed twice
    more = invoke("confirm", confirmed, "--seeds", "3", "--json", cache_dir=cache_dir)
    assert more.returncode == 0, more.stderr[-3000:]
    payload = json.loads(more.stdout.strip().splitlines()[-1])
    rows = confirm_rows(confirmed)
    trial = next(r["source"] for r in rows if r["source"] not in ("vanilla-ft", "zero-shot"))
    assert payload["written"] == 2 * (1 + len(ALPHAS))  # seed 2 of the trial and of vanilla FT
    assert_each_point_once(rows, {trial: [0, 1, 2], "vanilla-ft": [0, 1, 2], "zero-shot": [0]})
    verdicts = {v["source"]: v for v in payload["verdicts"]}
    assert verdicts[trial]["seeds"] == 3 and verdicts["vanilla-ft"]["seeds"] == 3
    assert verdicts[trial]["delta_ood_verdict"] in ("better", "worse", "indistinguishable",
                                                     "outside vanilla FT's WiSE-FT range")
    assert len(payload["sentences"]) == len(payload["verdicts"])


def test_confirm_refuses_bad_input_and_changes_nothing(confirmed, tmp_path, cache_dir, tiny_world_config):
    before = snapshot(confirmed)
    for args, said in [(["--seeds", "0"], "--seeds must be >= 1, got 0"), (["--top", "0"], "--top must be >= 1, got 0"),
                       (["--trials", "nope,other"], "not a complete trial of this experiment: nope, other")]:
        assert_one_line_exit_2(invoke("confirm", confirmed, *args, cache_dir=cache_dir), said)
    with ExperimentLock(confirmed, "another robusttune"):
        assert_one_line_exit_2(invoke("confirm", confirmed, cache_dir=cache_dir), "another robusttune")
    assert snapshot(confirmed) == before
    # an experiment with no complete trial (the records hold a failed one only)
    empty = tmp_path / "runs" / "none"
    from robusttune.experiment import append_record, write_manifest
    from robusttune.space import load_space

    space, text = load_space(str(write_space(tmp_path / "n.yaml", confirmed_space(tiny_world_config))))
    empty.mkdir(parents=True)
    write_manifest(empty, space, text, seed=0, trials=2, concurrency=1, runner={"kind": "train"})
    append_record(empty, {"trial_id": "t1", "status": "failed", "step": 2, "final": True, "failure": "non-finite loss"})
    before = snapshot(empty)
    assert_one_line_exit_2(invoke("confirm", empty, cache_dir=cache_dir), "no complete trial to confirm")
    assert snapshot(empty) == before


def test_kill_9_during_the_confirmation_then_resume_records_every_run_once(tmp_path, tiny_world_config, tiny_prepared,
                                                                          cache_dir, kill_9_when, ray_local):
    import os

    space = confirmed_space(tiny_world_config, confirm={"seeds": 3, "top": 1})
    experiment = tmp_path / "runs" / "k"
    env = {**os.environ, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}

    def confirming() -> bool:
        return (experiment / "records.jsonl").exists() and bool(confirm_rows(experiment))

    kill_9_when(["sweep", write_space(tmp_path / "k.yaml", space), "--storage", tmp_path / "runs", "--name", "k"], env,
                confirming, timeout=300, never="the sweep never reached its confirmation")
    before = confirm_rows(experiment)
    assert len(before) < 2 * 3 * (1 + len(ALPHAS)) + 1, "the kill came after the confirmation ended"
    result = invoke("resume", experiment, "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = confirm_rows(experiment)
    assert rows[:len(before)] == before  # nothing recorded was lost or rewritten
    trial = next(r["source"] for r in rows if r["source"] not in ("vanilla-ft", "zero-shot"))
    assert_each_point_once(rows, {trial: [0, 1, 2], "vanilla-ft": [0, 1, 2], "zero-shot": [0]})


def test_a_failed_confirmation_run_is_recorded_once_and_not_trained_again(tmp_path, tiny_world_config):
    from robusttune.experiment import append_record
    from robusttune.search.confirm import ConfirmRun, missing_alphas, recorded
    from robusttune.space import SearchSpace

    space = SearchSpace.model_validate(confirmed_space(tiny_world_config))
    run = ConfirmRun("t1", {"lr": 0.001, "seed": 1}, 1)
    assert missing_alphas(run, space, recorded(tmp_path)) == [None, *ALPHAS]
    append_record(tmp_path, {"kind": "confirm", "config_key": run.key, "source": "t1", "seed": 1, "alpha": None,
                             "status": "failed", "failure": "non-finite loss (nan) at step 3"})
    assert missing_alphas(run, space, recorded(tmp_path)) == []  # a resume does not train it again


def test_merges_and_each_method_confirmed_at_every_seed(tmp_path, tiny_world_config, tiny_prepared, cache_dir, ray_local):
    """Two trials (lp, l2sp: neither is vanilla FT's config) from a grid; the space confirms the top 1 and both merges of the two. A merge at seed 1
    is its rule over its members trained at seed 1; then ``confirm --per-method`` gives the other method its curve."""
    from robusttune.experiment import read_records
    from robusttune.method.merge import uniform_soup
    from robusttune.search.merges import MergeBench
    from robusttune.space import load_space
    from robusttune.training.checkpoint import load_checkpoint

    space = confirmed_space(tiny_world_config, sampler={"name": "grid", "seed": 0},
                            parameters={"method": {"type": "categorical", "choices": ["lp", "l2sp"]}},
                            confirm={"seeds": 2, "top": 1, "merges": ["uniform_soup", "model_stock"]})
    path = write_space(tmp_path / "m.yaml", space)
    result = invoke("sweep", path, "--storage", tmp_path / "runs", "--name", "m", "--json", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / "runs" / "m"
    rows = confirm_rows(experiment)
    merges = {r["method"]: r for r in read_records(experiment) if r.get("kind") == "merge"}
    assert set(merges) == {"uniform_soup", "greedy_soup", "model_stock"} and len(merges["uniform_soup"]["members"]) == 2
    top = {r["source"] for r in rows} - {"vanilla-ft", "zero-shot", "uniform_soup", "model_stock"}
    assert len(top) == 2  # the top trial with its curve, the other as a member only
    by_source = {s: [r for r in rows if r["source"] == s] for s in top}
    member = next(s for s, rs in by_source.items() if all(r["alpha"] is None for r in rs))
    assert sorted(r["seed"] for r in by_source[member]) == [0, 1]  # its own point at each seed, no curve
    assert "greedy_soup" not in {r["source"] for r in rows}  # computed, not asked to be confirmed
    for merge, row in [(m, merges[m]) for m in ("uniform_soup", "model_stock")]:
        mine = {r["seed"]: r for r in rows if r["source"] == merge}
        assert sorted(mine) == [0, 1] and all(r["method"] == merge for r in mine.values())
        assert mine[0]["id_acc"] == row["id_acc"] and mine[0]["ood_mean"] == row["ood_mean"]  # seed 0: the merge
    # seed 1 of the uniform soup: the average of its members' seed-1 weights, evaluated
    (soup,) = [r for r in rows if r["source"] == "uniform_soup" and r["seed"] == 1]
    keys = {r["source"]: r["config_key"] for r in rows if r["source"] in soup["members"]}
    states = [load_checkpoint(confirm_weights(experiment, keys[t], 1))["model"] for t in soup["members"]]
    parsed, _ = load_space(str(path))
    metrics, _ = MergeBench.build(parsed, cache_dir, experiment).evaluate(uniform_soup(states))
    assert metrics["id_acc"] == soup["id_acc"] and metrics["ood_mean"] == soup["ood_mean"]
    assert soup["id_acc"] != merges["uniform_soup"]["id_acc"] or soup["ood_mean"] != merges["uniform_soup"]["ood_mean"]
    # the other method confirmed in its own right: its curve is added, nothing else is computed again
    again = invoke("confirm", experiment, "--per-method", "--json", cache_dir=cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    payload = json.loads(again.stdout.strip().splitlines()[-1])
    rows = confirm_rows(experiment)
    assert_each_point_once(rows, {t: [0, 1] for t in top} | {"vanilla-ft": [0, 1], "zero-shot": [0]})
    verdicts = {v["source"]: v for v in payload["verdicts"]}
    assert {verdicts[t]["method"] for t in top} == {"lp", "l2sp"} and verdicts["model_stock"]["method"] == "model_stock"
    assert verdicts["uniform_soup"]["seeds"] == 2 and any("uniform soup" in s for s in payload["sentences"])
    assert_one_line_exit_2(invoke("confirm", experiment, "--merge", "greedy", cache_dir=cache_dir),
                           "invalid choice: 'greedy'")
