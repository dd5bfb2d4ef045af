"""``robusttune doctor``: each planted failure is a blocker in one line; a healthy setup passes; through Ray too."""

import json
import os

import pytest
import yaml
from helpers import invoke

from robusttune.search import doctor as checks


def space_file(tmp_path, **task):
    imagenet = {"model": "ViT-B-32", "pretrained": None, "train_dir": str(tmp_path / "train"),
                "val_dir": str(tmp_path / "val"), "ood_dirs": {"imagenet_r": str(tmp_path / "r")}, "num_workers": 2, **task}
    space = {"name": "doc", "task": {"imagenet": imagenet},
             "parameters": {"lr": {"type": "float", "low": 1e-5, "high": 1e-4}},
             "fixed": {"method": "ft", "batch_size": 64, "eval_batch_size": 64}, "resources": {"cpu": 3, "gpu": 0},
             "budget": {"trials": 2, "concurrency": 1}}
    path = tmp_path / "doc.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def class_folders(root, classes=("n01440764", "n01443537")):
    from PIL import Image

    for wnid in classes:
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.new("RGB", (40, 30), (i * 40, 80, 120)).save(root / wnid / f"{wnid}_{i}.JPEG")


def by_name(result):
    return {c["name"]: c for c in json.loads(result.stdout.splitlines()[-1])["checks"]}


@pytest.mark.slow  # ViT-B/32 counted on fake tensors: 10-30 s on a shared 2-core machine
def test_each_planted_failure_is_a_blocker_in_one_line(tmp_path, cache_dir, monkeypatch):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not really weights")  # a local file of ViT-B-32 without its activation
    path = space_file(tmp_path, pretrained=str(weights))  # and no data folders at all
    monkeypatch.setattr(checks, "shared_memory_bytes", lambda path=checks.SHM_PATH: 1_000_000)  # a 1 MB /dev/shm
    result = invoke("doctor", path, "--json", "--no-all-reduce", "--gpu-memory", "0.5", "--storage", tmp_path / "runs",
                    cache_dir=cache_dir, env={"CUDA_VISIBLE_DEVICES": "0"})  # a GPU given that torch cannot use
    assert result.returncode == 1, result.stderr
    found = by_name(result)
    blockers = {name for name, c in found.items() if c["status"] == "blocker"}
    assert {"cuda", "gpu memory", "shm", "weights", "data train", "data val", "data imagenet_r"} <= blockers
    assert "CUDA_VISIBLE_DEVICES assigned GPU(s) 0" in found["cuda"]["detail"]
    assert "quickgelu" in found["weights"]["detail"] and "ft needs " in found["gpu memory"]["detail"]
    assert "bus errors" in found["shm"]["detail"] and "does not exist" in found["data train"]["detail"]
    assert all("\n" not in c["detail"] for c in found.values())
    assert found["disk"]["status"] == "ok" and found["loader"]["status"] == "skip"


@pytest.mark.slow  # as above, and the loader reads the folder
def test_a_healthy_setup_passes(tmp_path, cache_dir):
    for folder in ("train", "val", "r"):
        class_folders(tmp_path / folder)
    result = invoke("doctor", space_file(tmp_path), "--no-all-reduce", "--storage", tmp_path / "runs",
                    cache_dir=cache_dir, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no blockers" in result.stdout and "BLOCKER" not in result.stdout
    assert "WARN     weights" in result.stdout  # random weights: for tests only


@pytest.mark.slow  # two fresh processes import torch
def test_two_gloo_ranks_all_reduce(tmp_path):
    rate, ok = checks.all_reduce_bandwidth("gloo", tmp_path, size=2**20)
    assert ok and rate > 0


@pytest.mark.slow  # a local Ray with a fake GPU, the checks in its task
def test_through_ray_a_fake_gpu_is_a_blocker(tmp_path, cache_dir):
    """Ray started with one GPU on a machine without one hands the task GPU id 0, which torch cannot use. In a
    process of its own: the session's Ray (no GPU) must not be the one the checks run on."""
    import subprocess
    import sys

    path = space_file(tmp_path)
    text = yaml.safe_load(path.read_text())
    text["resources"]["gpu"] = 1
    path.write_text(yaml.safe_dump(text))
    script = (
        "import json, sys, ray, robusttune as rt\n"
        "ray.init(num_cpus=3, num_gpus=1, include_dashboard=False, log_to_driver=False)\n"
        "try:\n"
        f"    found = rt.doctor({str(path)!r}, address='auto', storage={str(tmp_path / 'runs')!r},"
        f" cache_dir={str(cache_dir)!r}, all_reduce=False)\n"
        "finally:\n"
        "    ray.shutdown()\n"
        "print(json.dumps({'checks': found.checks, 'blockers': found.blockers, 'where': found.where}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    cuda = next(c for c in found["checks"] if c["name"] == "cuda")
    assert cuda["status"] == "blocker" and "Ray assigned GPU(s) 0" in cuda["detail"] and cuda["node"]
    assert found["blockers"] >= 1 and found["where"].startswith("the Ray cluster")
