"""``robusttune plan``: the arithmetic of a sweep's cost, and the calibration it rests on."""

import json

import pytest
import torch
from helpers import invoke, train_config

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
    assert evaluation_steps(train_config(steps=150, eval_every=25), 1000) == [25, 50, 75, 100, 125, 150]
    assert evaluation_steps(train_config(steps=10, eval_every=4), 1000) == [4, 8, 10]
    assert evaluation_steps(train_config(epochs=2, batch_size=10), 50) == [5, 10]
    assert method_key(train_config(w_distill=0)) == "ft"
    assert method_key(train_config(region="random", refill="none")) == "random-none-no-cam-feature"
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
    terms = plan["terms"]
    assert plan["sweep_hours"] == pytest.approx(sum(terms.values())) and plan["dominant"] == max(terms, key=terms.get)
    assert terms["train"] + terms["eval"] < 8 * plan["trial_hours"]
    assert plan["wall_hours"] == pytest.approx((plan["sweep_hours"] - terms["tail"]) / 2 + plan["tail"]["wall_hours"],
                                               rel=1e-6)
    assert plan["storage_bytes_per_trial"] == 4 * calibration["parameters"]  # 'final': the weights only
    # timed at the trial's own micro-batch (16), the evaluation at its batch (64, or the largest set)
    assert calibration["batch_timing"] == "trial micro-batch"
    assert all(fit["measured"] and fit["target"] == 16 for fit in calibration["step_fits"].values())
    # the loader: the mini world's in-memory tensors, fetched inside the step; far faster than the device
    loader = plan["loader"]
    assert loader["source"] == "in-memory tensors" and loader["status"] == "measured" and loader["in_step"]
    assert loader["images_per_s"] > 10 * loader["device_images_per_s"] and plan["bound"] == "device"
    # the tail: zero-shot, vanilla FT (12 steps, 3 evaluations), WiSE-FT 11 x (1 + H_3) (8 trials, 1/3 complete)
    tail = plan["tail"]
    assert tail["vanilla_steps"] == 12 and tail["vanilla_evaluations"] == 3
    assert tail["expected_front"] == pytest.approx(1 + 1 / 2 + 1 / 3)
    full_eval_s = sum(len(s) for s in sizes) * calibration["eval_seconds_per_image"]
    assert tail["wise_s"] == pytest.approx(11 * (1 + (1 + 1 / 2 + 1 / 3)) * full_eval_s)
    assert tail["vanilla_train_s"] == pytest.approx(12 * calibration["step_seconds"]["ft"])
    assert terms["tail"] * 3600 == pytest.approx(sum(tail[k] for k in ("startup_s", "zero_shot_eval_s", "vanilla_train_s",
                                                                      "vanilla_eval_s", "wise_s", "checkpoint_s",
                                                                      "merges_s")))
    # one Ray task for the references, one per front trial's curve and one per merge, each with its own start
    front, startup = tail["expected_front"], calibration["startup_seconds"]
    assert tail["tasks"] == pytest.approx(1 + front + 3) and tail["startup_s"] == pytest.approx((1 + front) * startup)
    # the merges: three starts, three full evaluations, the greedy soup's ID validation pass per complete trial
    val_images = next(len(s) for s in sizes if s.metric == "id_val_acc")
    assert tail["merges_s"] == pytest.approx(3 * startup + 3 * full_eval_s + tail["expected_complete_trials"]
                                             * val_images * calibration["eval_seconds_per_image"])
    curve_s = startup + 11 * full_eval_s
    assert tail["wall_hours"] * 3600 == pytest.approx(max(terms["tail"] * 3600 - front * curve_s - tail["merges_s"],
                                                          terms["tail"] * 3600 / 2))
    # checkpoints: per evaluation latest.pt (weights + AdamW's moments) and at most a best.pt, at the measured rate
    checkpoints, weights = plan["checkpoints"], 4 * calibration["parameters"]
    assert checkpoints["bytes_per_evaluation"] == 4 * weights and checkpoints["write"]["bytes_per_s"] > 0
    assert plan["trial_checkpoint_hours"] * 3600 == pytest.approx((3 * 4 * weights + weights)
                                                                  / checkpoints["write"]["bytes_per_s"])
    again = json.loads(invoke("plan", str(path), "--json", env=env).stdout.splitlines()[-1])
    assert not again["calibration"]["measured"] and again["calibration"]["step_seconds"] == calibration["step_seconds"]
    assert not again["checkpoints"]["write"]["measured"]  # the write rate is cached too
    human = invoke("plan", str(path), env=env)
    assert human.returncode == 0 and "sweep:" in human.stdout and "saved by the scheduler" in human.stdout
    assert "loader: in-memory tensors" in human.stdout and "bound by the device" in human.stdout
    assert "tail after the trials" in human.stdout and f"dominant: {plan['dominant']}" in human.stdout
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
    assert list(plan["methods"]) == ["ft"] and plan["calibration"]["parameters"] > 80_000_000
    # the loader: the folder reader with the trial's workers (num_workers unset: 2 CPUs - 1), timed
    loader = plan["loader"]
    assert loader["source"] == "folder" and loader["num_workers"] == 1 and loader["status"] == "measured"
    assert loader["images_per_s"] > 0 and plan["bound"] in ("loader", "device") and plan["sizes"]["source"] == "the folders"


