"""Wall time per training step of vanilla FT, FT + FD (clean) and FT + FD with object-mask single-fill,
on the same model, batch and thread count, measured side by side (interleaved rounds, medians).

    python benchmarks/step_cost.py [--model tiny|ViT-B-32] [--batch-size B] [--threads K] [--rounds R]
                                   [--device auto|cpu|cuda] [--precision auto|fp32|bf16|fp16] [--compile] [--json]
    python benchmarks/step_cost.py --count [--model ...] [--device ...] [--json]

Also timed, in the same rounds: the counterfactual and vanilla steps with *explicit* attention in every pass
(probabilities materialised, as before fused attention), and the vanilla step through open_clip's own
``visual(x)`` forward. Prints a table, then (with --json) one JSON object as the last line with seconds per step,
the ratios ``cf_over_ft``, ``fused_over_explicit_cf``, ``fused_over_explicit_ft``, ``ft_over_open_clip`` and
peak memory (host RSS; CUDA peak allocation on a GPU). A step is the training loop's: the loss, its ``StepHealth``
(no host read), backward, clipping and AdamW (fused on CUDA); ``--compile`` runs it with ``compile: true``.

``--count`` times nothing: for one step of each method (with fused AdamW, as on CUDA) it counts the aten ops the host
dispatches (``torch.profiler``: ops called from Python or autograd, not those inside other ops), eager and with the
blocks compiled, and the host reads (``item``/``float``/``bool`` of a tensor, data-dependent shapes), 0.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import contextlib

import torch

from robusttune.config import CamMethod, TrainConfig, default_world, with_method
from robusttune.models import classifier
from robusttune.models.classifier import frozen_copy
from robusttune.training.device import Placement
from robusttune.training.loop import StepComputer, StepHealth, compiled_blocks, make_optimizer

CF = dict(region="object", refill="single", mask_threshold=0.3, w_distill=1.0)
COUNTED = {
    "ft": dict(region="none", w_distill=0.0),
    "ft_fd": dict(region="none", w_distill=1.0),
    "cf_object_single": CF,
    "cf_context_multi_gradcam": dict(region="context", refill="multi", mask_threshold=0.3, cam="gradcam"),
    "cf_random_none": dict(region="random", refill="none", mask_threshold=0.75),
}
METHODS = {
    "ft": dict(region="none", w_distill=0.0),
    "ft_fd": dict(region="none", w_distill=1.0),
    "cf_object_single": CF,
    "cf_official_passes": CF,
    "ft_explicit_attention": dict(region="none", w_distill=0.0),
    "cf_explicit_attention": CF,
    "ft_open_clip_forward": dict(region="none", w_distill=0.0),
}


class OpenClipForward(StepComputer):
    """Vanilla FT through open_clip's own ``visual(x)`` (its nn.MultiheadAttention, no probabilities)."""

    def loss(self, images, labels, step):
        with self.placement.autocast():
            logits = self.student.forward_head(self.student.visual(images))
        return torch.nn.functional.cross_entropy(logits.float(), labels), {}


@contextlib.contextmanager
def explicit_attention():
    """Every pass through our forward with its attention probabilities materialised (the path before fused
    attention and before open_clip's own forward was used for passes that capture nothing)."""
    forward = classifier.vit_forward
    classifier.vit_forward = lambda visual, images, **kwargs: forward(visual, images, **{**kwargs, "capture_attention": True})
    try:
        yield
    finally:
        classifier.vit_forward = forward


class OfficialPasses(StepComputer):
    """The official code's pass structure, for context: a separate forward for the CAM, another for the
    cross-entropy, and one on the counterfactual images (3 student forwards), same definitions otherwise."""

    def loss(self, images, labels, step):
        from robusttune.training.loop import step_generator

        g = step_generator(self.config, step)
        with self.placement.autocast():
            cam_pass = self.student.run(images, cam=CamMethod.RELEVANCE)
        relevance = self.method.cam(cam_pass, labels)
        mask = self.method.patch_mask(relevance, images.shape[0], self.method.patches, g)
        with self.placement.autocast():
            task = torch.nn.functional.cross_entropy(self.student(images).float(), labels)
        cf_images, drop = self.method.counterfactual(images, mask, g)
        with self.placement.autocast():
            student_cf = self.student.run(cf_images, drop_patches=drop)
        with torch.inference_mode(), self.placement.autocast():
            teacher_cf = self.teacher.run(cf_images, drop_patches=drop)
        teacher_cf.features, teacher_cf.logits = teacher_cf.features.float().clone(), teacher_cf.logits.float().clone()
        return task + self.config.method.w_distill * self.method.distill_loss(student_cf, teacher_cf), {}


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

    generator = torch.Generator().manual_seed(0)
    return make, torch.randn(batch_size, 3, 224, 224, generator=generator), torch.randint(0, 10, (batch_size,), generator=generator)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_step(computer: StepComputer, optimizer, scaler, health: StepHealth, images, labels, step: int) -> None:
    """One step as the training loop runs it (one micro-batch, clipping at 1.0), without any host read."""
    optimizer.zero_grad(set_to_none=True)
    loss, parts = computer.loss(images, labels, step)
    health.observe(step, loss, parts)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    scaler.step(optimizer)
    scaler.update()


