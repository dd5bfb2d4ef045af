"""The GPU path on a real GPU, measured at the paper's batch (512) in one short run (a few minutes on one H100/H200):

    python benchmarks/gpu_check.py [--batch-size 512] [--steps 4] [--loader-images 3072] [--workers 1,4,8] [--json]
    python benchmarks/gpu_check.py --smoke [--json]   # checks this script on the CPU at toy sizes (figures meaningless)

ViT-B/32 (random weights, a 1,000-class head), per strategy (vanilla FT; object mask + single refill with the relevance
CAM; context + multi refill with Grad-CAM; random mask + no refill), each step as the training loop runs it (the loss,
its on-device ``StepHealth``, backward, clipping, AdamW fused on CUDA), the uint8 batch copied from pinned memory:

* ``steps``: seconds per step and images/s in bf16 autocast, in fp32 and in fp32 with TF32 (what an fp32 run uses on
  CUDA), and in bf16 with explicit attention in every pass (probabilities materialised) against the fused attention;
  the CUDA peak memory of each (weights, AdamW state, activations); every tensor checked to be on the GPU;
* ``host_syncs``: host synchronisations per step of the real loop (``train`` on an in-memory synthetic task, bf16):
  CUDA's sync debug mode counts the synchronising calls, a dispatch hook the copies from pageable memory, and one
  heartbeat that reads the loss is counted on its own;
* ``loader``: images/s and images/s per worker of the DataLoader (pinned memory) on a JPEG folder, a lossless pack
  and a JPEG pack, against each strategy's bf16 images/s (``workers_needed``: loader workers that keep the GPU fed);
* ``eval_images_per_second``: bf16 inference;
* ``data_parallel``: ``train`` on two processes (``workers: 2``, NCCL, one GPU each) against ``accum_steps 2`` in one
  process on the same global batch (object mask + single refill): equal weights within bf16 tolerance, the
  all-reduce's bus bandwidth (64 MB), a rank's CUDA peak against the memory model's prediction. With fewer than two
  GPUs it is skipped in one line; ``--cpu-dry-run`` runs only it, on the CPU with gloo and the tiny CLIP.

Exits 2 (one line on stderr) when no CUDA device is visible, unless ``--smoke``; 1 when a tensor left the GPU or a loss
was not finite. The last line (``--json``) holds everything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

STRATEGIES = {
    "vanilla": dict(region="none", w_distill=0.0),
    "object_single": dict(region="object", refill="single", mask_threshold=0.3),
    "context_multi_gradcam": dict(region="context", refill="multi", mask_threshold=0.3, cam="gradcam"),
    "random_none": dict(region="random", refill="none", mask_threshold=0.75),
}
SYNC_WARNING = "called a synchronizing CUDA operation"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def on_device(model, loss, device: torch.device) -> bool:
    return loss.device.type == device.type and all(
        p.device.type == device.type and (p.grad is None or p.grad.device.type == device.type) for p in model.parameters())


def time_strategy(student, overrides, placement, images_u8, labels, steps: int, explicit: bool) -> dict:
    """Seconds per step (``steps`` steps between two synchronisations, after one warm-up step), images/s, peak MB."""
    from step_cost import explicit_attention, training_step

    from robusttune.config import TrainConfig, with_method
    from robusttune.models.classifier import frozen_copy
    from robusttune.training.loop import StepComputer, StepHealth, make_optimizer

    device = placement.device
    placement.configure()  # TF32 or not, process-wide
    model, teacher = frozen_copy(student).requires_grad_(True).train(), frozen_copy(student)
    config = TrainConfig.model_validate(with_method(overrides))
    computer = StepComputer(config, model, teacher, placement)
    optimizer = make_optimizer(list(model.parameters()), config, placement)
    scaler, health = placement.grad_scaler(), StepHealth(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with explicit_attention() if explicit else contextlib.nullcontext():
        training_step(computer, optimizer, scaler, health, model.prepare(images_u8), labels, 0)  # warm-up
        sync(device)
        started = time.perf_counter()
        for step in range(1, steps + 1):
            training_step(computer, optimizer, scaler, health, model.prepare(images_u8), labels, step)
        sync(device)
        seconds = (time.perf_counter() - started) / steps
    reading = health.read()
    ok = on_device(model, health.loss, device) and reading.bad_step is None
    row = {"seconds_per_step": round(seconds, 4), "images_per_s": round(len(labels) / seconds, 1),
           "loss": round(reading.loss, 4), "ok": ok}
    if device.type == "cuda":
        row["peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    del model, teacher, computer, optimizer
    return row


class PageableCopies(TorchDispatchMode):
    """Copies from host memory that is not pinned to another device (each one makes the host wait for the copy)."""

    def __init__(self):
        super().__init__()
        self.events: list[int] = []  # the count of on_step calls when each happened
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        source = target = None
        if func is torch.ops.aten._to_copy.default:
            source, target = args[0], kwargs.get("device")
        elif func is torch.ops.aten.copy_.default:
            source, target = args[1], args[0].device
        if source is not None and target is not None and source.device.type == "cpu" and torch.device(target).type != "cpu" \
                and not source.is_pinned():
            self.events.append(self.calls)
        return func(*args, **kwargs)


def loop_syncs(student, overrides, placement, batch: int, steps: int, classes: int) -> dict:
    """Host synchronisations per step of ``train`` itself, between its progress callbacks (the evaluation at the end
    is left out), and those of one heartbeat that reads the loss."""
    from robusttune.config import TrainConfig, with_method
    from robusttune.data.sets import EvalSet, TaskData, TensorImages
    from robusttune.models.classifier import frozen_copy
    from robusttune.training.loop import train

    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (batch * steps, 3, 224, 224), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (batch * steps,), generator=generator)
    task = TaskData(TensorImages(images, labels), (EvalSet("id_acc", TensorImages(images[:batch], labels[:batch])),), classes)
    config = TrainConfig.model_validate(with_method({**overrides, "steps": steps, "batch_size": batch, "eval_batch_size": batch, "lr": 1e-5}))
    model = frozen_copy(student).requires_grad_(True).train()
    cuda = placement.device.type == "cuda"
    marks: list[tuple[int, int]] = []  # (syncs at entry, syncs after) of each on_step call
    heartbeat_at = max(1, steps // 2)
    copies = PageableCopies()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def syncs() -> int:
            return sum(SYNC_WARNING in str(w.message) for w in caught)

        def on_step(progress) -> None:
            entry = syncs()
            if progress["step"] == heartbeat_at:
                progress["loss"]  # a heartbeat that shows the loss: its one host read
            marks.append((entry, syncs()))
            copies.calls += 1

        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with copies:
                result = train(config, model, frozen_copy(student), task, placement=placement, on_step=on_step)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    intervals = steps - 1  # between consecutive callbacks: whole steps, no evaluation
    step_syncs = sum(marks[k + 1][0] - marks[k][1] for k in range(intervals)) if cuda else None
    pageable = sum(1 for when in copies.events if 1 <= when < steps)
    return {"status": result.status, "steps_counted": intervals,
            "syncs_per_step": None if step_syncs is None else round(step_syncs / intervals, 3),
            "pageable_copies_per_step": round(pageable / intervals, 3),
            "heartbeat_read_syncs": (marks[heartbeat_at - 1][1] - marks[heartbeat_at - 1][0]) if cuda else None}


def loader_rates(images: int, batch: int, workers: list[int]) -> dict:
    """Steady images/s of the DataLoader (pinned memory, persistent workers: the second pass over the images is timed)
    on a JPEG folder, a raw pack and a JPEG pack, per worker count."""
    from data_throughput import synthetic_imagenet

    from robusttune.data.imagenet import ImageFolderSet, imagenet_samples
    from robusttune.data.packed import PackedImages, open_pack, pack_folder
    from robusttune.data.sets import DatasetImages, Loading, batch_loader, sequential_batches
    from robusttune.models.clip import preprocess_for

    transform = preprocess_for(224)
    rates: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        synthetic_imagenet(root, images)
        samples = imagenet_samples(root)
        for encoding in ("raw", "jpeg"):
            pack_folder(root, Path(tmp) / encoding, kind="imagenet", transform=transform, encoding=encoding,
                        workers=os.cpu_count() or 1)
        sources = {"jpeg_folder": DatasetImages(ImageFolderSet(samples, transform, root=root)),
                   "raw_pack": DatasetImages(PackedImages(open_pack(Path(tmp) / "raw"))),
                   "jpeg_pack": DatasetImages(PackedImages(open_pack(Path(tmp) / "jpeg")))}
        for name, source in sources.items():
            rates[name] = {}
            for count in workers:
                loader = batch_loader(source, sequential_batches(len(source), batch),
                                      Loading(count, pin_memory=True, persistent=True))
                for _ in loader:  # warm-up: workers started, files in the page cache
                    pass
                started, seen = time.perf_counter(), 0
                for chunk, _ in loader:
                    seen += len(chunk)
                rates[name][str(count)] = round(seen / (time.perf_counter() - started), 1)
                del loader
    return rates


DP_STRATEGY = "object_single"


def _dp_setup(model: str, classes: int, batch: int, steps: int, device: str, precision: str, *, workers: int):
    """The same student, teacher, synthetic task and config in every process (seeded): ``workers`` data-parallel
    processes at accum_steps 1, or (``workers=1``) one process at ``accum_steps 2`` (``TrainConfig.in_one_process``)."""
    from robusttune.config import TrainConfig, with_method
    from robusttune.data.sets import EvalSet, TaskData, TensorImages
    from robusttune.models.classifier import ImageClassifier, frozen_copy

    torch.manual_seed(0)
    if model == "tiny":
        from robusttune.config import TinyClipConfig
        from robusttune.models.tiny import create_tiny_clip

        clip = create_tiny_clip(TinyClipConfig(), image_size=32, vocab_size=64)
        head = torch.nn.functional.normalize(torch.randn(classes, clip.visual.output_dim), dim=-1) * 100
        student, shape = ImageClassifier(clip.visual, head, mean=(0.5,) * 3, std=(0.25,) * 3), (3, 32, 32)
    else:
        from robusttune.models.shapes import shaped_classifier

        student, shape = shaped_classifier(model, num_classes=classes), (3, 224, 224)
    teacher = frozen_copy(student)
    with torch.no_grad():  # away from the teacher: the distillation has gradients
        for parameter in student.parameters():
            parameter.add_(1e-3 * torch.randn_like(parameter))
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (batch * steps, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (batch * steps,), generator=generator)
    task = TaskData(TensorImages(images, labels), (EvalSet("id_acc", TensorImages(images[:batch], labels[:batch])),), classes)
    config = TrainConfig.model_validate(with_method({
        **STRATEGIES[DP_STRATEGY], "steps": steps, "batch_size": batch, "eval_batch_size": batch, "lr": 1e-4,
        "workers": 2, "device": device, "precision": precision}))
    return student, teacher, task, (config if workers == 2 else config.in_one_process())


def _dp_rank(rank: int, backend: str, init: str, spec: dict, out) -> None:
    """One of two data-parallel processes: ``train`` with its shard, then the all-reduce's bandwidth."""
    import torch.distributed as dist

    from robusttune.training.device import Placement
    from robusttune.training.distributed import Shard
    from robusttune.training.loop import train

    torch.set_num_threads(1)
    cuda = backend == "nccl"
    if cuda:
        torch.cuda.set_device(rank)
        torch.cuda.reset_peak_memory_stats(rank)
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=2)
    try:
        device = f"cuda:{rank}" if cuda else "cpu"
        student, teacher, task, config = _dp_setup(**{**spec, "device": device}, workers=2)
        placement = Placement.of(device, config.precision)
        result = train(config, student, teacher, task, placement=placement, shard=Shard.current())
        peak = torch.cuda.max_memory_allocated(rank) if cuda else None
        flat = torch.ones(16 * 2**20, device=device)  # 64 MB of fp32
        dist.all_reduce(flat)
        sync(flat.device)
        started = time.perf_counter()
        for _ in range(5):
            dist.all_reduce(flat)
        sync(flat.device)
        bandwidth = 5 * flat.numel() * 4 / (time.perf_counter() - started)  # two ranks: bus bytes = bytes
        if rank == 0:
            out.put({"status": result.status, "state": {k: v.detach().float().cpu().numpy() for k, v in student.state_dict().items()},
                     # numpy: pickled by value (a tensor would travel by a file descriptor this process closes on exit)
                     "peak_bytes": peak, "all_reduce_bytes_per_s": bandwidth})
    finally:
        dist.destroy_process_group()


