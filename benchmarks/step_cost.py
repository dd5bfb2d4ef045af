"""Wall time per training step of vanilla FT, FT + FD (clean) and FT + FD with object-mask single-fill,
on the same model, batch and thread count, measured side by side (interleaved rounds, medians).

    python benchmarks/step_cost.py [--model tiny|ViT-B-32] [--batch-size B] [--threads K] [--rounds R] [--json]

Prints a table, then (with --json) one JSON object as the last line with seconds per step of each method,
the ratio ``cf_over_ft`` (exact counterfactual method / vanilla FT), and peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from robusttune.config import CamMethod, TrainConfig, default_world
from robusttune.models.classifier import frozen_copy
from robusttune.training.loop import StepComputer

METHODS = {
    "ft": dict(region="none", w_distill=0.0),
    "ft_fd": dict(region="none", w_distill=1.0),
    "cf_object_single": dict(region="object", refill="single", mask_threshold=0.3, w_distill=1.0),
    "cf_official_passes": dict(region="object", refill="single", mask_threshold=0.3, w_distill=1.0),
}


class OfficialPasses(StepComputer):
    """The official code's pass structure, for context: a separate forward for the CAM, another for the
    cross-entropy, and one on the counterfactual images (3 student forwards), same definitions otherwise."""

    def loss(self, images, labels, step):
        from robusttune.training.loop import step_generator

        g = step_generator(self.config, step)
        cam_pass = self.student.run(images, cam=CamMethod.RELEVANCE)
        relevance = self.cam(cam_pass, labels)
        mask = self.patch_mask(relevance, images.shape[0], self._patches(), g)
        task = torch.nn.functional.cross_entropy(self.student(images), labels)
        cf_images, drop = self.counterfactual(images, mask, g)
        student_cf = self.student.run(cf_images, drop_patches=drop)
        with torch.inference_mode():
            teacher_cf = self.teacher.run(cf_images, drop_patches=drop)
        teacher_cf.features, teacher_cf.logits = teacher_cf.features.clone(), teacher_cf.logits.clone()
        return task + self.config.w_distill * self.distill_loss(student_cf, teacher_cf), {}


def build(model_name: str, batch_size: int, cache_dir: Path):
    if model_name == "tiny":
        from robusttune.training.world import prepare_world

        prepared = prepare_world(default_world(), cache_dir)
        images, labels = prepared.task().train.batch(torch.arange(batch_size))
        images = prepared.classifier().prepare(images)
        return prepared.classifier, images, labels
    from robusttune.models.clip import build_classifier, create_clip

    def make():
        torch.manual_seed(0)
        clip, tokenizer = create_clip(model_name, None)
        return build_classifier(clip, tokenizer, [f"class {i}" for i in range(10)], ["a photo of a {}."])

    return make, torch.randn(batch_size, 3, 224, 224), torch.randint(0, 10, (batch_size,))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (mini world) or an open_clip name, random weights")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps-per-round", type=int, default=5)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from robusttune.cache import resolve_cache_dir

    make, images, labels = build(args.model, args.batch_size, resolve_cache_dir(args.cache_dir))
    students = {name: make() for name in METHODS}
    computers = {}
    for name, overrides in METHODS.items():
        student = students[name]
        computer_class = OfficialPasses if name == "cf_official_passes" else StepComputer
        computers[name] = (computer_class(TrainConfig(**overrides), student, frozen_copy(student)),
                           torch.optim.AdamW(student.parameters(), lr=1e-5))
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for name, (computer, optimizer) in computers.items():
            started = time.perf_counter()
            for step in range(args.steps_per_round):
                optimizer.zero_grad(set_to_none=True)
                loss, _ = computer.loss(images, labels, step)
                loss.backward()
                optimizer.step()
            if round_index:
                times[name].append((time.perf_counter() - started) / args.steps_per_round)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "model": args.model, "batch_size": args.batch_size, "threads": args.threads,
        "seconds_per_step": {k: round(v, 5) for k, v in seconds.items()},
        "ft_fd_over_ft": round(seconds["ft_fd"] / seconds["ft"], 3),
        "cf_over_ft": round(seconds["cf_object_single"] / seconds["ft"], 3),
        "official_passes_over_ft": round(seconds["cf_official_passes"] / seconds["ft"], 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    for name, value in seconds.items():
        print(f"{name:<20} {1000 * value:8.1f} ms/step   x{value / seconds['ft']:.2f}")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
