"""The memory model (``robusttune.search.memory``): counted activations, the peak, and the refusal of a space that
cannot fit (``plan``, ``sweep``, ``launch``)."""

import pytest
import torch
import yaml
from helpers import assert_one_line_exit_2, invoke, train_config

from robusttune.search.memory import (COUNT_SIZE, Model, count_method, count_saved, estimate, gpu_memory_of,
                                      memory_plan)
from robusttune.space import SearchSpace


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the machine's cores are shared, and spinning OpenMP threads make tiny steps 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model():
    from robusttune.config import TinyClipConfig
    from robusttune.models.classifier import ImageClassifier
    from robusttune.models.tiny import create_tiny_clip

    torch.manual_seed(0)
    clip = create_tiny_clip(TinyClipConfig(), image_size=32, vocab_size=64)
    head = torch.nn.functional.normalize(torch.randn(10, clip.visual.output_dim), dim=-1) * 100
    return Model(ImageClassifier(clip.visual, head, mean=(0.5,) * 3, std=(0.25,) * 3), (3, 32, 32), None, "tiny")


@pytest.mark.parametrize("flat", [{"method": "ft"}, {"region": "object", "refill": "single"},
                                  {"region": "random", "refill": "none"}])
def test_counted_activations_extrapolate_to_other_batches(flat):
    """One count at COUNT_SIZE images, split into per-image and fixed bytes, gives the bytes counted at 8 and 40."""
    from robusttune.models.classifier import frozen_copy
    from robusttune.training.loop import StepComputer

    model = tiny_model()
    config = train_config(**flat)
    described = count_method(config, model, None)
    count = described["count"]
    assert count["per_image"] > 0 and count["size"] == COUNT_SIZE
    student = frozen_copy(model.student).requires_grad_(True).train()
    computer = StepComputer(config, student, frozen_copy(model.student))
    for size in (8, 40):
        images = torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8)
        direct = count_saved(computer, student, images, torch.zeros(size, dtype=torch.long))
        assert direct.per_image * size + direct.fixed == pytest.approx(count["per_image"] * size + count["fixed"], rel=1e-6)
    if "region" in flat and flat["region"] == "object":  # the relevance CAM's maps: blocks x heads x tokens^2 per image
        assert count["cam_elements_per_image"] == 4 * 4 * 65 * 65 and count["at_cam_per_image"] < count["per_image"]


def test_checkpointed_blocks_hold_fewer_activations():
    model = tiny_model()
    plain = estimate(count_method(train_config(method="ft"), model, None), method="ft", micro=256, accum_steps=1,
                     dtype="fp32")
    checkpointed = estimate(count_method(train_config(method="ft", checkpoint_blocks=True), model, None),
                            method="ft", micro=256, accum_steps=1, dtype="fp32")
    assert checkpointed.parts["activations"] < plain.parts["activations"] / 2
    assert checkpointed.parts["weights"] == plain.parts["weights"]


def test_the_peak_adds_what_a_step_holds():
    model = tiny_model()
    described = count_method(train_config(method="ft"), model, None)
    row = estimate(described, method="ft", micro=64, accum_steps=1, dtype="fp32")
    parts = row.parts
    assert parts["moments"] == 2 * parts["grads"] and parts["teacher"] == parts["weights"]
    assert row.peak == (parts["weights"] + parts["teacher"] + parts["moments"] + parts["batch"]
                        + max(parts["activations"] + parts["transient"], parts["grads"]))
    accumulating = estimate(described, method="ft", micro=64, accum_steps=2, dtype="fp32")
    assert accumulating.peak == row.peak + parts["grads"]  # gradients live through the next micro-batch


def l14_space(**fixed):
    return SearchSpace.model_validate({
        "name": "l14", "task": {"imagenet": {"model": "ViT-L-14", "pretrained": None, "train_dir": "/nowhere/train",
                                             "val_dir": "/nowhere/val", "ood_dirs": {"imagenet_r": "/nowhere/r"}}},
        "parameters": {"lr": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True}},
        "fixed": {"preset": "paper", "method": "ft", **fixed}, "resources": {"cpu": 8, "gpu": 1}})