def test_fit_sizes_measures_the_trial_batch_or_fits_a_line(monkeypatch):
    """A launch-bound device (GPU-like) is timed up to the trial's micro-batch; a slow one (a CPU at ViT-B/32) stops
    after two sizes and extrapolates the line through them; a size that does not fit in memory ends the ladder."""
    import robusttune.search.calibration as calibration
    from robusttune.training.device import CPU_FP32

    assert calibration.ladder(512) == [8, 16, 32, 64, 128, 256, 512] and calibration.ladder(6) == [6]
    assert calibration.ladder(100) == [8, 16, 32, 64, 100]
    cost = {"seconds": lambda size: 0.0}
    last = {}

    def fake_timed(call, placement, repeats, warmed=False):
        call(0)
        return cost["seconds"](last["size"]), cost["seconds"](last["size"])

    monkeypatch.setattr(calibration, "_timed", fake_timed)

    def call(size, i):
        last["size"] = size

    cost["seconds"] = lambda size: 0.05 + 1e-4 * size  # launch-bound: 50 ms whatever the size, then linear
    fit = calibration.fit_sizes(call, 512, CPU_FP32)
    assert fit.measured and fit.sizes == calibration.ladder(512) and fit.at(512) == pytest.approx(0.05 + 0.0512)
    assert fit.describe()["how"] == "measured at the trial's micro-batch"
    # scaling the batch-32 time up, as the plan did before, gives 3.6x the step
    assert cost["seconds"](32) * 16 / fit.at(512) > 3

    cost["seconds"] = lambda size: 0.01 + 0.3 * size  # 2.4 s at 8: over the budget, so 16 is the last size timed
    fit = calibration.fit_sizes(call, 512, CPU_FP32)
    assert not fit.measured and fit.sizes == [8, 16] and fit.at(512) == pytest.approx(0.01 + 0.3 * 512)
    assert fit.describe()["how"] == "fit a + b*batch on 8 and 16, extrapolated to 512"

    def out_of_memory_from_128(size, i):
        if size >= 128:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        last["size"] = size

    cost["seconds"] = lambda size: 0.02 + 1e-3 * size
    released = []
    fit = calibration.fit_sizes(out_of_memory_from_128, 512, CPU_FP32, release=lambda: released.append(True))
    assert fit.sizes == [8, 16, 32, 64] and fit.oom_at == 128 and released and not fit.measured
    assert fit.at(512) == pytest.approx(0.02 + 0.512)

    def failing(size, i):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        calibration.fit_sizes(failing, 64, CPU_FP32)


