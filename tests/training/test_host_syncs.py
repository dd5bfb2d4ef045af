"""A step that does not wait on the host, counted: host reads of tensors during training happen once per heartbeat
that shows the loss and once per evaluation, never per step; CPU-drawn masks and donors reach the device from pinned
memory without blocking; a non-finite loss is still caught (at the next read, naming its step); ``compile: true``
gives the same losses; CUDA placements use TF32 but the CAM stays in true fp32."""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import train_config
from robusttune.method import masking
from robusttune.models.classifier import frozen_copy
from robusttune.training import loop
from robusttune.training.evaluate import Evaluator
from robusttune.training.loop import StepComputer, train

SMALL = dict(steps=12, batch_size=16, eval_every=6, eval_batch_size=128, lr=1e-3)
STRATEGIES = {
    "object_single": dict(region="object", refill="single", mask_threshold=0.3),
    "context_multi_gradcam": dict(region="context", refill="multi", mask_ratio=0.5, cam="gradcam"),
    "random_none": dict(region="random", refill="none", mask_threshold=0.5),
    "clean_distill": dict(region="none", w_distill=1.0),
    "vanilla": dict(region="none", w_distill=0.0),
}

TORCH = Path(torch.__file__).parent
# Host reads that are host-side on every device, so never a sync with it: the optimizer's step counters (CPU tensors;
# fused AdamW on CUDA keeps them on the device and reads none), the loader's index lists and batch assembly, and the
# evaluations themselves (their accuracies are the point; the loop's one read before each is counted).
HOST_SIDE = (str(TORCH / "optim"), str(TORCH / "utils" / "data"), str(Path(loop.__file__).parents[1] / "data"))
HOST_SIDE_CODE = {loop.StepBatches.__iter__.__code__, Evaluator.__call__.__wrapped__.__code__}
# ops whose result (a Python number, or an output shape that depends on the data) the host must wait for
SYNC_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
            "aten._unique2.default", "aten.unique_dim.default", "aten.unique_consecutive.default",
            "aten.repeat_interleave.Tensor"}


def _host_side() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code in HOST_SIDE_CODE or frame.f_code.co_filename.startswith(HOST_SIDE):
            return True
        frame = frame.f_back
    return False


class _SyncOps(TorchDispatchMode):
    def __init__(self, reads: list[str]):
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        indices = args[1] if len(args) > 1 and isinstance(args[1], list | tuple) else ()
        bool_index = name.startswith(("aten.index.", "aten.index_put")) and any(
            isinstance(i, torch.Tensor) and i.dtype is torch.bool for i in indices)
        if (name in SYNC_OPS or bool_index) and not _host_side():
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def host_reads():
    """Every host read of a tensor value while inside: at the dispatcher, ``item``/``float``/``int``/``bool``/
    ``__index__`` (all ``_local_scalar_dense``, whoever calls them, C++ included) and ops whose output shape depends on
    the data; at the Python level ``tolist``/``numpy`` (which read a CPU tensor without dispatching). On CUDA each one
    would wait for the device."""
    reads: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def counting(name):
        def read(self, *args, **kwargs):
            if not _host_side():
                reads.append(name)
            return originals[name](self, *args, **kwargs)
        return read

    for name in originals:
        setattr(torch.Tensor, name, counting(name))
    try:
        with _SyncOps(reads):
            yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _train(prepared, config, counted: bool = False, **kwargs):
    """``(student, TrainResult)``; with ``counted``, also the host reads of ``train`` itself (the models and the task
    are built before counting)."""
    student = prepared.classifier()
    teacher, task = frozen_copy(student), prepared.task()
    if not counted:
        return student, train(config, student, teacher, task, **kwargs)
    with host_reads() as reads:
        result = train(config, student, teacher, task, **kwargs)
    return student, result, reads


