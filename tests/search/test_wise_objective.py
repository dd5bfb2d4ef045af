"""A WiSE-aware objective: trials scored by the best point of their own WiSE-FT curve."""

import json

import pytest
from helpers import records, tiny_space, train_run, write_space, train_config

from robusttune.config import parse
from robusttune.errors import ConfigError
from robusttune.metrics import WISE_ALPHA, WISE_CURVE
from robusttune.space import SearchSpace

RAW = {"id_val_acc": 0.90, "id_acc": 0.91, "ood_mean": 0.70}


def objective(**wise):
    data = {"objective": {"metrics": ["id_val_acc", "ood_mean"], "directions": ["max", "max"],
                          "scalarization": {"kind": "weighted_sum", "weights": [0.5, 0.5]}, **wise}}
    return parse(SearchSpace, data, "space").objective


def test_the_curves_best_point_under_the_scalarisation_is_reported_beside_the_trials_own_metrics():
    plain, wise = objective(), objective(wise={"alphas": [0.3, 0.5]})
    assert plain.keys == ("id_val_acc", "ood_mean") and plain.reported(RAW) == RAW
    assert wise.keys == ("wise_id_val_acc", "wise_ood_mean")
    curve = [{"alpha": 0.3, "id_val_acc": 0.80, "id_acc": 0.81, "ood_mean": 0.84},   # scalar 0.820
             {"alpha": 0.5, "id_val_acc": 0.86, "id_acc": 0.87, "ood_mean": 0.80}]   # scalar 0.830 (raw: 0.800)
    reported = wise.reported(RAW, curve)
    assert {k: reported[k] for k in RAW} == RAW  # the trial's own metrics unchanged
    assert reported["wise_id_val_acc"] == 0.86 and reported["wise_ood_mean"] == 0.80 and reported["wise_id_acc"] == 0.87
    assert reported[WISE_ALPHA] == 0.5 and wise.scalar(reported) == pytest.approx(0.83)
    # a curve no better than the raw weights: alpha 1, the raw weights' own values
    worse = [{"alpha": 0.5, "id_val_acc": 0.5, "id_acc": 0.5, "ood_mean": 0.5}]
    assert wise.reported(RAW, worse)[WISE_ALPHA] == 1.0 and wise.reported(RAW, worse)["wise_ood_mean"] == 0.70
    tie = [{"alpha": 0.3, **RAW}, {"alpha": 0.5, **RAW}]  # equals: the raw weights, then the higher alpha
    assert wise.reported(RAW, tie)[WISE_ALPHA] == 1.0
    assert wise.reported({**RAW, "ood_mean": 0.0}, tie)[WISE_ALPHA] == 0.5
    chebyshev = objective(wise={"alphas": [0.3, 0.5]}, scalarization={"kind": "chebyshev", "weights": [0.5, 0.5]})
    balanced = [{**curve[0], "id_val_acc": 0.82}, curve[1]]  # weighted sum 0.830 at both; worst term 0.41 vs 0.40
    assert chebyshev.reported(RAW, balanced)[WISE_ALPHA] == 0.3 and wise.reported(RAW, balanced)[WISE_ALPHA] == 0.5


@pytest.mark.parametrize("alphas, says", [([], "at least 1"), ([0.5, 1.0], "alpha 1"), ([1.5], "in [0, 1]"),
                                          ([0.5, 0.5], "repeat")])
def test_bad_wise_alphas_are_refused_in_one_line(alphas, says):
    with pytest.raises(ConfigError) as error:
        objective(wise={"alphas": alphas})
    assert says in str(error.value) and "\n" not in str(error.value)