def test_expected_front_size():
    from robusttune.search.plan import expected_front_size

    assert expected_front_size(10, 1) == 1.0 and expected_front_size(0, 2) == 0.0
    assert expected_front_size(4, 2) == pytest.approx(1 + 1 / 2 + 1 / 3 + 1 / 4)  # H_4
    assert expected_front_size(3, 3) == pytest.approx(1 + 1.5 / 2 + (11 / 6) / 3)
    huge = expected_front_size(10**12, 2)  # no loop over 10**12 trials
    assert expected_front_size(10**5, 2) < huge < 30


def _missing_paper_space(tmp_path, **imagenet):
    from robusttune.space import load_space

    paper, _ = load_space("paper")
    data = paper.to_dict()
    data["task"]["imagenet"] |= {"train_dir": str(tmp_path / "no" / "train"), "val_dir": str(tmp_path / "no" / "val"),
                                 "ood_dirs": {"imagenet_r": str(tmp_path / "no" / "r")}, **imagenet}
    # the rungs the arithmetic below expects (paper's default searcher runs without early stopping)
    data["scheduler"] = {"name": "mo_asha", "grace_period": 3, "reduction_factor": 2}
    return SearchSpace.model_validate(data)


def test_a_space_whose_folders_are_missing_is_planned_on_published_sizes(tmp_path, monkeypatch):
    """ImageNet folders that are not here: the datasets' published image counts, the loader "not measured" (no
    bound claimed); a measured loader slower than the device bounds the trial (workers overlap the step, no workers
    add to it). The calibration is stubbed: the arithmetic is what is tested here."""
    import robusttune.search.calibration as calibration
    import robusttune.search.plan as planning
    from robusttune.training.device import CPU_FP32

    space = _missing_paper_space(tmp_path)
    loader = calibration.measure_loader(space, None, None, 512, CPU_FP32, tmp_path)
    assert loader["images_per_s"] is None and loader["status"].startswith("not measured: ")
    assert "does not exist" in loader["status"] and loader["num_workers"] == 8
    mix = planning.method_mix(space)
    step = {name: 2.0 for name in mix} | {"ft": 0.75}

    def stub(loader):
        return lambda space, mix, cache_dir, **_: calibration.Calibration(
            "cpu", 2, {name: step[name] for name in mix}, 1e-3, 5.0, 88_000_000, loader=loader)

    monkeypatch.setattr(planning, "calibrate", stub(loader))
    found = planning.plan(space, tmp_path)
    assert found.sizes["train"] == 1_281_167 - 10_000 and found.sizes["eval"]["id_acc"] == 50_000
    assert found.sizes["eval"]["ood_imagenet_r"] == 30_000 and "published" in found.sizes["source"]
    assert found.bound is None and found.loader["status"].startswith("not measured")
    per_epoch = (1_281_167 - 10_000) // 512
    assert found.steps_per_trial == 10 * per_epoch and found.evaluations_per_trial == 10
    full = 10_000 + 50_000 + 30_000
    assert found.trial_hours * 3600 == pytest.approx(5.0 + 10 * per_epoch * 2.0 + 10 * full * 1e-3)
    # the tail: zero-shot, vanilla FT (its own step), WiSE-FT 11 x (1 + H_12): 48 trials, 1/4 complete (rungs 3, 6)
    tail = found.tail
    assert tail["expected_complete_trials"] == pytest.approx(12) and tail["expected_front"] == pytest.approx(
        sum(1 / k for k in range(1, 13)))
    assert tail["wise_evaluations"] == pytest.approx(11 * (1 + tail["expected_front"]))
    assert tail["vanilla_train_s"] == pytest.approx(10 * per_epoch * 0.75)
    assert tail["hours"] * 3600 == pytest.approx(5.0 * (1 + tail["expected_front"]) + full * 1e-3
                                                 + 10 * per_epoch * 0.75 + 10 * full * 1e-3
                                                 + tail["wise_evaluations"] * full * 1e-3 + tail["checkpoint_s"]
                                                 + 3 * 5.0 + 3 * full * 1e-3 + 12 * 10_000 * 1e-3)  # the merges
    # checkpoints: latest.pt (3 x the fp32 weights) and at most a best.pt at each evaluation, at the measured rate
    weights = 4 * 88_000_000
    rate = found.checkpoints["write"]["bytes_per_s"]
    assert found.checkpoints["bytes_per_evaluation"] == 4 * weights and rate > 0
    assert found.trial_checkpoint_hours * 3600 == pytest.approx((10 * 4 * weights + weights) / rate)
    assert sum(found.terms.values()) == pytest.approx(found.sweep_hours) and found.dominant == "train"
    # the tail's tasks side by side on the 8 trials' devices: the references' task (vanilla FT's training) is longest
    references_s = tail["hours"] * 3600 - tail["expected_front"] * (5.0 + 11 * full * 1e-3) - tail["merges_s"]
    assert tail["wall_hours"] * 3600 == pytest.approx(references_s)
    assert found.wall_hours == pytest.approx((found.sweep_hours - found.terms["tail"]) / 8 + tail["wall_hours"])

    # a loader at 100 img/s with workers bounds every method (512 images: 5.12 s a step > 2 s)
    slow = {"source": "folder", "num_workers": 8, "overlaps_step": True, "in_step": False, "images_per_s": 100.0,
            "status": "measured"}
    monkeypatch.setattr(planning, "calibrate", stub(slow))
    bound = planning.plan(space, tmp_path)
    assert bound.bound == "loader" and all(m["bound"] == "loader" for m in bound.method_steps.values())
    assert bound.method_steps["ft"]["step_seconds"] == pytest.approx(5.12)
    assert bound.trial_hours > found.trial_hours
    # without workers the loading adds to the step
    monkeypatch.setattr(planning, "calibrate", stub({**slow, "num_workers": 0, "overlaps_step": False}))
    serial = planning.plan(space, tmp_path)
    assert serial.method_steps["ft"]["step_seconds"] == pytest.approx(0.75 + 5.12)


