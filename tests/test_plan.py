"""``robusttune plan``: the arithmetic of a sweep's cost, and the calibration it rests on."""

import json

import pytest
from conftest import invoke

from robusttune.config import TrainConfig
from robusttune.search.plan import evaluation_steps, method_key, method_mix, scheduler_fraction
from robusttune.space import SearchSpace


def test_scheduler_fraction_follows_the_rungs():
    def space(**scheduler):
        return SearchSpace.model_validate({"scheduler": scheduler})

    assert scheduler_fraction(space(name="none"), 6) == 1.0
    # demo: one rung at 3 of 6 evaluations, half go on: 3 + 0.5 * 3 = 4.5 of 6
    assert scheduler_fraction(space(name="mo_asha", grace_period=3, reduction_factor=2), 6) == pytest.approx(0.75)
    # rungs at 1, 3, 9 of 27, eta 3: 1 + 2/3 + 6/9 + 18/27
    expected = (1 + 2 / 3 + 6 / 9 + 18 / 27) / 27
    assert scheduler_fraction(space(name="asha", grace_period=1, reduction_factor=3), 27) == pytest.approx(expected)


def test_evaluation_steps_and_methods():
    assert evaluation_steps(TrainConfig(steps=150, eval_every=25), 1000) == [25, 50, 75, 100, 125, 150]
    assert evaluation_steps(TrainConfig(steps=10, eval_every=4), 1000) == [4, 8, 10]
    assert evaluation_steps(TrainConfig(epochs=2, batch_size=10), 50) == [5, 10]
    assert method_key(TrainConfig(w_distill=0)) == "vanilla-all"
    assert method_key(TrainConfig(region="random", refill="none")) == "random-none-no-cam-feature"
    from robusttune.space import load_space

    demo, _ = load_space("demo")
    mix = method_mix(demo)
    assert sum(share for _, share in mix.values()) == pytest.approx(1.0)
    assert mix["fd-clean-feature"][1] == pytest.approx(0.25, abs=0.06)  # region none: a quarter of the choices
    assert len(mix) == 10  # 3 regions x 3 refills + clean distillation


def test_plan_on_the_mini_world_uses_a_cached_calibration(tmp_path, tiny_world_config, tiny_prepared, cache_dir):
    import yaml

    space = {"name": "tiny", "task": {"world": tiny_world_config.to_dict()}, "sampler": {"name": "random", "seed": 0},
             "parameters": {"region": {"type": "categorical", "choices": ["object", "none"]}},
             "fixed": {"steps": 12, "batch_size": 16, "eval_every": 4, "eval_batch_size": 64, "eval_subset": 50,
                       "checkpoints": "final"},
             "budget": {"trials": 8, "concurrency": 2}, "resources": {"cpu": 1},
             "scheduler": {"name": "mo_asha", "grace_period": 1, "reduction_factor": 3}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(space))
    env = {"ROBUSTTUNE_CACHE_DIR": str(cache_dir)}
    first = invoke("plan", str(path), "--json", "--calibrate", env=env)
    assert first.returncode == 0, first.stderr
    plan = json.loads(first.stdout.splitlines()[-1])
    assert plan["calibration"]["measured"] and plan["steps_per_trial"] == 12 and plan["evaluations_per_trial"] == 3
    sizes = tiny_prepared.task().eval_sets
    assert plan["eval_images_per_trial"] == 2 * sum(min(50, len(s)) for s in sizes) + sum(len(s) for s in sizes)
    calibration = plan["calibration"]
    train_s = sum(share * 12 * calibration["step_seconds"][name] for name, share in plan["methods"].items())
    eval_s = plan["eval_images_per_trial"] * calibration["eval_seconds_per_image"]
    assert plan["trial_hours"] * 3600 == pytest.approx(calibration["startup_seconds"] + train_s + eval_s, rel=1e-3)
    assert plan["eval_share"] == pytest.approx(eval_s / (train_s + eval_s), abs=1e-3)
    assert plan["scheduler_saving"] == pytest.approx(1 - (1 + 2 / 3) / 3, abs=1e-3)
    assert plan["sweep_hours"] < 8 * plan["trial_hours"] and plan["wall_hours"] == pytest.approx(plan["sweep_hours"] / 2, rel=1e-2)
    assert plan["storage_bytes_per_trial"] == 4 * calibration["parameters"]  # 'final': the weights only
    again = json.loads(invoke("plan", str(path), "--json", env=env).stdout.splitlines()[-1])
    assert not again["calibration"]["measured"] and again["calibration"]["step_seconds"] == calibration["step_seconds"]
    human = invoke("plan", str(path), env=env)
    assert human.returncode == 0 and "sweep:" in human.stdout and "saved by the scheduler" in human.stdout
    assert invoke("plan", str(path), "--trials", "0").returncode == 2


def test_a_folder_named_like_a_built_in_space_does_not_hide_it(tmp_path, monkeypatch):
    from robusttune.space import load_space

    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_space("demo")[0].name == "demo"


@pytest.mark.slow
def test_plan_on_imagenet_folders_counts_images_without_building_the_head(tmp_path, cache_dir, monkeypatch):
    import open_clip
    import yaml
    from PIL import Image

    for split, per_class in (("train", 2), ("val", 1)):
        for k in range(1000):
            folder = tmp_path / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            for j in range(per_class if k < 10 else 0):
                Image.new("RGB", (40, 40), (k, j, 0)).save(folder / f"{j}.png")
    space = {"name": "inet", "task": {"imagenet": {"model": "ViT-B-32", "pretrained": None, "train_dir": str(tmp_path / "train"),
                                                   "val_dir": str(tmp_path / "val"), "val_holdout": 4}},
             "objective": {"metrics": ["id_val_acc", "id_acc"], "directions": ["max", "max"]},
             "parameters": {"lr": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True}},
             "fixed": {"region": "none", "w_distill": 0.0, "batch_size": 2, "epochs": 1, "eval_batch_size": 4,
                       "train_subset": 0.5},
             "budget": {"trials": 2, "concurrency": 1}, "resources": {"cpu": 2}}
    (tmp_path / "inet.yaml").write_text(yaml.safe_dump(space))
    monkeypatch.setattr(open_clip, "build_zero_shot_classifier", lambda *a, **k: pytest.fail("plan built a zero-shot head"))
    result = invoke("plan", str(tmp_path / "inet.yaml"), "--json", env={"ROBUSTTUNE_CACHE_DIR": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout.splitlines()[-1])
    # 20 train images - 4 held out = 16, half of them (train_subset 0.5) = 8 -> 4 steps of batch 2; one evaluation
    assert plan["steps_per_trial"] == 4 and plan["evaluations_per_trial"] == 1
    assert plan["eval_images_per_trial"] == 4 + 10  # the holdout and the val folder
    assert list(plan["methods"]) == ["vanilla-all"] and plan["calibration"]["parameters"] > 80_000_000
