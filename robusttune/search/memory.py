"""What a trial holds in its device's memory at its peak, per method, without running it on the device.

For each method of a space (and the vanilla FT baseline), at the trial's micro-batch (``batch_size / (accum_steps x
workers)``), in bytes:

* ``weights``: the classifier (fp32 master weights; FLYP's text tower too), ``teacher``: its frozen copy,
* ``grads`` and ``moments`` (AdamW's two) of what the optimizer holds (a linear probe: the head alone),
* ``activations``: the bytes saved for backward, *counted* with ``torch.autograd.graph.saved_tensors_hooks`` over
  one micro-batch's loss exactly as ``robusttune.training.loop.StepComputer`` computes it (same modules, same
  passes, under the run's autocast dtype) at one small batch (``COUNT_SIZE``, a prime no model dimension has) and
  extrapolated per image: a saved storage whose element count the batch divides is an activation, the others (the
  weights' autocast copies) a constant. Each storage counts once; the parameters themselves are not counted.
  ImageNet models are counted on fake tensors (``FakeTensorMode``: shapes, no data), so ViT-L/14 takes seconds;
  the mini world's tiny CLIP on real CPU tensors,
* ``cam_maps``: the relevance CAM's transient, counted from the attention maps the clean pass captured: their
  gradients and the fp32 copies ``robusttune.method.cam`` multiplies (the clean pass's saved tensors are live
  then, the counterfactual pass's not yet),
* ``transient``: the backward's working gradients (about two fp32 MLP activations of the micro-batch), and
  ``batch``: the uint8 batch, its normalised fp32 copy and the counterfactual images.

The peak: ``weights + teacher + moments + batch + max(activations + transient, activations at the CAM + cam_maps,
grads)`` for one micro-batch a step (gradients are freed after each step and grow as the activations are freed in
backward); with ``accum_steps > 1`` the gradients live through the next micro-batch, so they add. On a CUDA device
the process's context (``CUDA_CONTEXT_BYTES``) comes on top, and a peak must fit under ``USABLE_FRACTION`` of the
memory (the caching allocator's fragmentation).

Host memory (not the device's): the loader's batches in ``/dev/shm`` (``robusttune.search.launch.loader_need``).
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from robusttune.cache import atomic_write_json, stable_hash
from robusttune.config import Precision, TrainConfig
from robusttune.errors import ConfigError, ParameterError

MEMORY_VERSION = 1  # part of the counts' cache key
COUNT_SIZE = 23  # the micro-batch counted: a prime that divides no model dimension (tokens, widths, classes)
CUDA_CONTEXT_BYTES = 768 * 2**20  # a CUDA process's context, cuBLAS/cuDNN workspaces: outside torch's allocator
USABLE_FRACTION = 0.92  # of a GPU's memory a peak may take (the caching allocator's fragmentation)
GB = 1e9

# Devices a plan can name (``--device-type``): memory in GB as sold, dense bf16 tensor TFLOP/s and memory bandwidth
# in GB/s as published (no sparsity); ``efficiency`` is the share of the peak a ViT step reaches (stated, not measured).
DEVICE_TYPES: dict[str, dict[str, float]] = {
    "H100": {"memory_gb": 80, "bf16_tflops": 989, "bandwidth_gbs": 3350},
    "H200": {"memory_gb": 141, "bf16_tflops": 989, "bandwidth_gbs": 4800},
    "A100-80GB": {"memory_gb": 80, "bf16_tflops": 312, "bandwidth_gbs": 2039},
    "A100-40GB": {"memory_gb": 40, "bf16_tflops": 312, "bandwidth_gbs": 1555},
    "L40S": {"memory_gb": 48, "bf16_tflops": 362, "bandwidth_gbs": 864},
    "A10G": {"memory_gb": 24, "bf16_tflops": 70, "bandwidth_gbs": 600},
    "L4": {"memory_gb": 24, "bf16_tflops": 121, "bandwidth_gbs": 300},
}
# AWS instance families of cluster files -> their GPU (the memory a trial's peak is checked against)
INSTANCE_GPUS = {"p5": "H100", "p5e": "H200", "p5en": "H200", "p4d": "A100-40GB", "p4de": "A100-80GB",
                 "g6e": "L40S", "g5": "A10G", "g6": "L4"}


def device_type(name: str) -> dict[str, float]:
    """A named device's published figures (one-line error naming the known ones)."""
    for known, figures in DEVICE_TYPES.items():
        if known.lower() == str(name).lower():
            return {"name": known, **figures}
    raise ParameterError("device_type", f"must be one of {', '.join(DEVICE_TYPES)}, got '{name}'")


