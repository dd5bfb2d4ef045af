"""How long a trial of an ImageNet sweep takes to start, the first time and again (a second trial of the same
experiment), on a synthetic ImageNet-style layout.

    python benchmarks/trial_startup.py [--per-class 20] [--threads 2] [--json]

The layout: train and val folders of 1,000 wnid class folders with ``--per-class`` (train) and 1 (val) small JPEGs
each, ViT-B/32 with random weights saved to a local file (as a user passes OpenAI's weights file), the simple
template. A start is what a trial does before its first step: list the folders, build the model and its zero-shot
head, make the datasets (``robusttune.training.run.prepare_run``). The first start lists every folder and runs the
text tower over 1,000 prompts; the second reads the folder index and the head the first one stored. Also printed:
the bytes of one ViT-B/32 trial's checkpoints under each ``checkpoints`` policy, and as trials kept them before.
The last line (``--json``) holds ``first_start_s``, ``second_start_s``, ``ratio`` and ``checkpoint_bytes``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from robusttune.config import TaskSpec, TrainConfig
from robusttune.training.run import prepare_run


def layout(root: Path, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 1)):
        for k in range(1000):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            for j in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{j}.JPEG")


def start(spec: TaskSpec, cache: Path, experiment: Path) -> float:
    started = time.perf_counter()
    prepare_run(TrainConfig(steps=1), spec, cache, head_folders=[experiment / "heads"])
    return time.perf_counter() - started


def checkpoint_bytes(student, folder: Path) -> dict[str, int]:
    """One trial's files: the full latest checkpoint (weights + AdamW state), as kept before (plus a full copy as
    best.pt) and under each policy now (best.pt holds weights only)."""
    from robusttune.training.checkpoint import keep_checkpoints, save_checkpoint

    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    student(torch.zeros(1, 3, 224, 224)).sum().backward()
    optimizer.step()
    state = {"model": student.state_dict(), "optimizer": optimizer.state_dict(), "step": 1, "history": "[]", "config": "{}"}
    sizes = {}
    for keep in ("all", "best", "final"):
        trial = folder / keep
        trial.mkdir()
        save_checkpoint(trial / "latest.pt", state)
        save_checkpoint(trial / "best.pt", {"model": state["model"], "step": 1, "config": "{}"})
        keep_checkpoints(trial, keep)
        sizes[keep] = sum(p.stat().st_size for p in trial.glob("*.pt"))
    full = (folder / "all" / "latest.pt").stat().st_size
    return {"before": 2 * full, **sizes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from robusttune.models.clip import create_clip

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        layout(root, args.per_class)
        torch.manual_seed(0)
        clip, _ = create_clip("ViT-B-32", None)
        torch.save(clip.state_dict(), root / "vit_b32.pt")
        spec = TaskSpec.model_validate({"imagenet": {
            "model": "ViT-B-32", "pretrained": str(root / "vit_b32.pt"), "templates": "simple", "num_workers": 0,
            "train_dir": str(root / "train"), "val_dir": str(root / "val"), "val_holdout": 1000}})
        first = start(spec, root / "cache", root / "experiment")
        second = start(spec, root / "cache", root / "experiment")
        from robusttune.training.tasks import build_task

        student, _ = build_task(spec, root / "cache", head_folders=[root / "experiment" / "heads"])
        sizes = checkpoint_bytes(student, root)
    result = {"train_images": 1000 * args.per_class, "val_images": 1000, "threads": args.threads,
              "first_start_s": round(first, 2), "second_start_s": round(second, 2), "ratio": round(first / second, 1),
              "checkpoint_bytes": sizes}
    print(f"first start {first:.1f} s, second start {second:.1f} s: {first / second:.1f}x faster")
    mib = {k: f"{v / 2**20:.0f} MiB" for k, v in sizes.items()}
    print(f"ViT-B/32 checkpoints per trial: before {mib['before']}; now all {mib['all']}, best {mib['best']}, "
          f"final {mib['final']}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
