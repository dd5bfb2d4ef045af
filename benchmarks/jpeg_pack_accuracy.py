"""What a JPEG pack does to accuracy, measured on the mini world: every image of every split through the pack's JPEG
round trip (``torchvision.io.encode_jpeg`` at ``--quality``, then ``decode_jpeg``, as ``robusttune data pack
--encoding jpeg`` stores and training reads them) against the raw images.

    python benchmarks/jpeg_pack_accuracy.py [--quality 90] [--seeds 0 1] [--json]

Measured: the tiny CLIP's zero-shot accuracies, and a short ``robusttune train`` run (``--method``, ``--steps``; the
same config and seed) on each world; the differences are JPEG minus raw, in accuracy points. The mini world's images are 24x24, where JPEG's 8x8
blocks are a third of the image: a harsher test than ImageNet at 224 px (where the pack re-encodes an image that was
a JPEG already). On a real dataset measure the same way: pack the evaluation sets raw and JPEG and compare a
model's accuracy on both (README / docs/guides/cluster.md, "JPEG packs are lossy").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path


def jpeg_round_trip(images, quality: int):
    import torch
    from torchvision.io import decode_jpeg, encode_jpeg

    return torch.stack([decode_jpeg(encode_jpeg(image, quality=quality)) for image in images])


def jpeg_world(world, quality: int):
    def convert(image_set):
        return dataclasses.replace(image_set, images=jpeg_round_trip(image_set.images, quality))

    return dataclasses.replace(world, train=convert(world.train), val=convert(world.val), test=convert(world.test),
                               ood={name: convert(s) for name, s in world.ood.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality 1..100 (default 90, the pack's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    parser.add_argument("--method", default="ft", help="the trained run's method (default ft: vanilla fine-tuning)")
    parser.add_argument("--steps", type=int, default=40, help="the trained run's steps (default 40, two epochs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 100:
        print("jpeg_pack_accuracy: --quality must lie in 1..100", file=sys.stderr)
        return 2

    import robusttune.training.world as world_module
    from robusttune import api
    from robusttune.api.common import cache_directory
    from robusttune.config import default_world
    from robusttune.training.evaluate import evaluate

    cache = cache_directory(None)
    prepared = world_module.prepare_world(default_world(), cache)
    raw_world = prepared.world
    lossy_world = jpeg_world(raw_world, args.quality)
    changed = float((lossy_world.test.images.float() - raw_world.test.images.float()).abs().mean())
    zero_shot = {}
    for name, world in (("raw", raw_world), ("jpeg", lossy_world)):
        zero_shot[name] = evaluate(prepared.classifier(), dataclasses.replace(prepared, world=world).task().eval_sets)
    trained: dict[str, list[dict[str, float]]] = {"raw": [], "jpeg": []}
    real_load = world_module.load_world
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, world in (("raw", raw_world), ("jpeg", lossy_world)):
            world_module.load_world = lambda config, cache_dir, world=world: world  # training reads this world
            try:
                for seed in args.seeds:
                    config = {"seed": seed, "method": {"name": args.method}, "steps": args.steps}
                    run = api.train(config, out=Path(tmp) / f"{name}-{seed}", cache_dir=cache)
                    trained[name].append({k: v for k, v in run.metrics.items() if isinstance(v, float)})
            finally:
                world_module.load_world = real_load

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return sum(row[key] for row in rows) / len(rows)

    keys = sorted(set(zero_shot["raw"]) & set(zero_shot["jpeg"]))
    train_keys = sorted(set(trained["raw"][0]) & set(trained["jpeg"][0]))
    figures = {
        "quality": args.quality, "seeds": args.seeds, "method": args.method, "steps": args.steps,
        "mean_abs_pixel_change": round(changed, 2),
        "zero_shot": {k: {"raw": zero_shot["raw"][k], "jpeg": zero_shot["jpeg"][k],
                          "delta_points": round(100 * (zero_shot["jpeg"][k] - zero_shot["raw"][k]), 2)} for k in keys},
        "trained": {k: {"raw": mean(trained["raw"], k), "jpeg": mean(trained["jpeg"], k),
                        "delta_points": round(100 * (mean(trained["jpeg"], k) - mean(trained["raw"], k)), 2)}
                    for k in train_keys if k.endswith("acc") or k.startswith("ood")},
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    print(f"JPEG q{args.quality} round trip: mean |pixel change| {changed:.2f} of 255")
    for part in ("zero_shot", "trained"):
        for key, row in figures[part].items():
            print(f"{part:9s} {key:24s} raw {row['raw']:.4f}  jpeg {row['jpeg']:.4f}  delta {row['delta_points']:+.2f} points")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