def instance_gpu(instance_type: str) -> str | None:
    """The GPU of an AWS instance type (``p4d.24xlarge`` -> ``A100-40GB``), None when not known."""
    return INSTANCE_GPUS.get(str(instance_type).split(".")[0].lower())


def cluster_gpus(cluster: dict) -> dict[str, str]:
    """``{node type: GPU}`` of a cluster file's worker node types that have GPUs and a known instance type."""
    found = {}
    for name, node in (cluster.get("available_node_types") or {}).items():
        if float((node.get("resources") or {}).get("GPU", 0)) <= 0 or node.get("max_workers") == 0:
            continue  # no GPU, or a type taken out of this cluster (max_workers: 0)
        gpu = instance_gpu((node.get("node_config") or {}).get("InstanceType", ""))
        if gpu is not None:
            found[name] = gpu
    return found


# ---------------------------------------------------------------------------------------------------- counting


@dataclass
class Counted:
    """Bytes of one micro-batch's loss at ``size`` images: saved storages whose element count the batch divides
    (``size`` is a prime no model dimension has: activations) apart from the others (the weights' autocast copies)."""

    size: int
    per_image: float  # saved for backward, per image
    fixed: int  # saved for backward whatever the batch (parameters themselves excluded)
    at_cam_per_image: float  # of which live when the CAM ran (0: no CAM)
    at_cam_fixed: int
    cam_elements_per_image: float  # elements of the captured attention maps (or the last block's ln_1 tokens)
    cam_element_bytes: int  # their dtype's size


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def count_saved(computer, student, images: torch.Tensor, labels: torch.Tensor) -> Counted:
    """Bytes ``computer.loss`` saves for backward (each storage once, the student's and teacher's parameters not),
    and what is live when its CAM runs (the method's ``cam``, wrapped for the count)."""
    size = int(images.shape[0])
    skip = {_storage_key(p) for p in [*student.parameters(), *student.buffers()]}
    own = getattr(computer.method, "own_weights", None)
    if own is not None:
        skip |= {_storage_key(p) for p in own.parameters()}
    seen: dict[int, tuple[int, bool]] = {}
    at_cam = {"scaled": 0, "fixed": 0, "elements": 0, "bytes": 0}

    def sums() -> tuple[int, int]:
        return (sum(n for n, scales in seen.values() if scales), sum(n for n, scales in seen.values() if not scales))

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in skip:
            storage = tensor.untyped_storage()
            elements = storage.nbytes() // max(1, tensor.element_size())
            seen[key] = (storage.nbytes(), elements > 0 and elements % size == 0)
        return tensor

    method = computer.method
    original = getattr(type(method), "cam", None)
    if original is not None:
        def cam(clean, labels_):
            captured = list(clean.vit.attentions) or ([clean.vit.last_ln1_tokens]
                                                      if clean.vit.last_ln1_tokens is not None else [])
            scaled, fixed = sums()
            at_cam.update(scaled=scaled, fixed=fixed, elements=sum(t.numel() for t in captured),
                          bytes=captured[0].element_size() if captured else 0)
            return original(method, clean, labels_)

        method.cam = cam
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            computer.loss(student.prepare(images), labels, 0)
    finally:
        if original is not None:
            del method.cam
    scaled, fixed = sums()
    return Counted(size, scaled / size, fixed, at_cam["scaled"] / size, at_cam["fixed"], at_cam["elements"] / size,
                   at_cam["bytes"])


