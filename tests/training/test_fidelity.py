"""Fidelity knobs and lean checkpoints: train_subset, eval_subset, the checkpoints policy."""

import json

import pytest
import torch

from helpers import train_config
from robusttune.config import ConfigError, TrainConfig, parse
from robusttune.data.sets import DatasetImages, class_subset, fixed_subset, restrict
from robusttune.models.classifier import frozen_copy
from robusttune.training.checkpoint import keep_checkpoints, load_checkpoint, save_checkpoint
from robusttune.training.loop import train
from robusttune.training.run import with_train_subset

SMALL = dict(steps=4, batch_size=16, eval_every=2, eval_batch_size=64, lr=1e-3, region="object", refill="single")


def test_train_subset_is_per_class_seeded_and_the_same_for_every_trial(tiny_prepared):
    task = tiny_prepared.task()
    labels = task.train.labels
    for spec, expected in ((3, lambda n: min(3, n)), (0.25, lambda n: max(1, round(0.25 * n)))):
        first = with_train_subset(task, train_config(train_subset=spec, seed=0))
        again = with_train_subset(task, train_config(train_subset=spec, seed=7))  # another trial seed: the same images
        assert torch.equal(first.train.images, again.train.images) and torch.equal(first.train.labels, again.train.labels)
        counts = torch.bincount(first.train.labels, minlength=10)
        assert counts.tolist() == [expected(int((labels == c).sum())) for c in range(10)]
    positions = class_subset(labels, 3)
    assert torch.equal(with_train_subset(task, train_config(train_subset=3)).train.labels, labels[positions])
    assert with_train_subset(task, train_config()).train is task.train
    with pytest.raises(ConfigError, match="train_subset: must be a whole number of images per class"):
        parse(TrainConfig, {"train_subset": 2.5}, "train")


def test_subsets_of_disk_sources_keep_images_and_labels_together(tiny_prepared):
    source = DatasetImages(tiny_prepared.task().train)  # the map-style path (folders, packs)
    positions = fixed_subset(len(source), 20)
    assert torch.equal(positions, fixed_subset(len(source), 20)) and len(positions.unique()) == 20
    subset = restrict(source, positions)
    images, labels = subset.batch(torch.arange(20))
    expected_images, expected_labels = source.batch(positions)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    assert torch.equal(subset.labels, expected_labels)
    assert torch.equal(fixed_subset(10, 50), torch.arange(10))


def test_eval_subset_for_intermediate_evaluations_and_full_sets_for_the_last(tiny_prepared):
    student = tiny_prepared.classifier()
    task = tiny_prepared.task()
    result = train(train_config(**SMALL, eval_subset=50), student, frozen_copy(student), task)
    intermediate, last = result.history
    assert intermediate["eval_subset"] == 50 and set(intermediate["eval_images"].values()) == {50}
    assert "eval_subset" not in last and last["eval_images"] == {s.metric: len(s) for s in task.eval_sets}
    plain = tiny_prepared.classifier()
    reference = train(train_config(**SMALL), plain, frozen_copy(plain), task)
    assert last["metrics"] == reference.history[-1]["metrics"]  # the subset only changes what is measured, not training


def test_best_metrics_never_mix_subset_and_full_evaluations(tmp_path):
    from robusttune.analysis import results

    cfg = {"region": "object", "seed": 0}
    rows = [  # the subset evaluation scores higher, but it was measured on other images than the full one
        {"trial_id": "a", "status": "running", "step": 50, "evaluation": 1, "id_acc": 0.99, "ood_mean": 0.9,
         "objective": 0.95, "eval_subset": 100, "sampled": cfg},
        {"trial_id": "a", "status": "running", "step": 100, "evaluation": 2, "id_acc": 0.9, "ood_mean": 0.8,
         "objective": 0.85, "sampled": cfg},
        {"trial_id": "a", "status": "complete", "step": 100, "evaluation": 2, "id_acc": 0.9, "ood_mean": 0.8,
         "objective": 0.85, "sampled": cfg, "final": True},
    ]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = results.trials(tmp_path).set_index("trial_id").loc["a"]
    assert a["best_objective"] == 0.85 and a["best_step"] == 100


@pytest.mark.parametrize("keep", ["best", "final", "all"])
def test_checkpoints_policy(tiny_prepared, tmp_path, keep):
    student = tiny_prepared.classifier()
    states = []
    train(train_config(**SMALL), student, frozen_copy(student), tiny_prepared.task(), save_checkpoint=states.append)
    save_checkpoint(tmp_path / "latest.pt", states[-1])
    save_checkpoint(tmp_path / "best.pt", {"model": states[0]["model"], "step": 2, "config": states[0]["config"]})
    (tmp_path / "best.json").write_text("{}")
    before = (tmp_path / "latest.pt").stat().st_size
    keep_checkpoints(tmp_path, keep)
    latest = load_checkpoint(tmp_path / "latest.pt")
    assert ("optimizer" in latest) == (keep == "all")
    assert all(torch.equal(v, states[-1]["model"][k]) for k, v in latest["model"].items())
    assert latest["step"] == 4 and json.loads(latest["history"])[-1]["step"] == 4  # still enough to re-report
    assert (tmp_path / "best.pt").is_file() == (keep != "final")
    if keep != "all":
        assert (tmp_path / "latest.pt").stat().st_size < 0.5 * before  # AdamW keeps two tensors per weight