def test_data_parallel_trials_are_planned_per_process_in_device_hours(tmp_path, monkeypatch):
    """``resources.workers: 2``: each process calibrates its half of the batch; a trial's hours count both devices,
    the wall time divides by them, and the baselines' tail trains the whole batch on one device (off the fit)."""
    import robusttune.search.calibration as calibration
    import robusttune.search.plan as planning

    assert calibration.step_chunks(train_config(batch_size=512), 10**6, ranks=2) == [256]
    assert calibration.step_chunks(train_config(batch_size=512, accum_steps=2), 10**6, ranks=2) == [128, 128]
    assert calibration.step_chunks(train_config(batch_size=512, accum_steps=2), 10**6) == [256, 256]
    assert calibration.step_chunks(train_config(batch_size=64), 40) == [40]
    data = _missing_paper_space(tmp_path).to_dict()
    data["resources"] = {**data["resources"], "workers": 2}
    data["scheduler"] = {"name": "none"}  # (MO-)ASHA does not stop multi-worker trials yet
    space = SearchSpace.model_validate(data)
    fit = calibration.Fit(256, [8, 16], [0.1 + 0.01 * 8, 0.1 + 0.01 * 16]).describe()

    def stub(space, mix, cache_dir, **_):
        fits = {name: {**fit, "update_seconds": 0.05} for name in mix}
        steps = {name: 0.05 + 0.1 + 0.01 * 256 for name in mix}  # one process: 256 images a step
        return calibration.Calibration("cpu", 2, steps, 1e-3, 5.0, 88_000_000, step_fits=fits,
                                    loader={"images_per_s": None, "status": "not measured: test"})

    monkeypatch.setattr(planning, "calibrate", stub)
    found = planning.plan(space, tmp_path)
    per_epoch = (1_281_167 - 10_000) // 512
    full = 10_000 + 50_000 + 30_000
    assert found.ranks == 2
    assert found.trial_hours * 3600 == pytest.approx(2 * 5.0 + 2 * 10 * per_epoch * 2.71 + 10 * full * 1e-3)
    # vanilla FT trains like the trials, in one process: the same global batch as 2 micro-batches of 256
    assert found.tail["vanilla_train_s"] == pytest.approx(10 * per_epoch * (0.05 + 2 * (0.1 + 0.01 * 256)))
    assert found.wall_hours == pytest.approx((found.sweep_hours - found.terms["tail"]) / 16
                                             + found.tail["wall_hours"])


