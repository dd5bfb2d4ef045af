import time

import torch

from robusttune.config import WorldConfig, tiny_test_world
from robusttune.data.mini import digits
from robusttune.data.mini.world import _generator, build_world, load_world, world_dir


def test_splits_have_the_configured_sizes_and_balanced_classes(default_world_data):
    world = default_world_data
    config = world.config
    assert len(world.train) == config.n_train and len(world.test) == config.n_test
    assert len(world.val) == config.n_val * config.val_renders >= 1000  # one image is at most 0.1 point
    assert set(world.ood) == {"background", "source", "style"}
    assert world.train.images.shape[1:] == (3, 24, 24) and world.train.images.dtype == torch.uint8
    for image_set in [world.train, world.test, *world.ood.values()]:
        counts = torch.bincount(image_set.labels, minlength=10).float()
        assert counts.min() >= 0.6 * counts.mean(), (image_set.name, counts)


def test_background_shortcut_only_in_id_data(default_world_data):
    world = default_world_data
    own = {name: float((s.textures == s.labels).float().mean()) for name, s in
           [("train", world.train), ("test", world.test), *world.ood.items()]}
    assert abs(own["train"] - 0.9) < 0.03 and abs(own["test"] - 0.9) < 0.03
    assert own["background"] == 0.0  # never the class's own texture
    assert abs(own["source"] - 0.1) < 0.04 and abs(own["style"] - 0.1) < 0.04  # uniform


def test_digit_pools_are_disjoint():
    config = WorldConfig()
    pools = _generator(config, "pools")
    parts = digits.split_indices(5000, [config.n_pretrain_mnist, config.n_train, config.n_val, config.n_test], pools)
    flat = torch.cat(parts)
    assert len(flat) == len(torch.unique(flat)) == 5000
    uci = digits.split_indices(1797, [config.n_pretrain_uci, config.n_ood_source], pools)
    assert len(torch.unique(torch.cat(uci))) == config.n_pretrain_uci + config.n_ood_source


def test_world_is_deterministic_under_its_seed(cache_dir):
    config = tiny_test_world()
    first, second = build_world(config, cache_dir), build_world(config, cache_dir)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.ood["style"].images, second.ood["style"].images)
    other = build_world(config.model_copy(update={"seed": 2}), cache_dir)
    assert not torch.equal(first.train.images, other.train.images)


def test_world_cache_is_reused_and_corruption_is_regenerated(cache_dir):
    config = tiny_test_world().model_copy(update={"seed": 11})
    started = time.perf_counter()
    built = load_world(config, cache_dir)
    build_s = time.perf_counter() - started
    path = world_dir(config, cache_dir) / "data.pt"
    assert path.is_file()
    started = time.perf_counter()
    again = load_world(config, cache_dir)
    assert time.perf_counter() - started < build_s / 2  # read back, not generated again (relative: a loaded machine)
    assert torch.equal(built.val.images, again.val.images)
    path.write_bytes(b"not a checkpoint")
    regenerated = load_world(config, cache_dir)
    assert torch.equal(built.val.images, regenerated.val.images)


def test_uci_glyphs_differ_in_style_from_mnist(cache_dir):
    mnist, _ = digits.load_mnist(cache_dir)
    uci, labels = digits.load_uci()
    assert uci.shape == (1797, 28, 28) and mnist.shape == (5000, 28, 28)
    assert float(uci[:, :4].abs().sum()) == 0.0  # padded border
    assert set(labels.tolist()) == set(range(10))


def test_validation_renders_repeat_each_held_out_digit_with_fresh_draws_and_touch_nothing_else(cache_dir):
    from robusttune.training.world import world_key

    once = tiny_test_world()
    thrice = once.model_copy(update={"val_renders": 3})
    a, b = build_world(once, cache_dir), build_world(thrice, cache_dir)
    n = once.n_val
    assert len(b.val) == 3 * n and torch.equal(b.val.labels, a.val.labels.repeat(3))
    for first, second in [(0, 1), (1, 2)]:  # the same digits, drawn again: other textures, colours or poses
        assert not torch.equal(b.val.images[first * n:(first + 1) * n], b.val.images[second * n:(second + 1) * n])
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert torch.equal(a.ood["style"].images, b.ood["style"].images)
    assert world_key(once) == world_key(thrice)  # the pre-trained weights stay valid
    assert once.data_key() != thrice.data_key()  # the cached images do not


def test_shipped_zero_shot_figures_are_those_of_the_default_worlds_images(default_world_data):
    import json

    from robusttune.training.world import SHIPPED_WEIGHTS, world_key

    meta = json.loads(SHIPPED_WEIGHTS.with_suffix(".json").read_text())
    assert meta["world_key"] == world_key(WorldConfig())
    assert WorldConfig.model_validate(meta["world"]).data_key() == WorldConfig().data_key()


def test_worlds_differing_in_validation_renders_share_the_weights_and_measure_their_own_zero_shot(
        tiny_prepared, tiny_world_config, cache_dir):
    from robusttune.training.evaluate import evaluate
    from robusttune.training.world import prepare_world

    twice = prepare_world(tiny_world_config.model_copy(update={"val_renders": 2}), cache_dir)
    assert twice.weights == tiny_prepared.weights and twice.source == "cache"  # not pre-trained again
    assert len(twice.world.val) == 2 * len(tiny_prepared.world.val)
    assert twice.zero_shot == evaluate(twice.classifier(), twice.task().eval_sets)
    assert twice.zero_shot["id_acc"] == tiny_prepared.zero_shot["id_acc"]  # the test split is the same
