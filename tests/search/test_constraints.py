"""Constraints in the objective: validated at load (one line, exit 2), the values Optuna's study stores, an
infeasible result ranked below every feasible one by the scalar objective (ASHA) and by MO-ASHA."""

from types import SimpleNamespace

import pytest

from helpers import assert_one_line_exit_2, invoke, write_space


def space_with(constraints, **objective):
    return {"name": "c", "objective": {"metrics": ["ood_mean"], "directions": ["max"], "constraints": constraints, **objective},
            "parameters": {"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}}


@pytest.mark.parametrize("constraints, said", [
    (["id_val_ac >= 0.5"], "unknown metric 'id_val_ac' (did you mean 'id_val_acc'?)"),
    (["id_val_acc >= zero_shoot + 1"], "unknown reference 'zero_shoot' (did you mean 'zero_shot'?)"),
    (["id_val_acc >= zero_shot + 1.0", "id_val_acc <= zero_shot - 1.0"], "contradict each other"),
    (["id_acc >= 0.9", "id_acc <= 0.8"], "contradict each other"),
    (["id_acc >= 80"], "a fraction in [0, 1]"),
    (["id_acc > 0.8"], "use >= or <="),
    (["ood_nowhere >= 0.1"], "metric 'ood_nowhere' is not reported by this task"),
])
def test_bad_constraints_are_refused_at_load_in_one_line(tmp_path, constraints, said):
    result = invoke("plan", write_space(tmp_path / "c.yaml", space_with(constraints)))
    assert_one_line_exit_2(result, said)


def test_a_bound_resolves_against_the_references_and_values_follow_optunas_convention():
    from robusttune.constraints import parse_constraints, references_from_rows, values, violation

    rows = [{"kind": "baseline", "method": "zero-shot", "id_val_acc": 0.60}, {"kind": "baseline", "method": "vanilla-ft",
                                                                             "id_val_acc": 0.80, "ood_mean": 0.40}]
    refs = references_from_rows(rows)
    bounds = parse_constraints(["id_val_acc >= zero_shot + 1.0", "ood_mean >= vanilla_ft - 2", "id_val_acc <= 0.75"])
    assert [b.bound(refs) for b in bounds] == pytest.approx([0.61, 0.38, 0.75])
    found = values(bounds, {"id_val_acc": 0.70, "ood_mean": 0.37}, refs)
    assert found == pytest.approx([-0.09, 0.01, -0.05]) and violation(found) == pytest.approx(0.01)
    with pytest.raises(LookupError, match="vanilla_ft's ood_mean"):
        parse_constraints(["ood_mean >= vanilla_ft"])[0].bound({"zero_shot": {"ood_mean": 0.4}})


def test_an_infeasible_scalar_lies_below_every_feasible_one_and_mo_asha_stops_it():
    from robusttune.constraints import score
    from robusttune.search.mo_asha import MultiObjectiveASHA
    from robusttune.space import Objective

    objective = Objective.model_validate({"metrics": ["id_val_acc", "ood_mean"], "directions": ["max", "min"],
                                          "scalarization": {"weights": [3.0, 1.0]}, "constraints": ["id_val_acc <= 0.9"]})
    worst_feasible = score(objective, {"id_val_acc": 0.0, "ood_mean": 1.0})
    assert worst_feasible["objective"] == pytest.approx(-1.0) and worst_feasible["constraint_violation"] == 0
    barely = score(objective, {"id_val_acc": 0.9001, "ood_mean": 0.0})
    farther = score(objective, {"id_val_acc": 1.0, "ood_mean": 0.0})
    assert farther["objective"] < barely["objective"] < worst_feasible["objective"]
    assert barely["constraints"] == [pytest.approx(0.0001)]

    scheduler = MultiObjectiveASHA(["id_val_acc", "ood_mean"], ["max", "max"], grace_period=1, reduction_factor=2, max_t=4)
    result = {"evaluation": 1, "id_val_acc": 0.5, "ood_mean": 0.3}
    keep = scheduler.on_trial_result(None, SimpleNamespace(trial_id="poor"), result)
    stop = scheduler.on_trial_result(None, SimpleNamespace(trial_id="great-but-infeasible"),
                                     {"evaluation": 1, "id_val_acc": 0.99, "ood_mean": 0.9, "constraint_violation": 0.05})
    assert (keep, stop) == ("CONTINUE", "STOP")  # without the violation the second would dominate the first


def test_the_study_stores_each_trials_constraint_values_and_its_samplers_see_them(tmp_path):
    import optuna

    from robusttune.search.adapters import RobustOptunaSearch
    from robusttune.search.samplers import make_sampler
    from robusttune.space import SearchSpace

    space = SearchSpace.model_validate({**space_with(["id_val_acc >= 0.7"]), "sampler": {"name": "tpe", "seed": 0}})
    searcher = RobustOptunaSearch(space=space.define_by_run, metric="ood_mean", mode="max", sampler=make_sampler(space, 0))
    searcher.constraint_names = ("id_val_acc >= 0.7",)
    for trial_id, id_val, step in (("a", 0.6, 4), ("b", 0.8, 4), ("c", 0.9, 2)):
        assert searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, {"ood_mean": 0.9 if trial_id == "a" else 0.5, "id_val_acc": id_val, "step": step,
                                              "total_steps": 4, "constraints": [0.7 - id_val],
                                              "constraint_violation": max(0, 0.7 - id_val)})
    study = searcher._ot_study
    stored = {t.number: (t.state, t.system_attrs["constraints:id_val_acc >= 0.7"], t.constraints) for t in study.trials}
    assert stored[0][0] == optuna.trial.TrialState.COMPLETE and stored[0][1] == pytest.approx(-0.1 + 0.2)
    assert stored[1][2] == {"id_val_acc >= 0.7": pytest.approx(-0.1)} and stored[2][0] == optuna.trial.TrialState.PRUNED
    assert stored[2][1] == pytest.approx(-0.2)  # a stopped trial keeps the values of its last report
    # Optuna's own reading: trial 0 has the best OOD, but it is infeasible
    assert study.best_trial.number == 1


def test_the_replay_comparison_refuses_a_bad_constraint_in_one_line():
    import subprocess
    import sys

    from helpers import ROOT

    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "constraints_replay.py"), "--constraint",
                             "id_val_acc >= zero_shoot"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert_one_line_exit_2(result, "constraints_replay: constraint 'id_val_acc >= zero_shoot': unknown reference")
