from pathlib import Path

import pytest

from robusttune.config import (PAPER_THRESHOLDS, Refill, Region, TaskSpec, TrainConfig, WorldConfig, load_config,
                               load_mapping, parse)
from robusttune.errors import ConfigError
from helpers import ROOT, train_config


@pytest.mark.parametrize("data, expected", [
    ({"sed": 1}, "w.yaml: unknown key 'sed' (did you mean 'seed'?)"),
    ({"model": {"vision_widht": 8}}, "unknown key 'model.vision_widht' (did you mean 'vision_width'?)"),
    ({"n_train": "many"}, "w.yaml: n_train: Input should be a valid integer"),
    ({"background_correlation": 1.5}, "background_correlation: Input should be less than or equal to 1"),
    ({"n_train": 4000}, "must be <= 5000"),
    ({"ood_shifts": ["weather"]}, "ood_shifts.0: Input should be 'background', 'source' or 'style'"),
    ({"image_size": 26}, "must be divisible by model.patch_size"),
])
def test_world_config_errors_are_one_line_and_specific(data, expected):
    with pytest.raises(ConfigError) as caught:
        parse(WorldConfig, data, "w.yaml")
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_configs_are_frozen_and_hashable_data():
    config = WorldConfig()
    with pytest.raises(Exception):
        config.seed = 3  # type: ignore[misc]
    assert WorldConfig.model_validate(config.to_dict()) == config


@pytest.mark.parametrize("data, expected", [
    ({"method": {"name": "masked_distill", "region": "none", "refill": "single"}}, "method: refill needs a masking region"),
    ({"method": {"name": "masked_distill", "mask_threshold": 0.3, "mask_ratio": 0.2}},
     "give mask_threshold or mask_ratio, not both"),
    ({"method": {"region": "objct"}}, "method.region: Input should be 'object', 'context', 'random' or 'none'"),
    ({"batch_size": 10, "accum_steps": 3}, "must be a multiple of accum_steps"),
    ({"steps": 10, "epochs": 1}, "give steps or epochs, not both"),
    ({"method": {"name": "masked_distill", "w_distill": -1}}, "method.w_distill: Input should be greater than or equal to 0"),
    ({"method": {"name": "masked_distill", "mask_ratoi": 0.5}}, "unknown key 'method.mask_ratoi' (did you mean 'mask_ratio'?)"),
    ({"method": {"name": "ft", "w_distill": 1}}, "unknown key 'method.w_distill' (a knob of masked_distill, not of method 'ft')"),
    ({"method": "lpft"}, "method: unknown method 'lpft' (did you mean 'lp_ft'?); methods: ft, lp, lp_ft, l2sp, flyp, lipsum, masked_distill"),
    ({"method": {"name": "lp_ft", "lp_fraction": 1}}, "method.lp_fraction: Input should be less than 1, got 1"),
    ({"method": {"name": "l2sp", "strength": True}}, "method.strength: Input should be a number, not a boolean"),
    ({"region": "none"}, "unknown key 'region' (a knob of masked_distill: write it under 'method')"),
])
def test_train_config_rules(data, expected):
    with pytest.raises(ConfigError, match=None) as caught:
        parse(TrainConfig, data, "cfg")
    assert expected in str(caught.value)


OFFICIAL_THRESHOLDS = {  # example.sh of the paper's code (ViT-B/32): probability for random, CAM threshold otherwise
    ("random", "none"): 0.75, ("random", "single"): 0.5, ("random", "multi"): 0.5,
    ("object", "none"): 0.3, ("object", "single"): 0.3, ("object", "multi"): 0.6,
    ("context", "none"): 0.6, ("context", "single"): 0.5, ("context", "multi"): 0.3,
}


@pytest.mark.parametrize("region, refill", list(OFFICIAL_THRESHOLDS))
def test_default_threshold_is_the_official_one_for_each_strategy(region, refill):
    assert train_config(region=region, refill=refill).method.mask_threshold == OFFICIAL_THRESHOLDS[(region, refill)]
    assert PAPER_THRESHOLDS[(Region(region), Refill(refill))] == OFFICIAL_THRESHOLDS[(region, refill)]
    assert train_config(region=region, refill=refill, mask_threshold=0.42).method.mask_threshold == 0.42


def test_the_faithfulness_page_lists_the_official_thresholds_and_the_paper_preset():
    section = (ROOT / "docs" / "results" / "faithfulness.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in section.splitlines() if line.startswith("| random") or line.startswith("| object")
            or line.startswith("| context")}
    for (region, refill), value in OFFICIAL_THRESHOLDS.items():
        assert float(rows[region][["none", "single", "multi"].index(refill)]) == value
    preset = {}
    for line in section.split("`preset: paper`", 1)[1].splitlines():
        if line.startswith("| `"):
            key, value = (c.strip().strip("`") for c in line.split("|")[1:3])
            preset[key] = value
    paper = train_config(preset="paper").to_dict()
    resolved = {**paper, **paper["method"]}  # the training defaults and the method's
    assert len(preset) >= 12
    for key, value in preset.items():  # key by key: the README's official values are what the preset resolves to
        assert str(resolved[key]) == value or float(resolved[key]) == float(value), (key, resolved[key], value)


def test_train_config_defaults_follow_the_paper():
    assert train_config().method.mask_threshold == PAPER_THRESHOLDS[(Region.OBJECT, Refill.SINGLE)] == 0.3
    assert train_config(region="context").method.mask_threshold == 0.5
    clean = train_config(region="none").method
    assert clean.refill is Refill.NONE and clean.mask_threshold is None and not clean.uses_masks
    assert train_config(mask_ratio=0.25).method.mask_threshold is None
    assert not train_config(w_distill=0).method.uses_cam


def test_task_spec_takes_one_task():
    with pytest.raises(ConfigError, match="give world or imagenet, not both"):
        parse(TaskSpec, {"world": {}, "imagenet": {"train_dir": "a", "val_dir": "b"}}, "t")


def test_yaml_files(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line \d+\)"):
        load_mapping(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_mapping(listy)
    with pytest.raises(ConfigError, match="config file not found"):
        load_mapping(tmp_path / "missing.yaml")
    good = tmp_path / "world.yaml"
    good.write_text("name: mine\nseed: 4\nbackground_correlation: 0.8\n")
    world = load_config(WorldConfig, good)
    assert (world.name, world.seed, world.background_correlation) == ("mine", 4, 0.8)
