"""The default world's tiny CLIP ships as package data; it must still give its documented accuracy."""

import pytest

from robusttune.config import default_world
from robusttune.models.tiny import read_sidecar
from robusttune.training.world import SHIPPED_WEIGHTS, prepare_world, world_key


def test_shipped_weights_reproduce_the_documented_zero_shot_accuracy(cache_dir):
    from robusttune.training.evaluate import evaluate

    meta = read_sidecar(SHIPPED_WEIGHTS)
    assert meta["world_key"] == world_key(default_world()), "shipped weights belong to another world config"
    prepared = prepare_world(default_world(), cache_dir)
    assert prepared.source == "shipped"
    measured = evaluate(prepared.classifier(), prepared.task().eval_sets)
    for metric, documented in meta["zero_shot"].items():
        assert measured[metric] == pytest.approx(documented, abs=0.005), metric
    # the world is the one that shows the paper's setting: a strong zero-shot model with a real OOD gap
    assert measured["id_acc"] > 0.9 and measured["ood_style"] < measured["id_acc"] - 0.1