# ops that make the host wait for a value (inside a CPU kernel, e.g. fused AdamW's own reads, they are not dispatched)
HOST_READS = {"aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select"}


def count_step(make, images, labels, placement: Placement, overrides: dict, compiled: bool) -> dict[str, int]:
    """Aten ops the host dispatches in one training step (the third: warm-up and compilation first), and host reads."""
    from torch.profiler import ProfilerActivity, profile

    student = make().to(placement.device)
    teacher = frozen_copy(student)
    config = TrainConfig.model_validate(with_method(overrides))
    computer = StepComputer(config, student, teacher, placement)
    # fused AdamW as on CUDA (on the CPU the loop keeps PyTorch's default, per-parameter one)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    scaler, health = placement.grad_scaler(), StepHealth(placement.device)
    with compiled_blocks(student, teacher, enabled=compiled):
        for step in range(2):
            training_step(computer, optimizer, scaler, health, images, labels, step)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            training_step(computer, optimizer, scaler, health, images, labels, 2)
    events = profiler.events()
    dispatched = [e for e in events if e.name.startswith("aten::")
                  and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return {"aten_ops": len(dispatched), "compiled_regions": sum(e.name.startswith("Torch-Compiled Region") for e in events),
            "host_reads": sum(e.name in HOST_READS for e in dispatched)}


def count_main(args, placement: Placement, make, images, labels) -> int:
    rows = {}
    for name, overrides in COUNTED.items():
        rows[name] = {"eager": count_step(make, images, labels, placement, overrides, False)}
        if not args.no_compile_count:
            rows[name]["compiled"] = count_step(make, images, labels, placement, overrides, True)
    for name, row in rows.items():
        compiled = row.get("compiled", {})
        print(f"{name:<26} {row['eager']['aten_ops']:6d} aten ops eager"
              + (f", {compiled['aten_ops']:6d} compiled ({compiled['compiled_regions']} compiled regions)" if compiled else "")
              + f"; host reads {row['eager']['host_reads']}")
    if args.json:
        print(json.dumps({"model": args.model, "batch_size": args.batch_size, "device": str(placement.device),
                          "precision": placement.describe(), "per_step": rows}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (mini world) or an open_clip name, random weights")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps-per-round", type=int, default=5)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--device", default="auto", help="auto (a visible GPU, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="time the steps with the blocks compiled (compile: true)")
    parser.add_argument("--count", action="store_true", help="count aten ops and host reads per step instead of timing")
    parser.add_argument("--no-compile-count", action="store_true", help="with --count: eager only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from robusttune.cache import resolve_cache_dir

    placement = Placement.of(args.device, args.precision)
    cuda = placement.device.type == "cuda"
    make, images, labels = build(args.model, args.batch_size, resolve_cache_dir(args.cache_dir))
    images, labels = images.to(placement.device), labels.to(placement.device)
    if args.count:
        return count_main(args, placement, make, images, labels)
    students = {name: make().to(placement.device) for name in METHODS}
    computers = {}
    for name, overrides in METHODS.items():
        student = students[name]
        config = TrainConfig.model_validate(with_method(overrides))
        computer_class = {"cf_official_passes": OfficialPasses, "ft_open_clip_forward": OpenClipForward}.get(name, StepComputer)
        computers[name] = (computer_class(config, student, frozen_copy(student), placement),
                           make_optimizer(list(student.parameters()), config, placement), placement.grad_scaler(),
                           StepHealth(placement.device))
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for round_index in range(args.rounds + 1):  # round 0 warms up (and compiles)
        for name, (computer, optimizer, scaler, health) in computers.items():
            compiling = compiled_blocks(computer.student, computer.teacher, enabled=args.compile and "explicit" not in name)
            with explicit_attention() if "explicit" in name else contextlib.nullcontext(), compiling:
                if cuda:
                    torch.cuda.synchronize()
                started = time.perf_counter()
                for step in range(args.steps_per_round):
                    training_step(computer, optimizer, scaler, health, images, labels, step)
                if cuda:
                    torch.cuda.synchronize()
            if round_index:
                times[name].append((time.perf_counter() - started) / args.steps_per_round)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "model": args.model, "batch_size": args.batch_size, "threads": args.threads, "compile": args.compile,
        "device": str(placement.device), "precision": placement.describe(),
        "seconds_per_step": {k: round(v, 5) for k, v in seconds.items()},
        "ft_fd_over_ft": round(seconds["ft_fd"] / seconds["ft"], 3),
        "cf_over_ft": round(seconds["cf_object_single"] / seconds["ft"], 3),
        "official_passes_over_ft": round(seconds["cf_official_passes"] / seconds["ft"], 3),
        "fused_over_explicit_cf": round(seconds["cf_object_single"] / seconds["cf_explicit_attention"], 3),
        "fused_over_explicit_ft": round(seconds["ft"] / seconds["ft_explicit_attention"], 3),
        "ft_over_open_clip": round(seconds["ft"] / seconds["ft_open_clip_forward"], 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **({"cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if cuda else {}),
    }
    for name, value in seconds.items():
        print(f"{name:<20} {1000 * value:8.1f} ms/step   x{value / seconds['ft']:.2f}")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
