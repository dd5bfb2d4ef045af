"""MO-ASHA: the ranking functions against brute force, and rung decisions pinned on hand-built results."""

import itertools
import pickle
import random
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from robusttune.errors import ConfigError, DataError
from robusttune.pareto import (crowding_distance, dominates, eps_net_order, multi_objective_ranking,
                                        nondominated_fronts)
from robusttune.search.mo_asha import MultiObjectiveASHA, milestones


def test_milestones_are_grace_times_powers_of_eta_below_max_t():
    assert milestones(1, 3, 10) == [1, 3, 9]
    assert milestones(2, 2, 16) == [2, 4, 8]
    assert milestones(1, 3, 1) == []


@pytest.mark.parametrize("seed", range(5))
def test_nondominated_fronts_match_brute_force(seed):
    rng = random.Random(seed)
    points = [(rng.randint(0, 6), rng.randint(0, 6)) for _ in range(25)]  # small integers: many ties
    fronts = nondominated_fronts(points)
    assert sorted(itertools.chain(*fronts)) == list(range(len(points)))
    for k, front in enumerate(fronts):
        later = [i for f in fronts[k:] for i in f]
        # nothing in this front is dominated by anything not already peeled off...
        assert not any(dominates(points[j], points[i]) for i in front for j in later)
        # ...and every member of a later front is dominated by some member of this or an earlier front's peel
        if k:
            assert all(any(dominates(points[j], points[i]) for j in fronts[k - 1]) for i in front)


def test_crowding_distance_by_hand():
    # a straight front: the extremes are infinite, the middle ones get the normalised gap of their neighbours
    points = [(0.0, 4.0), (1.0, 3.0), (3.0, 1.0), (4.0, 0.0)]
    distance = crowding_distance(points)
    assert distance[0] == distance[3] == float("inf")
    assert distance[1] == pytest.approx((3 - 0) / 4 + (4 - 1) / 4)
    assert distance[2] == pytest.approx((4 - 1) / 4 + (3 - 0) / 4)


def test_eps_net_takes_the_best_first_objective_then_the_farthest_point():
    points = [(0.0, 10.0), (9.0, 1.0), (10.0, 0.0), (5.0, 5.0)]
    order = eps_net_order(points)
    assert order[0] == 2  # best first objective
    assert order[1] == 0  # farthest from (10, 0)
    assert order[2] == 3  # farthest from both of those


def test_ranking_puts_fronts_first_and_tie_breaks_inside_them():
    points = [(1.0, 1.0), (0.0, 3.0), (3.0, 0.0), (2.0, 2.0), (0.5, 0.5)]
    # fronts: {1, 2, 3}, {0}, {4}
    assert multi_objective_ranking(points, "eps_net") == [2, 1, 3, 0, 4]
    assert multi_objective_ranking(points, "crowding") == [1, 2, 3, 0, 4]  # extremes (inf) in input order, then 3
    with pytest.raises(ConfigError, match="tie_break"):
        multi_objective_ranking(points, "hypervolume")


def _trial(trial_id):
    return SimpleNamespace(trial_id=trial_id)


def _result(evaluation, acc, ood):
    return {"evaluation": evaluation, "id_val_acc": acc, "ood_mean": ood}


def test_rung_decisions_on_hand_built_results():
    scheduler = MultiObjectiveASHA(["id_val_acc", "ood_mean"], ["max", "max"], grace_period=1, reduction_factor=3, max_t=6)
    assert scheduler.levels == [1, 3]
    on = lambda tid, t, a, o: scheduler.on_trial_result(None, _trial(tid), _result(t, a, o))  # noqa: E731
    # rung 1 holds n trials; a newcomer goes on if it ranks in the top ceil(n / 3)
    assert on("a", 1, 0.5, 0.5) == TrialScheduler.CONTINUE  # n=1, keep 1: the first always goes on
    assert on("b", 1, 0.4, 0.4) == TrialScheduler.STOP  # n=2, keep 1, dominated by a
    assert on("c", 1, 0.6, 0.3) == TrialScheduler.CONTINUE  # n=3, keep 1: front {a, c}, c has the best ID
    assert on("d", 1, 0.9, 0.9) == TrialScheduler.CONTINUE  # n=4, keep 2: d dominates everyone
    assert on("e", 1, 0.1, 0.95) == TrialScheduler.CONTINUE  # n=5, keep 2: front {d, e}, e second (farthest from d)
    assert on("f", 1, 0.2, 0.2) == TrialScheduler.STOP  # n=6, keep 2: last front
    assert on("a", 2, 0.55, 0.5) == TrialScheduler.CONTINUE  # between rungs: nothing to decide
    assert on("a", 3, 0.55, 0.5) == TrialScheduler.CONTINUE  # first at rung 3
    assert on("d", 3, 0.5, 0.45) == TrialScheduler.STOP  # n=2 at rung 3, keep 1: a dominates it now
    assert on("c", 6, 0.1, 0.1) == TrialScheduler.STOP  # max_t reached
    assert scheduler.on_trial_result(None, _trial("g"), {"evaluation": 1}) == TrialScheduler.CONTINUE  # no metrics
    assert [d["rung_size"] for d in scheduler.log] == [1, 2, 3, 4, 5, 6, 1, 2]


def test_minimised_metrics_are_ranked_the_right_way_round():
    scheduler = MultiObjectiveASHA(["acc", "loss"], ["max", "min"], grace_period=1, reduction_factor=2, max_t=4)
    on = lambda tid, a, loss: scheduler.on_trial_result(None, _trial(tid), {"evaluation": 1, "acc": a, "loss": loss})  # noqa: E731
    assert on("a", 0.5, 1.0) == TrialScheduler.CONTINUE
    assert on("b", 0.5, 2.0) == TrialScheduler.STOP  # same accuracy, larger loss: dominated
    assert on("c", 0.5, 0.5) == TrialScheduler.CONTINUE  # n=3, keep 2: c dominates a and b


def test_state_file_survives_a_restart_and_a_pickle_round_trip(tmp_path):
    state = tmp_path / "scheduler.json"
    make = lambda: MultiObjectiveASHA(["x", "y"], ["max", "max"], grace_period=1, reduction_factor=3, max_t=9,  # noqa: E731
                                      state_file=state)
    first = make()
    pickled = pickle.dumps(first)  # what Tune stores when the sweep starts: empty rungs
    for tid, value in [("a", 0.9), ("b", 0.8), ("c", 0.1)]:
        first.decide(tid, 1, [value, value])
    assert first.decisions[(1, "c")] is False
    restored = pickle.loads(pickled)  # what Tuner.restore hands back: reloads the rungs from the file
    assert restored.rungs[1] == first.rungs[1] and restored.log == first.log
    assert restored.decide("c", 1, [5.0, 5.0]) is False  # a re-report after a crash gets its old answer
    assert restored.decide("d", 1, [0.05, 0.05]) is False  # judged against the restored rung, not an empty one
    fresh = MultiObjectiveASHA(["x", "y"], ["max", "max"], grace_period=1, reduction_factor=3, max_t=9)
    assert fresh.decide("d", 1, [0.05, 0.05]) is True  # (an empty rung would have let it go on)
    assert make().rungs[1].keys() == {"a", "b", "c", "d"}
    with pytest.raises(DataError, match="do not match"):
        MultiObjectiveASHA(["x", "y"], ["max", "max"], grace_period=2, reduction_factor=3, max_t=9, state_file=state)