@contextlib.contextmanager
def checkpoint_inputs(*, enabled: bool = True):
    """Bytes of the inputs ``torch.utils.checkpoint`` keeps while a grad pass runs checkpointed blocks (what the
    saved-tensor hooks cannot see): robusttune's forward's and open_clip's calls, counted for the duration."""
    import open_clip.transformer as open_clip_transformer

    from robusttune.models import vit

    kept = {"bytes": 0}
    if not enabled:
        yield kept
        return
    originals = vit.checkpoint, open_clip_transformer.checkpoint

    def counting(function, *args, **kwargs):
        if torch.is_grad_enabled():
            kept["bytes"] += sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor)
                                 and a.is_floating_point())
        return originals[0](function, *args, **kwargs)

    vit.checkpoint = open_clip_transformer.checkpoint = counting
    try:
        yield kept
    finally:
        vit.checkpoint, open_clip_transformer.checkpoint = originals


def memory_key(config: TrainConfig) -> str:
    """What decides a step's memory (object and context masks hold the same; the threshold does not matter)."""
    from robusttune.methods import MaskedDistill

    m = config.method
    if not isinstance(m, MaskedDistill):
        return m.name.value
    if m.w_distill == 0:
        return "ft"
    if m.region.value == "none":
        return f"fd-clean-{m.distill.value}"
    cam = m.cam.value if m.uses_cam else "no-cam"
    return f"masked-{cam}-{'drop' if m.refill.value == 'none' else 'refill'}-{m.distill.value}"


def memory_label(config: TrainConfig) -> str:
    """``memory_key`` and the settings beside the method that change memory."""
    return memory_key(config) + ("+checkpoint_blocks" if config.checkpoint_blocks else "")


@dataclass
class Model:
    """A space's classifier to count on: built once (fake for ImageNet models), with its image shape."""

    student: Any
    shape: tuple[int, ...]
    mode: Any  # the FakeTensorMode its tensors live in, or None (real tensors)
    label: str  # what it is (the cache key's model part)

    @property
    def context(self):
        return self.mode if self.mode is not None else contextlib.nullcontext()


def model_of(space, cache_dir: Path) -> Model:
    """The space's classifier: ImageNet models from open_clip's config on fake tensors (seconds, no memory), the mini
    world's tiny CLIP as a trial builds it."""
    if space.task.imagenet is None:
        from robusttune.training.tasks import build_task

        student, task = build_task(space.task, cache_dir)
        return Model(student, tuple(task.train.images.shape[1:]), None, stable_hash(space.task.to_dict()))
    from robusttune.models.shapes import fake_mode, shaped_classifier, vision_shape

    name = space.task.imagenet.model
    shape = vision_shape(name)
    mode = fake_mode()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*FakeTensor.*")
        return Model(shaped_classifier(name, mode=mode), (3, *shape.image_size), mode, name)


def autocast_dtype(config: TrainConfig, on_gpu: bool) -> torch.dtype | None:
    """The forwards' autocast dtype a trial gets: ``auto`` is bf16 on a GPU, fp32 on the CPU."""
    if config.precision is Precision.AUTO:
        return torch.bfloat16 if on_gpu else None
    return {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}.get(config.precision)