def test_the_counter_sees_reads_the_loop_would_make(tiny_prepared):
    student = tiny_prepared.classifier()
    images, labels = tiny_prepared.task().train.batch(torch.arange(8))
    computer = StepComputer(train_config(**STRATEGIES["object_single"]), student, frozen_copy(student))
    with host_reads() as reads:
        loss, parts = computer.loss(student.prepare(images), labels, 0)
    assert reads == []  # the loss path itself reads nothing
    with host_reads() as reads:
        float(parts["loss_task"]), bool(torch.isfinite(loss)), loss.tolist(), student.head.weight[0, 0].item()
    assert len(reads) == 4


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_host_reads_once_per_heartbeat_and_evaluation_not_per_step(tiny_prepared, strategy):
    beats = []

    def heartbeat(progress):  # a heartbeat every 4 steps that shows the loss
        if progress["step"] % 4 == 0:
            beats.append((progress["step"], progress["loss"], progress["images_per_s"]))

    _, result, reads = _train(tiny_prepared, train_config(**SMALL, **STRATEGIES[strategy]), counted=True,
                              on_step=heartbeat)
    assert result.status == "complete" and [r["step"] for r in result.history] == [6, 12]
    assert [b[0] for b in beats] == [4, 8, 12] and all(isinstance(b[1], float) for b in beats)
    assert len(reads) == len(result.history) + len(beats) == 5, reads  # 12 steps: 2 evaluations + 3 heartbeats
    assert all(isinstance(r["loss_task"], float) for r in result.history)  # the evaluation rows still carry the parts


def test_a_progress_callback_that_reads_only_the_step_costs_no_read(tiny_prepared):
    config = train_config(**{**SMALL, "steps": 6, "eval_every": 3}, accum_steps=2, **STRATEGIES["object_single"])
    seen = []
    _, result, reads = _train(tiny_prepared, config, counted=True, on_step=lambda progress: seen.append(progress["step"]))
    assert result.status == "complete" and seen == [1, 2, 3, 4, 5, 6]
    assert len(reads) == len(result.history) == 2, reads  # micro-batches add nothing either


def _nan_at(monkeypatch, bad_step):
    original = StepComputer.loss

    def loss(self, images, labels, step, *args, **kwargs):
        value, parts = original(self, images, labels, step, *args, **kwargs)
        return (value * float("nan") if step == bad_step else value), parts

    monkeypatch.setattr(StepComputer, "loss", loss)


def test_a_non_finite_loss_is_caught_at_the_next_heartbeat(tiny_prepared, monkeypatch):
    _nan_at(monkeypatch, 6)  # the step after the first evaluation
    rows, saved, beats = [], [], []

    def heartbeat(progress):
        if progress["step"] % 4 == 0:
            beats.append(progress["loss"])

    _, result = _train(tiny_prepared, train_config(**SMALL), report=rows.append, on_step=heartbeat,
                       save_checkpoint=lambda state: saved.append(state["step"]))
    assert result.status == "failed" and result.steps == 6
    assert result.failure == "non-finite loss (nan) at step 6 (seen at step 7)"  # the heartbeat after step 7
    assert [r.get("status") for r in rows] == [None, "failed"] and rows[-1]["step"] == 6 and saved == [6]
    assert len(beats) == 2 and beats[0] == beats[0] and beats[1] != beats[1]  # finite at 4, NaN at 8: then it stops


def test_without_heartbeats_a_non_finite_loss_is_caught_before_the_next_evaluation(tiny_prepared, monkeypatch):
    _nan_at(monkeypatch, 7)
    rows, saved = [], []
    _, result = _train(tiny_prepared, train_config(**SMALL), report=rows.append,
                       save_checkpoint=lambda state: saved.append(state["step"]))
    assert result.status == "failed" and result.failure == "non-finite loss (nan) at step 7 (seen at step 11)"
    assert saved == [6] and rows[-1] == {"step": 7, "epoch": rows[-1]["epoch"], "status": "failed",
                                          "failure": result.failure}  # NaN weights are never checkpointed nor scored


