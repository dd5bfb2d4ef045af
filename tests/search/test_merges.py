"""The post-hoc merges of a sweep's models, on an experiment of real tiny-world fine-tuning runs."""

import pytest
import yaml
from helpers import records, tiny_space, train_run, train_config



@pytest.fixture(scope="module")
def merged_experiment(tmp_path_factory, tiny_world_config, tiny_prepared):
    """Three complete 'trials' (real 2-step runs with other learning rates) and a stopped one, as a sweep leaves them."""
    from robusttune.experiment import append_record, trial_files
    from robusttune.training.checkpoint import save_checkpoint

    experiment = tmp_path_factory.mktemp("merges") / "exp"
    experiment.mkdir()
    trials = {}
    for trial, (lr, status, val) in {"t1": (1e-3, "complete", 0.90), "t2": (3e-3, "complete", 0.95),
                                     "t3": (1e-4, "complete", 0.93), "t4": (2e-3, "stopped-early", 0.99)}.items():
        student, _ = train_run(tiny_prepared, train_config(steps=2, batch_size=16, eval_batch_size=128, lr=lr,
                                                          region="none", w_distill=0.0))
        trials[trial] = {k: v.detach().clone() for k, v in student.state_dict().items()}
        save_checkpoint(trial_files(experiment, trial).latest, {"model": trials[trial]})
        append_record(experiment, {"trial_id": trial, "status": status, "id_val_acc": val, "final": True})
    return experiment, trials, yaml.safe_dump(tiny_space(tiny_world_config))


def test_each_merge_is_made_of_the_sweeps_complete_trials_by_its_rule_and_recorded_once(
        merged_experiment, tiny_prepared, cache_dir):
    from robusttune.method.merge import model_stock, uniform_soup
    from robusttune.search.merges import run_merges
    from robusttune.training.evaluate import Evaluator, evaluate_state_dict

    experiment, trials, text = merged_experiment
    assert run_merges(experiment, text, cache_dir, cpu=2, gpu=0, use_ray=False) == 3
    rows = {r["method"]: r for r in records(experiment, trials_only=False) if r.get("kind") == "merge"}
    assert set(rows) == {"uniform_soup", "greedy_soup", "model_stock"}
    student, task = tiny_prepared.classifier(), tiny_prepared.task()
    evaluator = Evaluator(task.eval_sets, batch_size=128)
    soup = uniform_soup([trials[t] for t in ("t2", "t3", "t1")])  # the stopped trial is left out
    assert rows["uniform_soup"]["members"] == ["t2", "t3", "t1"]
    expected = evaluate_state_dict(student, soup, evaluator)
    assert {k: rows["uniform_soup"][k] for k in expected} == pytest.approx(expected)
    assert rows["model_stock"]["members"] == ["t2", "t3"]  # the two best by recorded ID validation accuracy
    stock, _ = model_stock(tiny_prepared.classifier().state_dict(), [trials["t2"], trials["t3"]])
    expected = evaluate_state_dict(student, stock, evaluator)
    assert {k: rows["model_stock"][k] for k in expected} == pytest.approx(expected)
    greedy = rows["greedy_soup"]
    assert [d["name"] for d in greedy["decisions"]] == ["t2", "t3", "t1"]  # decreasing recorded accuracy
    best = greedy["decisions"][0]["soup_accuracy"]
    assert best == 0.95
    for decision in greedy["decisions"][1:]:  # kept exactly when the soup's ID val accuracy did not drop
        assert decision["kept"] == (decision["soup_accuracy"] >= decision["best_before"])
    assert greedy["members"] == [d["name"] for d in greedy["decisions"] if d["kept"]]
    assert all(rows[m]["eval_images"]["id_val_acc"] == len(task.eval_sets[0]) for m in rows)
    assert run_merges(experiment, text, cache_dir, cpu=2, gpu=0, use_ray=False) == 0  # nothing computed twice
    from robusttune.api.sweeps import recorded_merges

    assert recorded_merges(experiment) == {m: rows[m]["members"] for m in rows}  # what status shows


def test_model_stock_is_skipped_with_a_warning_when_one_trial_is_complete(tmp_path, tiny_world_config, tiny_prepared,
                                                                          cache_dir, caplog):
    from robusttune.experiment import append_record, trial_files
    from robusttune.search.merges import compute_merge
    from robusttune.training.checkpoint import save_checkpoint

    save_checkpoint(trial_files(tmp_path, "only").latest, {"model": tiny_prepared.classifier().state_dict()})
    append_record(tmp_path, {"trial_id": "only", "status": "complete", "id_val_acc": 0.9})
    text = yaml.safe_dump(tiny_space(tiny_world_config))
    assert compute_merge(str(tmp_path), text, str(cache_dir), "model_stock", 1) == 0
    assert "model_stock skipped: it needs 2 complete trial(s), the experiment has 1" in caplog.text
    assert not [r for r in records(tmp_path, trials_only=False) if r.get("kind") == "merge"]