def data_parallel_check(*, cpu: bool, batch: int, steps: int, timeout: float = 240.0) -> dict:
    """``train --workers 2`` (NCCL on two GPUs; gloo on the CPU with ``cpu``) against ``accum_steps 2`` in one process
    on the same global batch: equal weights (within bf16 tolerance on GPUs), the all-reduce's bandwidth, and the
    peak memory of a rank against the memory model's prediction."""
    import multiprocessing

    if not cpu and torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s) visible: the data-parallel check needs two (NCCL "
                           f"refuses two ranks on one GPU); --cpu-dry-run runs it on the CPU with gloo"}
    spec = {"model": "tiny" if cpu else "ViT-B-32", "classes": 10 if cpu else 1000, "batch": batch, "steps": steps,
            "precision": "fp32" if cpu else "bf16"}
    backend = "gloo" if cpu else "nccl"
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        init = f"file://{folder}/rendezvous"
        ranks = [context.Process(target=_dp_rank, args=(rank, backend, init, spec, out), daemon=True) for rank in range(2)]
        started = time.perf_counter()
        for process in ranks:
            process.start()
        try:
            ranked = out.get(timeout=timeout)
        finally:
            for process in ranks:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
        dp_seconds = time.perf_counter() - started
    from robusttune.training.device import Placement
    from robusttune.training.loop import train

    device = "cpu" if cpu else "cuda:0"
    student, teacher, task, config = _dp_setup(**{**spec, "device": device}, workers=1)
    initial = {k: v.detach().float().cpu().clone() for k, v in student.state_dict().items()}
    alone = train(config, student, teacher, task, placement=Placement.of(device, config.precision))
    state = {k: v.detach().float().cpu() for k, v in student.state_dict().items()}
    differences = [float((state[k] - torch.from_numpy(ranked["state"][k])).abs().max()) for k in state]
    moved = max(float((state[k] - initial[k]).abs().max()) for k in state)  # training changed the weights
    tolerance = 1e-5 if cpu else 2e-2  # fp32 sums in another order; bf16 activations
    predicted = None
    if not cpu:
        from robusttune.models.shapes import fake_mode, shaped_classifier
        from robusttune.search.memory import Model, count_method, estimate

        mode = fake_mode()
        described = count_method(config, Model(shaped_classifier("ViT-B-32", num_classes=1000, mode=mode),
                                                (3, 224, 224), mode, "ViT-B-32"), torch.bfloat16)
        predicted = estimate(described, method=DP_STRATEGY, micro=batch // 2, accum_steps=1, dtype="bfloat16",
                             refills=True).peak
    peak = ranked["peak_bytes"]
    return {"backend": backend, "model": spec["model"], "global_batch": batch, "steps": steps,
            "status": [ranked["status"], alone.status], "max_weight_difference": max(differences),
            "tolerance": tolerance, "equal": max(differences) <= tolerance and moved > 10 * tolerance,
            "weights_moved": moved,
            "all_reduce_gb_per_s": round(ranked["all_reduce_bytes_per_s"] / 1e9, 3),
            "rank_peak_bytes": peak, "predicted_peak_bytes": predicted,
            "peak_over_predicted": None if not (peak and predicted) else round(peak / predicted, 3),
            "data_parallel_seconds": round(dp_seconds, 1)}