class _Copies(TorchDispatchMode):
    """Copies from host tensors to another device, with whether they were pinned and non-blocking."""

    def __init__(self, pinned: list[torch.Tensor]):
        super().__init__()
        self.pinned, self.copies = pinned, []

    def was_pinned(self, tensor: torch.Tensor) -> bool:
        return any(tensor is p for p in self.pinned)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and args[0].device.type == "cpu" \
                and kwargs.get("device", args[0].device).type != "cpu":
            self.copies.append((tuple(args[0].shape), self.was_pinned(args[0]), bool(kwargs.get("non_blocking"))))
        elif func is torch.ops.aten.copy_.default and args[1].device.type == "cpu" and args[0].device.type != "cpu":
            self.copies.append((tuple(args[1].shape), self.was_pinned(args[1]), bool(args[2] if len(args) > 2 else False)))
        return func(*args, **kwargs)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_cpu_drawn_masks_and_donors_reach_the_device_pinned_and_non_blocking(tiny_prepared, strategy, monkeypatch):
    """The step on another device than the CPU (``meta``: shapes only, so this runs without a GPU), with pinning
    faked (it needs one): every copy from a host tensor to the device is from pinned memory and non-blocking."""
    pinned: list[torch.Tensor] = []

    def pin_memory(self, device=None):
        copy = self.clone()
        pinned.append(copy)
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, device=None: any(self is p for p in pinned))
    student = tiny_prepared.classifier().to("meta")
    images, labels = tiny_prepared.task().train.batch(torch.arange(8))
    computer = StepComputer(train_config(**STRATEGIES[strategy]), student, frozen_copy(student))
    mode = _Copies(pinned)
    with mode:
        loss, _ = computer.loss(student.prepare(masking.to_device(images, "meta")),
                                masking.to_device(labels, "meta"), 3)
        loss.backward()
    assert loss.device.type == "meta" and len(mode.copies) >= 2  # at least the batch and its labels
    draws_masks = train_config(**STRATEGIES[strategy]).method.uses_masks
    assert len(mode.copies) > 2 or not draws_masks  # ... and the masks / donors drawn on the CPU
    assert all(was_pinned and non_blocking for _, was_pinned, non_blocking in mode.copies), mode.copies


def _inductor_works() -> str | None:
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "torch.compile on the CPU needs a C++ compiler (none on PATH)"
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(3))
    except Exception as error:  # no working toolchain: say why
        return f"torch.compile does not work on this machine: {type(error).__name__}: {str(error)[:200]}"
    return None


@pytest.mark.slow
def test_compile_gives_the_same_losses_on_the_cpu(tiny_prepared):
    reason = _inductor_works()
    if reason:
        pytest.skip(reason)
    student = tiny_prepared.classifier()
    generator = torch.Generator().manual_seed(0)
    teacher = frozen_copy(student)
    with torch.no_grad():  # a student that has moved away from its teacher, so that distillation is not ~0
        for parameter in student.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator) * parameter.std().nan_to_num(0.0))
    images, labels = tiny_prepared.task().train.batch(torch.arange(16))
    images = student.prepare(images)
    for name in ("object_single", "clean_distill"):
        computer = StepComputer(train_config(**STRATEGIES[name]), student, teacher)
        results = []
        for compiled in (False, True):
            student.zero_grad(set_to_none=True)
            with loop.compiled_blocks(student, teacher, enabled=compiled):
                loss, parts = computer.loss(images, labels, 3)
                loss.backward()
            results.append((float(loss.detach()), {k: float(v) for k, v in parts.items()},
                            [p.grad.clone() for p in student.parameters()]))
        (eager, eager_parts, eager_grads), (fast, fast_parts, fast_grads) = results
        assert fast == pytest.approx(eager, rel=1e-5) and eager_parts["loss_distill"] > 1e-3, name
        assert fast_parts == pytest.approx(eager_parts, rel=1e-5), name
        for a, b in zip(eager_grads, fast_grads):  # the same gradients, up to fp32 reordering
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4 * float(a.abs().max()) + 1e-9)
    assert all(block._compiled_call_impl is None for block in student.visual.transformer.resblocks)
    # the config key: train() compiles for the run (and its evaluations) and undoes it
    config = dict(SMALL, steps=2, eval_every=1, **STRATEGIES["object_single"])
    _, eager_run = _train(tiny_prepared, train_config(**config))
    compiled_student, compiled_run = _train(tiny_prepared, train_config(**config, compile=True))
    assert compiled_run.status == "complete"
    for a, b in zip(eager_run.history, compiled_run.history):
        assert b["loss_task"] == pytest.approx(a["loss_task"], rel=1e-5)
    assert all(block._compiled_call_impl is None for block in compiled_student.visual.transformer.resblocks)


def test_tf32_on_a_cuda_placement_and_true_fp32_for_the_cam():
    """The switches are process-wide and settable without a GPU: a CUDA placement turns TF32 on (or off with
    ``tf32=False``), ``exact_fp32`` turns it off inside and back on after, a CPU placement leaves them alone."""
    from robusttune.training.device import Placement

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        Placement(torch.device("cpu")).configure()
        assert torch.get_float32_matmul_precision() == "highest"
        cuda = Placement(torch.device("cuda", 0))
        cuda.configure()
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # what torch's newer getters (inductor) read
        with cuda.exact_fp32():
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
        Placement(torch.device("cuda", 0), tf32=False).configure()
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
