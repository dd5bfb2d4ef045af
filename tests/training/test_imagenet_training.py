"""The real-CLIP path end to end: ViT-B-32 (random weights, written to a local checkpoint file by the test)
fine-tuned on ImageNet-style folders and evaluated on an OOD folder, through ``robusttune train``."""

import json

import pytest
import torch
import yaml
from PIL import Image

pytestmark = pytest.mark.slow


def fill(root, folders, per_folder, size=40):
    generator = torch.Generator().manual_seed(0)
    for index, name in enumerate(folders):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_folder if index < 3 else 0):
            pixels = (torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{j}.png")


WNIDS = [f"n{k:08d}" for k in range(1000)]


def random_vit_b32(tmp_path):
    """A ViT-B-32 CLIP with seeded random weights, written where a config's ``pretrained`` can name it."""
    from robusttune.models.clip import create_clip

    torch.manual_seed(0)
    clip, _ = create_clip("ViT-B-32", None)
    weights = tmp_path / "vit_b32_random.pt"
    torch.save(clip.state_dict(), weights)
    return weights


def test_train_vit_b32_on_imagenet_folders(tmp_path, monkeypatch):
    from robusttune.cli import main

    weights = random_vit_b32(tmp_path)
    fill(tmp_path / "train", WNIDS, per_folder=3)
    fill(tmp_path / "val", WNIDS, per_folder=1)
    fill(tmp_path / "v2", [str(k) for k in range(1000)], per_folder=1)
    config = {
        "imagenet": {"model": "ViT-B-32", "pretrained": str(weights), "quick_gelu": False, "templates": "simple",
                     "train_dir": str(tmp_path / "train"), "val_dir": str(tmp_path / "val"),
                     "ood_dirs": {"imagenet_v2": str(tmp_path / "v2")}, "val_holdout": 2, "num_workers": 0},
        "steps": 1, "batch_size": 2, "eval_batch_size": 4, "lr": 1e-5,
        "method": {"name": "masked_distill", "region": "object", "refill": "multi", "mask_ratio": 0.25},
    }
    path = tmp_path / "imagenet.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    assert main(["train", "--config", str(path), "--out", str(out), "--json", "--threads", "2", "--cache-dir", str(cache)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1
    assert {"id_acc", "id_val_acc", "ood_imagenet_v2", "ood_mean"} <= set(rows[-1])
    assert 0 < rows[-1]["mask_fraction"] < 1
    final = torch.load(out / "final.pt", weights_only=True)
    assert final["model"]["head.weight"].shape == (1000, 512)
    # the same run from packs of the three folders (robusttune data pack, lossless) gives the same numbers
    for name, kind in (("train", "imagenet"), ("val", "imagenet"), ("v2", "imagenet_v2")):
        assert main(["data", "pack", str(tmp_path / name), str(tmp_path / f"{name}.pack"), "--kind", kind, "--json"]) == 0
    packed_config = {**config, "imagenet": {**config["imagenet"], "train_dir": str(tmp_path / "train.pack"),
                                            "val_dir": str(tmp_path / "val.pack"),
                                            "ood_dirs": {"imagenet_v2": str(tmp_path / "v2.pack")}}}
    packed_path = tmp_path / "packed.yaml"
    packed_path.write_text(yaml.safe_dump(packed_config))
    assert main(["train", "--config", str(packed_path), "--out", str(tmp_path / "packed_run"), "--json", "--threads", "2",
                 "--cache-dir", str(cache)]) == 0
    packed_rows = [json.loads(line) for line in (tmp_path / "packed_run" / "metrics.jsonl").read_text().splitlines()]
    assert packed_rows[-1]["metrics"] == rows[-1]["metrics"] and packed_rows[-1]["loss_task"] == rows[-1]["loss_task"]
    # the 1,000-class zero-shot head was built once and kept: a second run reads it instead of running the text tower
    (head,) = list((cache / "heads").glob("head-*.pt"))
    import open_clip

    monkeypatch.setattr(open_clip, "build_zero_shot_classifier", lambda *a, **k: pytest.fail("the head was rebuilt"))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "again"), "--json", "--threads", "2",
                 "--cache-dir", str(cache), "--steps", "0"]) == 0
    cached = torch.load(head, weights_only=True)["head"]
    zero_shot = torch.load(tmp_path / "again" / "final.pt", weights_only=True)["model"]["head.weight"]
    assert cached.shape == (1000, 512) and torch.equal(zero_shot, cached)  # 0 steps: the model's head is the cached one


EVERY_METHOD = [{"name": "ft"}, {"name": "lp"}, {"name": "lp_ft", "lp_fraction": 0.5}, {"name": "l2sp", "strength": 0.1},
                {"name": "flyp"}, {"name": "lipsum", "texts": 8},
                {"name": "masked_distill", "region": "object", "refill": "single"}]


def test_every_method_trains_and_resumes_vit_b32_on_imagenet_folders(tmp_path):
    """Each registered method on the real architecture and the folder path: it trains, reports the task's metrics,
    and a run stopped at its first evaluation resumes to the uninterrupted run's weights bit for bit."""
    import copy

    from helpers import assert_same_run, interrupted_then_resumed, train_config, train_run
    from robusttune.config import TaskSpec
    from robusttune.training.tasks import build_task

    weights = random_vit_b32(tmp_path)
    fill(tmp_path / "train", WNIDS, per_folder=4)
    fill(tmp_path / "val", WNIDS, per_folder=1)
    spec = TaskSpec.model_validate({"imagenet": {
        "model": "ViT-B-32", "pretrained": str(weights), "quick_gelu": False, "templates": "simple",
        "train_dir": str(tmp_path / "train"),
        "val_dir": str(tmp_path / "val"), "val_holdout": 2, "num_workers": 0}})
    student, task = build_task(spec, tmp_path / "cache")

    class Built:  # what the helpers take: a fresh zero-shot classifier per run, and the task
        def classifier(self):
            return copy.deepcopy(student)

        def task(self):
            return task

    torch.set_num_threads(2)
    for method in EVERY_METHOD:
        config = train_config(steps=2, batch_size=2, eval_every=1, eval_batch_size=4, lr=1e-4, method=method)
        whole = train_run(Built(), config)
        assert whole[1].status == "complete" and set(whole[1].metrics) >= {"id_acc", "id_val_acc"}
        resumed = interrupted_then_resumed(Built(), config, tmp_path / f"{method['name']}.pt", stop_at=1)
        assert_same_run(whole, resumed)
