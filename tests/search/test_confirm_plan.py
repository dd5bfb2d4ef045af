"""What the confirmation stage chooses to run, on records written by hand: the top of each method, a merge's
members without curves, and the merge's key (fast: no training, no Ray)."""

import pytest
from helpers import tiny_space

from robusttune.experiment import MERGE_KIND, append_record
from robusttune.search.confirm import ConfirmRun, MergeRun, missing_alphas, plan_merges, plan_runs, recorded, select_trials
from robusttune.space import SearchSpace

ALPHAS = [0.0, 0.5, 1.0]


def space_of(tiny_world_config, **confirm):
    return SearchSpace.model_validate(tiny_space(
        tiny_world_config, parameters={"method": {"type": "categorical", "choices": ["ft", "lp", "l2sp"]}},
        baselines={"wise_alphas": ALPHAS}, confirm={"seeds": 3, "top": 1, **confirm}))


def trial(method: str, id_val: float, ood: float, seed: int = 0) -> dict:
    return {"status": "complete", "id_val_acc": id_val, "ood_mean": ood,
            "config": {"method": {"name": method}, "lr": 1e-3 * (1 + id_val), "seed": seed}}


LATEST = {"a": trial("ft", 0.9, 0.5), "b": trial("ft", 0.8, 0.4), "c": trial("lp", 0.7, 0.6),
          "d": trial("lp", 0.6, 0.55), "e": trial("l2sp", 0.5, 0.3)}


def test_per_method_confirms_the_best_of_each_method(tiny_world_config):
    space = space_of(tiny_world_config)
    assert select_trials(space, LATEST, top=1) == ["a"]  # a and c are the front; a is first by crowding (ties: id)
    assert set(select_trials(space, LATEST, top=2)) == {"a", "c"}
    # each method ranked among its own trials: b and d are dominated within ft and lp
    assert select_trials(space, LATEST, top=1, per_method=True) == ["a", "e", "c"]  # methods in name order: ft, l2sp, lp
    assert sorted(select_trials(space, LATEST, top=2, per_method=True)) == ["a", "b", "c", "d", "e"]
    assert select_trials(space, LATEST, top=1, trial_ids=["d"], per_method=True) == ["d"]  # named trials win


def test_a_method_whose_trials_were_all_stopped_early_is_represented_by_its_best_stopped_one(tiny_world_config):
    space = space_of(tiny_world_config)
    stopped = {"s1": {**trial("l2sp", 0.4, 0.2), "status": "stopped-early"},
               "s2": {**trial("l2sp", 0.45, 0.25), "status": "stopped-early"},
               "s3": {**trial("ft", 0.99, 0.99), "status": "stopped-early"},  # ft has complete trials: not chosen
               "f": {**trial("lp", 0.99, 0.99), "status": "failed"}}
    latest = {k: v for k, v in LATEST.items() if k != "e"} | stopped
    assert select_trials(space, latest, top=1, per_method=True) == ["a", "s2", "c"]
    assert select_trials(space, latest, top=1) == ["a"]  # without per_method: complete trials only


def test_a_merge_confirms_its_members_without_curves_once_each(tmp_path, tiny_world_config):
    space = space_of(tiny_world_config, merges=["model_stock"])
    append_record(tmp_path, {"kind": MERGE_KIND, "method": "model_stock", "members": ["a", "c"], "id_acc": 0.9})
    confirmed = plan_runs(space, LATEST, ["a"], 3)
    members, merges = plan_merges(tmp_path, LATEST, ("model_stock", "greedy_soup"), 3, confirmed)
    # a is confirmed in its own right (with its curve): only c's three seeds are added, without curve
    assert sorted((r.source, r.seed, r.curve) for r in members) == [("c", 0, False), ("c", 1, False), ("c", 2, False)]
    assert [r.config["seed"] for r in sorted(members, key=lambda r: r.seed)] == [0, 1, 2]
    assert missing_alphas(members[0], space, recorded(tmp_path)) == [None]
    assert missing_alphas(confirmed[0], space, recorded(tmp_path)) == [None, *ALPHAS]
    # greedy_soup was not recorded: skipped; model stock at every seed, one key across seeds
    assert [(m.source, m.seed) for m in merges] == [("model_stock", 0), ("model_stock", 1), ("model_stock", 2)]
    assert len({m.key for m in merges}) == 1
    assert missing_alphas(merges[1], space, recorded(tmp_path)) == [None]
    # the key names the members' configurations: another member set is another merge
    other = MergeRun("model_stock", (("a", ConfirmRun("a", LATEST["a"]["config"], 0).key), ("b", "x")), 1)
    assert other.key != merges[1].key and MergeRun("uniform_soup", merges[1].members, 1).key != merges[1].key


def test_a_space_names_each_merge_to_confirm_once(tiny_world_config):
    with pytest.raises(ValueError, match="names a merge twice"):
        space_of(tiny_world_config, merges=["model_stock", "model_stock"])
    with pytest.raises(ValueError, match="greedy_soup"):
        space_of(tiny_world_config, merges=["greedy"])


def test_the_confirmation_table_shows_gaps_in_points_and_accuracies_in_percent():
    from robusttune.cli.output import table

    text = table([{"source": "a", "id_acc_mean": 0.93, "delta_ood_mean": 0.00148, "delta_ood_low": -0.0028,
                   "delta_ood_verdict": "better"}],
                 ["source", "id_acc_mean", "delta_ood_mean", "delta_ood_low", "delta_ood_verdict"])
    assert text.splitlines()[1].split() == ["a", "93.0", "+0.15", "-0.28", "better"]
