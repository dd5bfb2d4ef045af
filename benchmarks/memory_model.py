"""The memory model (``robusttune.search.memory``) against measured peaks of real CPU steps.

For the mini world's tiny CLIP and ViT-B/32 (random weights, a 1000-class head), each at two micro-batches, vanilla
FT and the paper's method (object mask, single refill, relevance CAM): the predicted peak (weights, teacher, AdamW's
moments, gradients, the activations counted with saved-tensor hooks, the CAM's maps, the batch) against the peak
resident memory of a fresh process that builds the same models and runs three training steps as the loop does
(``zero_grad``, micro-batch loss, backward, clipping, AdamW), less its resident memory before the models were built.
glibc is told to map every allocation above 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the resident
set as they do the CUDA caching allocator's books; the CPU runs fp32 (a CPU trial's ``precision: auto``).

    python benchmarks/memory_model.py            # the table; --json for one JSON object
    python benchmarks/memory_model.py --quick    # the tiny CLIP only (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = [("tiny", 64), ("tiny", 256), ("ViT-B-32", 4), ("ViT-B-32", 12)]
METHODS = {"ft": {"method": "ft"}, "object-single": {"region": "object", "refill": "single"}}
STEPS = 2  # the second step holds AdamW's moments as every later one


def _classifier(model: str, mode=None):
    import torch

    if model == "tiny":
        from robusttune.config import TinyClipConfig
        from robusttune.models.classifier import ImageClassifier
        from robusttune.models.tiny import create_tiny_clip

        torch.manual_seed(0)
        clip = create_tiny_clip(TinyClipConfig(), image_size=32, vocab_size=64)
        head = torch.nn.functional.normalize(torch.randn(100, clip.visual.output_dim), dim=-1) * 100
        return ImageClassifier(clip.visual, head, mean=(0.5,) * 3, std=(0.25,) * 3), (3, 32, 32)
    from robusttune.models.shapes import shaped_classifier, vision_shape

    return shaped_classifier(model, mode=mode), (3, *vision_shape(model).image_size)


def _config(method: str, batch: int):
    from robusttune.config import TrainConfig, with_method

    return TrainConfig.model_validate(with_method({**METHODS[method], "batch_size": batch, "device": "cpu",
                                                   "precision": "fp32"}))


def measure(model: str, method: str, batch: int) -> dict:
    """Run in a fresh process: the peak resident bytes of STEPS training steps above the resident bytes before."""
    import torch

    torch.set_num_threads(1)
    from robusttune.models.classifier import frozen_copy
    from robusttune.training.loop import StepComputer, make_optimizer, optimized_parameters
    from robusttune.training.device import CPU_FP32

    def hwm() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def steps(student, images, labels, config, count):
        teacher = frozen_copy(student)
        computer = StepComputer(config, student.train(), teacher, CPU_FP32)
        params = optimized_parameters(student, computer.method)
        optimizer = make_optimizer(params, config, CPU_FP32)
        for step in range(count):
            optimizer.zero_grad(set_to_none=True)
            loss, _ = computer.loss(student.prepare(images), labels, step)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()

    # a warm-up on the tiny CLIP loads every kernel and library page the steps touch; then the high-water mark is
    # cleared (Linux: clear_refs 5), so the peak is the steps' own
    warm, warm_shape = _classifier("tiny")
    steps(warm, torch.zeros(2, *warm_shape, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), _config(method, 2), 2)
    del warm
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    config = _config(method, batch)
    generator = torch.Generator().manual_seed(0)
    before = rss()
    student, shape = _classifier(model)
    images = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, student.num_classes, (batch,), generator=generator)
    started = time.perf_counter()
    steps(student, images, labels, config, STEPS)
    peak = hwm()
    return {"measured": peak - before, "seconds": time.perf_counter() - started}


def predict(model: str, method: str, batch: int) -> dict:
    from robusttune.models.shapes import fake_mode
    from robusttune.search.memory import Model, count_method, estimate

    mode = None if model == "tiny" else fake_mode()
    student, shape = _classifier(model, mode)
    config = _config(method, batch)
    described = count_method(config, Model(student, shape, mode, model), None)
    row = estimate(described, method=method, micro=batch, accum_steps=1, dtype="fp32",
                   refills=method != "ft")
    return {"predicted": row.peak, "parts": row.parts, "activations_per_image": row.activations_per_image}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny CLIP only")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--measure", nargs=3, metavar=("MODEL", "METHOD", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        model, method, batch = args.measure
        print(json.dumps(measure(model, method, int(batch))))
        return 0
    import torch

    torch.set_num_threads(1)
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    for model, batch in CASES:
        if args.quick and model != "tiny":
            continue
        for method in METHODS:
            predicted = predict(model, method, batch)
            done = subprocess.run([sys.executable, __file__, "--measure", model, method, str(batch)],
                                  capture_output=True, text=True, env=env, check=True)
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            error = predicted["predicted"] / measured["measured"] - 1
            rows.append({"model": model, "method": method, "batch": batch, **predicted, **measured, "error": error})
            if not args.json:
                print(f"{model:<9} {method:<14} batch {batch:>4}: predicted {predicted['predicted'] / 2**20:8.1f} MiB, "
                      f"measured {measured['measured'] / 2**20:8.1f} MiB ({100 * error:+.1f}%; activations "
                      f"{predicted['activations_per_image'] / 2**20:.2f} MiB/image; {measured['seconds']:.0f} s)",
                      flush=True)
    worst = max(abs(r["error"]) for r in rows)
    if args.json:
        print(json.dumps({"rows": rows, "worst_error": worst}))
    else:
        print(f"worst error {100 * worst:.1f}% (target: within 20%)")
    return 0 if worst <= 0.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