def count_method(config: TrainConfig, model: Model, dtype: torch.dtype | None, size: int = COUNT_SIZE) -> dict[str, Any]:
    """The count of ``config``'s method on ``model`` at ``size`` images, with its parameters: what the optimizer holds
    (``trained``), the classifier's (``weights``), the method's own (``own``)."""
    from robusttune.method.step import ALL
    from robusttune.models.classifier import frozen_copy
    from robusttune.models.vit import checkpointed_blocks
    from robusttune.training.device import Placement
    from robusttune.training.loop import StepComputer, optimized_parameters, train_only

    placement = Placement(torch.device("cpu"), dtype)
    with model.context, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*FakeTensor.*")  # copying fake weights reads their (no) data
        student = frozen_copy(model.student).requires_grad_(True).train()
        student.text = getattr(model.student, "text", None)
        teacher = frozen_copy(model.student)
        computer = StepComputer(config, student, teacher, placement)
        params = optimized_parameters(student, computer.method)
        train_only(student, ALL if computer.method.ever_trains_tower else computer.method.trains(0, 1))
        own = getattr(computer.method, "own_weights", None)
        generator = torch.Generator().manual_seed(size)
        images = torch.randint(0, 256, (size, *model.shape), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, student.num_classes, (size,), generator=generator)
        count = asdict(count_saved(computer, student, images, labels))
        if config.checkpoint_blocks:  # the blocks keep their inputs (which the hooks do not see), and one block's
            # insides come back at a time in backward: a block's share of the plain count
            with checkpoint_inputs() as kept, checkpointed_blocks(student.visual):
                outside = count_saved(computer, student, images, labels)
            layers = len(student.visual.transformer.resblocks)
            count["per_image"] = (outside.per_image + kept["bytes"] / size
                                  + (count["per_image"] - outside.per_image) / layers)
            count["at_cam_per_image"] = min(count["at_cam_per_image"], count["per_image"])
        trained = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
        weights = sum(p.numel() * p.element_size() for p in student.parameters())
        own_bytes = sum(p.numel() * p.element_size() for p in own.parameters()) if own is not None else 0
        blocks = student.visual.transformer.resblocks
        mlp = blocks[0].mlp.c_fc.out_features
        tokens = math.prod(student.grid_size) + 1
    return {"count": count, "trained_bytes": trained, "weights_bytes": weights, "own_bytes": own_bytes,
            "mlp_width": mlp, "tokens": tokens, "pixels": math.prod(model.shape), "classes": student.num_classes}


# ---------------------------------------------------------------------------------------------------- the peak


@dataclass
class MemoryEstimate:
    """One method's (or baseline's) memory at its micro-batch, in bytes; ``peak`` without the CUDA context."""

    method: str
    micro_batch: int
    accum_steps: int
    dtype: str
    parts: dict[str, int]
    activations_per_image: float
    activations_fixed: float
    peak: int
    modelled: bool = True
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(described: dict[str, Any], *, method: str, micro: int, accum_steps: int, dtype: str,
             refills: bool = False) -> MemoryEstimate:
    """The peak of one process training ``described`` (``count_method``'s result) at ``micro`` images."""
    count = described["count"]
    fixed, per_image = count["fixed"], count["per_image"]
    cam_fixed, cam_per_image = count["at_cam_fixed"], count["at_cam_per_image"]
    element_bytes, cam_elements = count["cam_element_bytes"], count["cam_elements_per_image"]
    activations = max(0, round(fixed + per_image * micro))
    at_cam = max(0, round(cam_fixed + cam_per_image * micro))
    # the CAM: the maps' gradients (their dtype) and fp32 copies of maps and gradients (none when already fp32)
    cam_maps = round(cam_elements * micro * (element_bytes + (8 if element_bytes < 4 else 0)))
    transient = 2 * micro * described["tokens"] * described["mlp_width"] * 4
    batch = micro * described["pixels"] * (1 + 4 + (4 if refills else 0))
    trained, weights, own = described["trained_bytes"], described["weights_bytes"], described["own_bytes"]
    parts = {"weights": weights + own, "teacher": weights, "grads": trained, "moments": 2 * trained,
             "activations": activations, "cam_maps": cam_maps if at_cam else 0, "transient": transient, "batch": batch}
    working = max(activations + transient, at_cam + parts["cam_maps"] + transient // 2,
                  0 if accum_steps > 1 else trained)
    peak = (parts["weights"] + parts["teacher"] + parts["moments"] + batch + working
            + (trained if accum_steps > 1 else 0))
    return MemoryEstimate(method, micro, accum_steps, dtype, parts, per_image, fixed, int(peak))