def test_the_confirmation_stage_is_planned_run_by_run(tmp_path, monkeypatch):
    """``confirm: {seeds: 3, top: 5}`` on the paper space (stubbed calibration): 3 x (5 + vanilla FT) + zero-shot
    runs, (5 + 1) x 2 of them trained again, each with its curve except seed 0's of front trials and vanilla FT."""
    import robusttune.search.calibration as calibration
    import robusttune.search.plan as planning

    data = _missing_paper_space(tmp_path).to_dict() | {"confirm": {"seeds": 3, "top": 5}}
    space = SearchSpace.model_validate(data)
    monkeypatch.setattr(planning, "calibrate", lambda space, mix, cache_dir, **_: calibration.Calibration(
        "cpu", 2, {name: 2.0 for name in mix} | {"ft": 0.75}, 1e-3, 5.0, 88_000_000))
    found = planning.plan(space, tmp_path)
    plain = planning.plan(_missing_paper_space(tmp_path), tmp_path)
    confirm = found.confirmation
    assert confirm["runs"] == 3 * 6 + 1 and confirm["trained_runs"] == 6 * 2
    front = found.tail["expected_front"]
    assert confirm["curves"] == pytest.approx(6 * 3 - (min(5, front) + 1))
    full = 10_000 + 50_000 + 30_000
    per_epoch = (1_281_167 - 10_000) // 512
    run_s = 10 * per_epoch * 2.0 + 10 * full * 1e-3  # one trial's training and evaluations
    vanilla_s = 10 * per_epoch * 0.75 + 10 * full * 1e-3
    write_s = 4 * 88_000_000 / found.checkpoints["write"]["bytes_per_s"]
    assert confirm["seconds"] == pytest.approx(19 * 5.0 + 5 * 2 * run_s + 2 * vanilla_s + confirm["curves"] * 11 * full * 1e-3
                                               + full * 1e-3 + 12 * write_s)
    assert found.terms["confirm"] == pytest.approx(confirm["seconds"] / 3600) and plain.terms["confirm"] == 0
    assert found.wall_hours == pytest.approx(plain.wall_hours + confirm["wall_seconds"] / 3600)


def test_a_wise_aware_objective_is_planned_with_one_more_evaluation_per_alpha(tmp_path, monkeypatch):
    import robusttune.search.calibration as calibration
    import robusttune.search.plan as planning

    monkeypatch.setattr(planning, "calibrate", lambda space, mix, cache_dir, **_: calibration.Calibration(
        "cpu", 2, {name: 2.0 for name in mix} | {"ft": 0.75}, 1e-3, 5.0, 88_000_000))
    plain_space = _missing_paper_space(tmp_path)
    data = plain_space.to_dict()
    data["objective"] = {**data["objective"], "wise": {"alphas": [0.3, 0.5, 0.7]}}
    plain, wise = planning.plan(plain_space, tmp_path), planning.plan(SearchSpace.model_validate(data), tmp_path)
    assert wise.eval_images_per_trial == 4 * plain.eval_images_per_trial
    full = 10_000 + 50_000 + 30_000
    assert wise.trial_hours - plain.trial_hours == pytest.approx(3 * 10 * full * 1e-3 / 3600)