def test_vit_l14_vanilla_ft_at_512_does_not_fit_80_gb_and_accum_steps_is_named(cache_dir):
    """ViT-L/14 from open_clip's config on fake tensors (no weights): bf16 activations about 200 MB per image, so
    micro-batch 512 needs more than 100 GB; the refusal names the accum_steps that fits."""
    from robusttune.errors import ConfigError
    from robusttune.search.baselines import vanilla_config
    from robusttune.search.memory import check_fits

    space = l14_space()
    found = memory_plan(space, {"vanilla FT baseline": vanilla_config(space)}, cache_dir, gpu_memory=80e9, gpu="H100")
    (row,) = found.rows
    assert row.micro_batch == 512 and row.dtype == "bfloat16"
    assert 150e6 < row.activations_per_image < 260e6  # bytes saved for backward per image
    assert row.peak > 100e9 and not found.fits
    assert "set accum_steps: 2" in row.note and "micro-batch 256" in row.note
    with pytest.raises(ConfigError, match="out of GPU memory: vanilla FT baseline needs .* set accum_steps: 2"):
        check_fits(found)
    fitted = memory_plan(space, {"ft": space.trial_config({"lr": 3e-5}, seed=0).model_copy(update={"accum_steps": 2})},
                         cache_dir, gpu_memory=80e9, gpu="H100")
    assert fitted.fits and fitted.rows[0].peak < 80e9 * 0.92  # the counts came from the cache


@pytest.mark.slow  # a CLI process builds ViT-B/32 on fake tensors: 5-40 s on a shared 2-core machine
def test_plan_refuses_a_space_that_cannot_fit_in_one_line(tmp_path, cache_dir):
    space = {"name": "b32", "task": {"imagenet": {"model": "ViT-B-32", "pretrained": None, "train_dir": "/nowhere/t",
                                                  "val_dir": "/nowhere/v", "ood_dirs": {"imagenet_r": "/nowhere/r"}}},
             "parameters": {"lr": {"type": "float", "low": 1e-5, "high": 1e-4}},
             "fixed": {"preset": "paper", "method": "ft"}, "resources": {"cpu": 8, "gpu": 1}}
    path = tmp_path / "b32.yaml"
    path.write_text(yaml.safe_dump(space))
    result = invoke("plan", path, "--gpu-memory", "6", cache_dir=cache_dir)  # ~20 MB per image x 512 > 6 GB
    assert_one_line_exit_2(result, "out of GPU memory: ft needs ")
    assert "set accum_steps: " in result.stderr
    assert_one_line_exit_2(invoke("plan", path, "--device-type", "B200", cache_dir=cache_dir),
                           "--device-type must be one of H100")
    assert_one_line_exit_2(invoke("plan", path, "--gpu-memory", "0", cache_dir=cache_dir), "--gpu-memory must be > 0")


def test_gpu_memory_comes_from_a_flag_a_device_type_or_a_cluster_file():
    from pathlib import Path

    from robusttune.search.launch import check_cluster_file

    assert gpu_memory_of(gpu_memory_gb=24) == (24e9, "--gpu-memory 24")
    assert gpu_memory_of(device="a100-40gb") == (40e9, "A100-40GB")
    cluster = check_cluster_file(Path(__file__).resolve().parents[2] / "cluster.yaml")
    memory, where = gpu_memory_of(cluster=cluster)
    assert memory == 40e9 and "A100-40GB" in where  # the smallest: p4d's 40 GB A100s beside g6e's 48 GB L40S


def test_plan_prints_each_peak_next_to_the_gpu(cache_dir, capsys):
    from robusttune.cli.plan import memory_lines
    from robusttune.search.baselines import vanilla_config

    space = l14_space()
    found = memory_plan(space, {"vanilla FT baseline": vanilla_config(space)}, cache_dir, gpu_memory=141e9, gpu="H200")
    memory_lines(found.to_dict())
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("peak device memory per process (bfloat16 activations; against H200: 141.0 GB")
    assert "vanilla FT baseline" in out[1] and "at micro-batch 512" in out[1] and out[1].endswith("fits")