def _refills(config: TrainConfig) -> bool:
    from robusttune.methods import MaskedDistill

    m = config.method
    return isinstance(m, MaskedDistill) and m.w_distill > 0 and m.region.value != "none" and m.refill.value != "none"


def counted(config: TrainConfig, model: Model, dtype: torch.dtype | None, cache_dir: Path | None,
            log: Callable[[str], None] = lambda _: None) -> dict[str, Any] | None:
    """``count_method`` through a cache in ``<cache>/plans/``; None when the method cannot be built on this model
    (FLYP and Lipsum-FT need the text tower, which an ImageNet model is counted without)."""
    key = stable_hash({"version": MEMORY_VERSION, "model": model.label, "method": memory_label(config),
                       "dtype": str(dtype), "size": COUNT_SIZE})
    cached = Path(cache_dir) / "plans" / f"memory-{key}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        try:
            return json.loads(cached.read_text())
        except ValueError:
            pass
    try:
        described = count_method(config, model, dtype)
    except ConfigError as error:
        log(f"{memory_key(config)}: not modelled ({error})")
        return None
    if cached is not None:
        atomic_write_json(cached, described)
    return described


@dataclass
class MemoryPlan:
    """Every method's and the baseline's peak, against a GPU's memory (when one is known)."""

    rows: list[MemoryEstimate]
    gpu: str | None = None  # where the memory came from: a device type, a cluster node type, --gpu-memory, this GPU
    gpu_memory: float | None = None  # bytes
    context_bytes: int = CUDA_CONTEXT_BYTES
    usable_fraction: float = USABLE_FRACTION
    verdicts: list[str] = field(default_factory=list)  # one line per row that does not fit (with what would)
    fits: bool = True
    dtype: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [r.to_dict() for r in self.rows]}

    @property
    def budget(self) -> float | None:
        return None if self.gpu_memory is None else self.gpu_memory * self.usable_fraction - self.context_bytes