def test_the_probe_measures_each_evaluations_curve_and_leaves_the_run_bit_identical(tiny_prepared):
    from robusttune.training.evaluate import Evaluator
    from robusttune.training.wise import WiseProbe, wise_curve

    config = train_config(steps=4, batch_size=16, eval_every=2, eval_batch_size=128, lr=1e-3, region="object",
                         refill="single", mask_threshold=0.3)
    _, plain = train_run(tiny_prepared, config)
    student, probed = train_run(tiny_prepared, config, probe=WiseProbe((0.0, 0.5)))
    assert [r["metrics"] for r in probed.history] == [r["metrics"] for r in plain.history]
    assert [r["loss_distill"] for r in probed.history] == [r["loss_distill"] for r in plain.history]
    assert WISE_CURVE not in plain.history[-1]
    for row in probed.history:
        assert [point["alpha"] for point in row[WISE_CURVE]] == [0.0, 0.5]
    zero_shot = tiny_prepared.classifier()
    task = tiny_prepared.task()
    evaluator = Evaluator(task.eval_sets, batch_size=128)
    again = wise_curve(zero_shot, zero_shot.state_dict(), student.state_dict(), evaluator, alphas=(0.0, 0.5))
    assert probed.history[-1][WISE_CURVE] == again  # the final weights' curve, from the zero-shot start
    assert again[0] == {"alpha": 0.0, **evaluator(tiny_prepared.classifier())}  # alpha 0 is the zero-shot model


@pytest.mark.slow
def test_a_wise_aware_sweep_is_searched_scheduled_and_fronted_on_the_curves_best_point(
        tmp_path, tiny_world_config, tiny_prepared, cache_dir, ray_local):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    import robusttune as rt
    from robusttune.experiment import trial_files
    from robusttune.search.trainable import TrainingRunner
    from robusttune.training.checkpoint import load_checkpoint

    space = tiny_space(tiny_world_config, budget={"trials": 4, "concurrency": 1},
                       objective={"metrics": ["id_val_acc", "ood_mean"], "directions": ["max", "max"],
                                  "wise": {"alphas": [0.3, 0.6]}},
                       parameters={"lr": {"type": "float", "low": 1e-4, "high": 0.05, "log": True}},
                       scheduler={"name": "mo_asha", "grace_period": 1, "reduction_factor": 2})
    space["fixed"].pop("lr")
    result = rt.sweep(write_space(tmp_path / "wise.yaml", space), storage=tmp_path, name="wise", verbose=0,
                      cache_dir=cache_dir, runner=TrainingRunner(cache_dir, baselines=False))
    experiment = tmp_path / "wise"
    parsed = result.space
    evaluations = [r for r in records(experiment) if r.get("evaluation") and r.get("status") != "failed"]
    assert evaluations
    for row in evaluations:  # every report: the curve's best point, from the history kept in the checkpoint
        history = json.loads(load_checkpoint(trial_files(experiment, row["trial_id"]).latest)["history"])
        kept = next(h for h in history if h["step"] == row["step"])
        expected = parsed.objective.reported(kept["metrics"], kept[WISE_CURVE])
        assert {k: row[k] for k in expected} == pytest.approx(expected)
        assert row["objective"] == pytest.approx(parsed.objective.scalar(row))
    assert {r[WISE_ALPHA] for r in evaluations} <= {0.3, 0.6, 1.0}
    assert any(r[WISE_ALPHA] < 1 for r in evaluations), "no curve beat its raw weights in this seeded sweep"
    study = optuna.load_study(study_name="wise", storage=JournalStorage(JournalFileBackend(str(experiment / "optuna.journal"))))
    finals = {r["trial_id"]: r for r in records(experiment) if r.get("final")}
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert complete and all(any(t.values == [f["wise_id_val_acc"], f["wise_ood_mean"]] for f in finals.values())
                            for t in complete)  # Optuna was told the curve's best point
    assert result.pareto and all(r["status"] == "complete" for r in result.pareto)
    front = {r["trial_id"] for r in result.pareto}
    for trial, row in finals.items():  # the front is by the WiSE keys: no complete trial dominates a front one there
        if trial in front:
            assert not any(o["status"] == "complete" and o["wise_id_val_acc"] >= row["wise_id_val_acc"]
                           and o["wise_ood_mean"] >= row["wise_ood_mean"]
                           and (o["wise_id_val_acc"], o["wise_ood_mean"]) != (row["wise_id_val_acc"], row["wise_ood_mean"])
                           for o in finals.values())
