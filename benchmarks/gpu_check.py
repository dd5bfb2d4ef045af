"""The GPU path on a real GPU, in one short run: ViT-B/32 (random weights) trained a few steps per strategy on CUDA
under bf16 autocast, with every tensor checked to be on the GPU, then the step-cost comparison on the GPU.

    python benchmarks/gpu_check.py [--batch-size 128] [--json]

Exits 2 (one line on stderr) when no CUDA device is visible. The last line (``--json``) holds per strategy the
loss and the seconds per step, the images/s of the clean forward, and the CUDA peak memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; nothing to check", file=sys.stderr)
        return 2
    from robusttune.config import TrainConfig
    from robusttune.models.classifier import frozen_copy
    from robusttune.models.clip import build_classifier, create_clip
    from robusttune.training.device import Placement
    from robusttune.training.loop import StepComputer

    placement = Placement.of("auto", "auto")
    torch.manual_seed(0)
    clip, tokenizer = create_clip("ViT-B-32", None)
    started = time.perf_counter()
    student = build_classifier(clip, tokenizer, [f"class {i}" for i in range(1000)], ["a photo of a {}."])
    head_seconds = time.perf_counter() - started
    student.to(placement.device)
    images_u8 = torch.randint(0, 256, (args.batch_size, 3, 224, 224), dtype=torch.uint8).pin_memory()
    labels = torch.randint(0, 1000, (args.batch_size,)).to(placement.device)
    strategies = {
        "vanilla": dict(region="none", w_distill=0.0),
        "object_single": dict(region="object", refill="single", mask_threshold=0.3),
        "context_multi_gradcam": dict(region="context", refill="multi", mask_threshold=0.3, cam="gradcam"),
        "random_none": dict(region="random", refill="none", mask_threshold=0.75),
    }
    results = {}
    for name, overrides in strategies.items():
        model = frozen_copy(student).requires_grad_(True).train()
        computer = StepComputer(TrainConfig(**overrides), model, frozen_copy(student), placement)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        scaler = placement.grad_scaler()
        times = []
        for step in range(args.steps + 1):  # step 0 warms up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss, parts = computer.loss(model.prepare(images_u8), labels, step)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        on_gpu = loss.device.type == "cuda" and all(p.device.type == "cuda" for p in model.parameters())
        on_gpu = on_gpu and all(p.grad is None or p.grad.device.type == "cuda" for p in model.parameters())
        if not on_gpu or not torch.isfinite(loss):
            print(f"gpu_check: {name}: loss {float(loss)} on {loss.device}; a tensor left the GPU", file=sys.stderr)
            return 1
        results[name] = {"loss": round(float(loss), 4), "seconds_per_step": round(sorted(times[1:])[len(times) // 2 - 1], 4),
                         **{k: round(v, 4) for k, v in parts.items()}}
    with torch.inference_mode(), placement.autocast():
        batch = student.prepare(images_u8)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            student(batch)
        torch.cuda.synchronize()
    payload = {"device": torch.cuda.get_device_name(placement.device), "precision": placement.describe(),
               "batch_size": args.batch_size, "zero_shot_head_seconds_1000_classes": round(head_seconds, 2),
               "strategies": results, "eval_images_per_second": round(5 * args.batch_size / (time.perf_counter() - t0), 1),
               "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    for name, row in results.items():
        print(f"{name:<24} loss {row['loss']:.4f}  {1000 * row['seconds_per_step']:.1f} ms/step")
    if args.json:
        print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