def _micro(config: TrainConfig) -> int:
    return max(1, config.batch_size // (config.accum_steps * config.workers))


def fitting_accum(described: dict[str, Any], config: TrainConfig, budget: float, *, method: str, dtype: str,
                  refills: bool) -> tuple[int, MemoryEstimate] | None:
    """The smallest ``accum_steps`` (a multiple of the config's whose micro-batch divides the batch) that fits."""
    per_rank = config.batch_size // config.workers
    for accum in range(config.accum_steps, per_rank + 1):
        if per_rank % accum or accum % config.accum_steps:
            continue
        row = estimate(described, method=method, micro=per_rank // accum, accum_steps=accum, dtype=dtype,
                       refills=refills)
        if row.peak <= budget:
            return accum, row
    return None


def memory_plan(space, configs: dict[str, TrainConfig], cache_dir: Path | None, *, gpu_memory: float | None = None,
                gpu: str | None = None, on_gpu: bool | None = None, model: Model | None = None,
                log: Callable[[str], None] = lambda _: None) -> MemoryPlan:
    """The peaks of ``configs`` (``{label: config}``: the space's methods and the baselines) on the space's model,
    at their micro-batches, against ``gpu_memory`` bytes (None: no check). ``on_gpu``: count under the autocast a GPU
    gives (default: when a GPU memory is known or the trials reserve GPUs)."""
    on_gpu = (gpu_memory is not None or float(space.resources.gpu) > 0) if on_gpu is None else on_gpu
    model = model or model_of(space, cache_dir)
    result = MemoryPlan([], gpu, gpu_memory)
    done: dict[tuple[str, str], dict[str, Any] | None] = {}  # object and context masks hold the same: counted once
    for label, config in configs.items():
        dtype = autocast_dtype(config, on_gpu)
        dtype_name = "fp32" if dtype is None else str(dtype).removeprefix("torch.")
        result.dtype = dtype_name
        once = (memory_label(config), dtype_name)
        if once not in done:
            done[once] = counted(config, model, dtype, cache_dir, log)
        described = done[once]
        if described is None:
            result.rows.append(MemoryEstimate(label, _micro(config), config.accum_steps, dtype_name, {}, 0.0, 0.0, 0,
                                              modelled=False, note="needs the text tower: not modelled"))
            continue
        row = estimate(described, method=label, micro=_micro(config), accum_steps=config.accum_steps,
                       dtype=dtype_name, refills=_refills(config))
        result.rows.append(row)
        budget = result.budget
        if budget is None or row.peak <= budget:
            continue
        result.fits = False
        found = fitting_accum(described, config, budget, method=label, dtype=dtype_name, refills=_refills(config))
        need = f"{label} needs {row.peak / GB:.1f} GB at micro-batch {row.micro_batch} ({dtype_name})"
        have = f"{gpu if gpu and not gpu.startswith('--') else f'the GPU ({gpu})' if gpu else 'the GPU'} has {result.gpu_memory / GB:.0f} GB ({budget / GB:.1f} GB usable)"
        if found is None:
            row.note = f"{need}, {have}, and no accum_steps fits: use checkpoint_blocks: true or a larger GPU"
        else:
            accum, fitted = found
            row.note = (f"{need}, {have}: set accum_steps: {accum} (micro-batch {fitted.micro_batch}, "
                        f"{fitted.peak / GB:.1f} GB) or checkpoint_blocks: true")
        result.verdicts.append(row.note)
    return result


def check_fits(plan: MemoryPlan) -> None:
    """Refuse, in one line, a space whose trials or baselines cannot fit (naming the accum_steps that would)."""
    if not plan.fits:
        extra = f" (and {len(plan.verdicts) - 1} more)" if len(plan.verdicts) > 1 else ""
        raise ConfigError(f"out of GPU memory: {plan.verdicts[0]}{extra}")


def gpu_memory_of(*, gpu_memory_gb: float | None = None, device: str | None = None, cluster: dict | None = None,
                  local: bool = False) -> tuple[float | None, str | None]:
    """``(bytes, where from)`` of the GPU a space's trials get: ``--gpu-memory GB``, a named ``--device-type``, the
    smallest GPU among a cluster file's node types that run trials, or (``local``) this machine's first CUDA device;
    ``(None, None)`` when none is known."""
    if gpu_memory_gb is not None:
        if not gpu_memory_gb > 0:
            raise ParameterError("gpu_memory", f"must be > 0 GB, got {gpu_memory_gb}")
        return gpu_memory_gb * GB, f"--gpu-memory {gpu_memory_gb:g}"
    if device is not None:
        figures = device_type(device)
        return figures["memory_gb"] * GB, str(figures["name"])
    if cluster is not None:
        found = cluster_gpus(cluster)
        if found:
            node, gpu = min(found.items(), key=lambda item: DEVICE_TYPES[item[1]]["memory_gb"])
            return DEVICE_TYPES[gpu]["memory_gb"] * GB, f"{gpu} (node type {node})"
    if local and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        return float(properties.total_memory), properties.name
    return None, None


def space_memory(space, configs: dict[str, TrainConfig], cache_dir: Path | None, *, gpu_memory: float | None,
                 gpu: str | None, refuse: bool = False) -> MemoryPlan:
    """``memory_plan`` of a space's methods and baselines; ``refuse``: raise ``check_fits``'s one line."""
    found = memory_plan(space, configs, cache_dir, gpu_memory=gpu_memory, gpu=gpu)
    if refuse:
        check_fits(found)
    return found
