"""``status`` on an experiment's records: the front's ties and the confirmation's runs, without Ray."""

from helpers import invoke

import robusttune as rt
from robusttune.experiment import append_record, write_manifest
from robusttune.space import load_space


def test_status_names_front_trials_the_noise_cannot_order_and_counts_confirmation_runs(tmp_path, cache_dir):
    space, text = load_space("demo")
    experiment = tmp_path / "exp"
    experiment.mkdir()
    write_manifest(experiment, space, text, seed=0, trials=3, concurrency=1, runner={"kind": "train"})
    sizes = {"id_val_acc": 200, "ood_a": 1000, "ood_b": 1000}
    for trial, val, ood in (("a", 0.900, 0.700), ("b", 0.895, 0.703), ("c", 0.850, 0.760)):  # a, b: one image apart
        append_record(experiment, {"trial_id": trial, "status": "complete", "step": 150, "final": True, "id_val_acc": val,
                                   "ood_a": ood, "ood_b": ood, "ood_mean": ood, "eval_images": sizes})
    append_record(experiment, {"kind": "confirm", "config_key": "k", "source": "a", "seed": 1, "alpha": None,
                               "status": "failed", "failure": "non-finite loss"})
    found = rt.status(experiment)
    assert found.ties == {"a": ["b"], "b": ["a"], "c": []}
    assert found.confirmation == {"runs": 1, "failed": 1, "curve_points": 0}
    said = invoke("status", experiment, cache_dir=cache_dir)
    assert said.returncode == 0 and "cannot order (within each other's 95% intervals): a ~ b" in said.stdout
    assert "confirmation: 1 run(s) recorded (1 failed)" in said.stdout
