"""Post-hoc merges (robusttune.method.merge) against their definitions, on fixed tensors."""

import pytest
import torch

from robusttune.method.merge import add_to_soup, greedy_soup, model_stock, stock_ratio, uniform_soup


def states(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g), "count": torch.tensor(i)}
            for i in range(n)]


def test_the_uniform_soup_is_the_average_of_the_weights():
    models = states(3)
    soup = uniform_soup(models)
    assert torch.allclose(soup["w"], (models[0]["w"] + models[1]["w"] + models[2]["w"]) / 3, atol=1e-6)
    assert torch.allclose(soup["b"], torch.stack([m["b"] for m in models]).mean(0), atol=1e-6)
    assert soup["count"] == 0 and soup["w"].dtype == torch.float32  # integer buffers: the first model's
    with pytest.raises(ValueError, match="different weights"):
        uniform_soup([models[0], {"w": models[1]["w"]}])


def test_adding_ingredients_one_by_one_gives_the_uniform_soup():
    models = states(4, seed=1)
    soup = dict(models[0])
    for size, model in enumerate(models[1:], start=1):
        soup = add_to_soup(soup, size, model)
    assert torch.allclose(soup["w"], uniform_soup(models)["w"], atol=1e-6)


def test_the_greedy_soup_follows_its_rule_on_the_recorded_accuracies():
    # one scalar weight per model; a soup's held-out accuracy peaks where its weight is 1.0
    values = {"a": 1.2, "b": 0.9, "c": 3.0, "d": 0.8}
    recorded = [("a", 0.95), ("b", 0.94), ("c", 0.93), ("d", 0.90)]  # tried in this order (decreasing)
    load = lambda name: {"w": torch.tensor([values[name]], dtype=torch.float64)}  # noqa: E731
    held_out = lambda state: 1.0 - abs(float(state["w"][0]) - 1.0)  # noqa: E731
    soup, kept, decisions = greedy_soup(recorded, load, held_out)
    # a alone: 0.8 (its soup starts at its recorded 0.95); a+b = 1.05 -> 0.95 kept (equal: not a drop);
    # +c = 1.7 -> 0.3 rejected; +d = (1.2+0.9+0.8)/3 = 0.9667 -> 0.9667 >= 0.95 kept
    assert kept == ["a", "b", "d"] and [d["kept"] for d in decisions] == [True, True, False, True]
    assert float(soup["w"][0]) == pytest.approx((1.2 + 0.9 + 0.8) / 3)
    assert decisions[2]["soup_accuracy"] == pytest.approx(0.3) and decisions[3]["best_before"] == pytest.approx(0.95)
    strict_soup, strict_kept, _ = greedy_soup(recorded, load, held_out, strict=True)  # the official script's '>'
    assert strict_kept == ["a", "d"] and float(strict_soup["w"][0]) == pytest.approx(1.0)


def test_model_stock_pulls_the_average_toward_the_start_by_the_updates_angle():
    w0 = {"w": torch.zeros(2), "n": torch.tensor(7)}
    same = {"w": torch.tensor([1.0, 0.0])}
    merged, ratios = model_stock(w0, [{**w0, **same}, {**w0, **same}])
    assert ratios["w"] == pytest.approx(1.0) and torch.allclose(merged["w"], same["w"])  # cos 1: t = 1
    merged, ratios = model_stock(w0, [{**w0, "w": torch.tensor([1.0, 0.0])}, {**w0, "w": torch.tensor([0.0, 1.0])}])
    assert ratios["w"] == 0.0 and torch.equal(merged["w"], w0["w"])  # orthogonal updates: the start
    # cos 60 degrees, N = 2: t = 2 * 0.5 / 1.5 = 2/3 of the average, 1/3 of the start
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3 ** 0.5])
    start = torch.tensor([0.5, -0.5])
    merged, ratios = model_stock({"w": start, "n": torch.tensor(7)},
                                 [{"w": start + a, "n": torch.tensor(7)}, {"w": start + b, "n": torch.tensor(7)}])
    assert ratios["w"] == pytest.approx(2 / 3)
    assert torch.allclose(merged["w"], 2 / 3 * (start + (a + b) / 2) + 1 / 3 * start, atol=1e-6)
    assert stock_ratio(0.5, 3) == pytest.approx(1.5 / 2.0) and stock_ratio(-0.2, 2) == 0.0
    with pytest.raises(ValueError, match="at least two"):
        model_stock(w0, [{**w0, **same}])