def print_data_parallel(row: dict) -> None:
    if "skipped" in row:
        print(f"data-parallel check: skipped: {row['skipped']}")
        return
    peak = ("" if row["rank_peak_bytes"] is None else
            f"; a rank's peak {row['rank_peak_bytes'] / 2**30:.2f} GiB, predicted {row['predicted_peak_bytes'] / 2**30:.2f} "
            f"GiB ({row['peak_over_predicted']}x)")
    print(f"data-parallel check ({row['backend']}, {row['model']}, global batch {row['global_batch']}, {row['steps']} "
          f"steps): 2 workers vs accum_steps 2 in one process: max weight difference {row['max_weight_difference']:.2e} "
          f"({'equal' if row['equal'] else 'NOT EQUAL'} within {row['tolerance']:g}; training moved them "
          f"{row['weights_moved']:.2e}); all-reduce "
          f"{row['all_reduce_gb_per_s']} GB/s{peak}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--loader-images", type=int, default=3072)
    parser.add_argument("--loader-batch", type=int, default=128)
    parser.add_argument("--workers", default="1,4,8", help="loader worker counts (capped at the CPUs)")
    parser.add_argument("--smoke", action="store_true", help="run on the CPU at toy sizes, to check this script")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cpu-dry-run", action="store_true", help="only the data-parallel check, on the CPU with gloo "
                        "and the tiny CLIP (the same code as on GPUs)")
    parser.add_argument("--dp-batch", type=int, default=64, help="the data-parallel check's global batch")
    args = parser.parse_args(argv)
    if args.cpu_dry_run:
        row = data_parallel_check(cpu=True, batch=8, steps=2)
        print_data_parallel(row)
        if args.json:
            print(json.dumps({"data_parallel": row}))
        return 0 if row["equal"] and row["status"] == ["complete", "complete"] else 1
    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_check: no CUDA device is visible; nothing to check", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # step_cost, data_throughput
    from robusttune.models.clip import build_classifier, create_clip
    from robusttune.training.device import Placement

    if args.smoke:
        args.batch_size, args.steps, args.loader_images, args.loader_batch = 2, 1, 16, 8
        args.workers = "1,2"
    device = torch.device("cuda", torch.cuda.current_device()) if not args.smoke else torch.device("cpu")
    classes = 10 if args.smoke else 1000
    workers = sorted({min(int(w), os.cpu_count() or 1) for w in args.workers.split(",")})
    torch.manual_seed(0)
    clip, tokenizer = create_clip("ViT-B-32", None)
    started = time.perf_counter()
    student = build_classifier(clip, tokenizer, [f"class {i}" for i in range(classes)], ["a photo of a {}."], device=device)
    head_seconds = time.perf_counter() - started
    student.to(device)
    generator = torch.Generator().manual_seed(0)
    images_u8 = torch.randint(0, 256, (args.batch_size, 3, 224, 224), dtype=torch.uint8, generator=generator)
    images_u8 = images_u8.pin_memory() if device.type == "cuda" else images_u8
    labels = torch.randint(0, classes, (args.batch_size,), generator=generator).to(device)
    precisions = {"bf16": Placement(device, torch.bfloat16), "fp32": Placement(device, None, tf32=False),
                  "fp32_tf32": Placement(device, None, tf32=True)}
    steps: dict[str, dict] = {}
    for name, overrides in STRATEGIES.items():
        steps[name] = {label: time_strategy(student, overrides, placement, images_u8, labels, args.steps, False)
                       for label, placement in precisions.items()}
        steps[name]["bf16_explicit_attention"] = time_strategy(student, overrides, precisions["bf16"], images_u8, labels,
                                                               args.steps, True)
        row = steps[name]
        row["fused_over_explicit"] = round(row["bf16"]["seconds_per_step"] / row["bf16_explicit_attention"]["seconds_per_step"], 3)
        row["tf32_over_fp32"] = round(row["fp32_tf32"]["seconds_per_step"] / row["fp32"]["seconds_per_step"], 3)
    bad = [f"{name}/{label}" for name, row in steps.items() for label, value in row.items()
           if isinstance(value, dict) and not value["ok"]]
    precisions["bf16"].configure()
    host_syncs = {name: loop_syncs(student, overrides, precisions["bf16"], args.batch_size, max(3, args.steps), classes)
                  for name, overrides in STRATEGIES.items()}
    with torch.inference_mode(), precisions["bf16"].autocast():
        batch = student.prepare(images_u8)
        student(batch)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(5):
            student(batch)
        sync(device)
        eval_rate = 5 * args.batch_size / (time.perf_counter() - t0)
    loader = loader_rates(args.loader_images, args.loader_batch, workers)
    data_parallel = data_parallel_check(cpu=args.smoke, batch=8 if args.smoke else args.dp_batch, steps=2)
    most = str(max(workers))
    per_worker = {name: round(rates[most] / int(most), 1) for name, rates in loader.items()}
    needed = {name: {source: math.ceil(steps[name]["bf16"]["images_per_s"] / rate) if rate > 0 else None
                     for source, rate in per_worker.items()} for name in STRATEGIES}
    payload = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)",
               "batch_size": args.batch_size, "steps_timed": args.steps, "classes": classes,
               "zero_shot_head_seconds": round(head_seconds, 2), "steps": steps, "host_syncs": host_syncs,
               "eval_images_per_second": round(eval_rate, 1),
               "loader": {"images": args.loader_images, "batch": args.loader_batch, "images_per_s": loader,
                          "images_per_s_per_worker": per_worker, "at_workers": int(most),
                          "workers_needed_bf16": needed}, "data_parallel": data_parallel}
    for name, row in steps.items():
        print(f"{name:<24} " + "  ".join(f"{label} {1000 * row[label]['seconds_per_step']:.1f} ms"
                                          + (f" ({row[label]['peak_mb']:.0f} MB)" if "peak_mb" in row[label] else "")
                                          for label in (*precisions, "bf16_explicit_attention")))
        print(f"{'':<24} host syncs per step {host_syncs[name]['syncs_per_step']}, pageable copies per step "
              f"{host_syncs[name]['pageable_copies_per_step']}, loader workers needed {needed[name]}")
    print(f"eval {eval_rate:.0f} images/s; loader images/s per worker at {most} workers: {per_worker}")
    print_data_parallel(data_parallel)
    if args.json:
        print(json.dumps(payload))
    if data_parallel.get("equal") is False:
        bad.append("data-parallel weights differ from accum_steps 2")
    if bad or any(row["status"] != "complete" for row in host_syncs.values()):
        print(f"gpu_check: {', '.join(bad) or 'a training run failed'}: a tensor left the GPU or a loss was not finite",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
