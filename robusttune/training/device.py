"""Where a run executes and in which precision: the device it was given and the autocast dtype.

``auto`` means the GPU this process may use: inside a Ray trial that reserved a GPU, Ray sets
``CUDA_VISIBLE_DEVICES`` to the assigned one, so ``cuda`` is that GPU; a trial without a GPU sees none and
runs on the CPU (said once, in the log). A process that was given GPUs (Ray assigned some, ``CUDA_VISIBLE_DEVICES``
names some, or ``device: cuda``) and cannot use them never falls back to the CPU: it fails at once, in one line
that says what was assigned, what torch sees, torch's and the driver's CUDA versions and what to do
(``check_gpus``, ``gpu_failure``). Weights and optimizer stay fp32; ``bf16``/``fp16`` autocast the forwards (``fp16`` with a
gradient scaler). On a CUDA device fp32 matmuls and convolutions (all of them in an fp32 run; under autocast, the
few that autocast leaves in fp32) use TF32 tensor cores (``tf32=False`` keeps them in true fp32); the relevance
CAM's product over blocks always runs in true fp32 (``exact_fp32``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from robusttune.config import Precision
from robusttune.errors import ConfigError
from robusttune.method.masking import to_device

log = logging.getLogger(__name__)

DTYPES = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}
# The oldest NVIDIA driver each CUDA major version runs on (Linux; NVIDIA's CUDA compatibility table)
MIN_DRIVER = {13: 580, 12: 525, 11: 450}
_NOT_A_GPU = ("", "-1", "NoDevFiles")  # CUDA_VISIBLE_DEVICES values that mean none (CUDA stops at the first bad id)


def visible_gpu_ids(environ: os._Environ | dict[str, str] | None = None) -> tuple[str, ...]:
    """The GPUs this process was given through ``CUDA_VISIBLE_DEVICES`` (Ray sets it to a trial's or task's assigned
    GPUs, and to nothing without; so do Slurm and Kubernetes' device plugin); () when unset or none."""
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    ids = tuple(part.strip() for part in (value or "").split(",") if part.strip())
    return () if not ids or ids[0] in _NOT_A_GPU else ids


def driver_version() -> tuple[str | None, str | None]:
    """The NVIDIA driver's version and the CUDA version it supports, where they can be read (``nvidia-smi``, then
    ``/proc/driver/nvidia/version``); None for what cannot."""
    version = cuda = None
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"Driver Version:\s*([0-9.]+)", out)
        version = found.group(1) if found else None
        found = re.search(r"CUDA Version:\s*([0-9.]+)", out)
        cuda = found.group(1) if found else None
    except (OSError, subprocess.SubprocessError):
        pass
    if version is None:
        try:
            text = open("/proc/driver/nvidia/version", encoding="utf-8", errors="replace").read()
            found = re.search(r"Kernel Module(?: for \S+)?\s+([0-9]+(?:\.[0-9]+)+)", text)
            version = found.group(1) if found else None
        except OSError:
            pass
    return version, cuda


def _torch_says() -> str:
    """Why torch cannot use CUDA, in its own first sentence (e.g. 'The NVIDIA driver on your system is too old
    (found version 11020)'); empty when it can."""
    try:
        torch.cuda.init()
    except Exception as error:  # torch raises RuntimeError/AssertionError/AcceleratorError across versions
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return first.split(". ")[0].rstrip(".")[:200]
    return ""


def gpu_failure(what: str, *, assigned: Sequence[str] = (), source: str = "CUDA_VISIBLE_DEVICES") -> str:
    """The one line that says a process given GPUs cannot use them: ``what`` (the run), what ``source`` assigned,
    what torch sees and why, torch's and the driver's CUDA versions, and what to do."""
    built = torch.version.cuda
    given = f"{source} assigned GPU(s) {','.join(map(str, assigned))}, but " if assigned else ""
    if built is None:
        return (f"{what}: {given}torch {torch.__version__} is a CPU-only build; install a CUDA build of torch on this "
                f"node, or run on the CPU (resources.gpu: 0 or device: cpu)")
    reason = _torch_says()
    driver, driver_cuda = driver_version()
    found = (f"NVIDIA driver {driver}" + (f" (CUDA {driver_cuda})" if driver_cuda else "") if driver is not None
             else "no NVIDIA driver found (no nvidia-smi, no /proc/driver/nvidia/version)")
    major = int(built.split(".")[0]) if built.split(".")[0].isdigit() else 0
    needs = f">= {MIN_DRIVER[major]}" if major in MIN_DRIVER else f"supporting CUDA {built}"
    return (f"{what}: {given}no CUDA device is visible to torch {torch.__version__} (built for CUDA {built})"
            + (f" ({reason})" if reason else "") + f"; {found}; install an NVIDIA driver {needs} on this node (torch's "
            f"CUDA {built} needs it) or a torch built for the driver's CUDA, or run on the CPU (resources.gpu: 0 or "
            f"device: cpu)")


def check_gpus(assigned: Sequence[str], *, source: str = "Ray", what: str = "this run") -> None:
    """Fail at once (``ConfigError``, one line) when GPUs were ``assigned`` to this process (by ``source``) and torch
    can use none of them; nothing otherwise. Call it before anything is built."""
    if assigned and not torch.cuda.is_available():
        raise ConfigError(gpu_failure(what, assigned=assigned, source=source))


def data_parallel_gpus(workers: int, device: str) -> bool:
    """Whether ``workers`` local data-parallel processes train on GPUs (one each): not with ``device: cpu``; else this
    machine must show torch at least ``workers`` GPUs (one-line ``ConfigError`` otherwise: never gloo on CPUs unasked)."""
    if workers <= 1 or str(device) == "cpu":
        return False
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < workers:
        raise ConfigError(f"workers {workers}: each data-parallel worker trains on its own GPU, but torch sees "
                          f"{visible} GPU(s) here; set `device` to cpu to train them on CPUs (gloo), or "
                          f"train in one process with accum_steps x {workers} (the same global batch)")
    return True


_said_cpu = False


def resolve_device(spec: str | torch.device = "auto", *, assigned: Sequence[str] | None = None,
                   source: str = "CUDA_VISIBLE_DEVICES") -> torch.device:
    """``auto`` -> the first visible CUDA device; the CPU only where no GPU was given to this process (``assigned``
    by ``source``; default: ``CUDA_VISIBLE_DEVICES``), said once in the log; a GPU that was given and cannot be used
    fails (one line). ``cuda[:N]`` must exist (one line)."""
    global _said_cpu
    spec = str(spec)
    given = visible_gpu_ids() if assigned is None else tuple(assigned)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if given:
            raise ConfigError(gpu_failure("device 'auto'", assigned=given, source=source))
        if not _said_cpu:
            _said_cpu = True
            log.info("device auto: no GPU was given to this process; running on the CPU")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(gpu_failure(f"device '{spec}'", assigned=given, source=source))
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device '{spec}': only {torch.cuda.device_count()} CUDA device(s) are visible")
        return torch.device("cuda", index)
    return device


def resolve_precision(precision: Precision | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32). ``auto``: bf16 on a CUDA device that supports it, else fp32."""
    precision = Precision(precision)
    if precision is Precision.AUTO:
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if precision is Precision.BF16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision 'bf16': {torch.cuda.get_device_name(device)} does not support bfloat16 (use fp16 or fp32)")
    return DTYPES.get(precision)


@dataclass(frozen=True)
class Placement:
    """A run's device and autocast dtype, resolved once per run."""

    device: torch.device
    dtype: torch.dtype | None = None  # None: plain fp32
    tf32: bool = True  # on CUDA: fp32 matmuls and convolutions on TF32 tensor cores

    @classmethod
    def of(cls, device: str | torch.device = "auto", precision: Precision | str = Precision.AUTO) -> Placement:
        resolved = resolve_device(device)
        placement = cls(resolved, resolve_precision(precision, resolved))
        placement.configure()
        return placement

    def configure(self) -> None:
        """Set this process's fp32 matmul and convolution precision for the device (TF32 or true fp32 on CUDA;
        nothing on the CPU). A process-wide switch: a run sets it once, before its first step."""
        if self.device.type == "cuda":  # the classic switches: torch's newer per-backend getters read them too
            torch.set_float32_matmul_precision("high" if self.tf32 else "highest")
            torch.backends.cudnn.allow_tf32 = self.tf32

    @contextlib.contextmanager
    def exact_fp32(self):
        """True fp32 matmuls inside (TF32 off), restored on exit; a no-op off CUDA."""
        if self.device.type != "cuda":
            yield
            return
        matmul = torch.backends.cuda.matmul
        try:
            before, legacy = torch.get_float32_matmul_precision(), True
        except RuntimeError:  # the process set torch's per-backend switches itself (which forbid the classic getter)
            before, legacy = matmul.fp32_precision, False
        if legacy:
            torch.set_float32_matmul_precision("highest")
        else:
            matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            if legacy:
                torch.set_float32_matmul_precision(before)
            else:
                matmul.fp32_precision = before

    def upload(self, tensor: Tensor) -> Tensor:
        """A host tensor on the device without making the host wait: from pinned memory, non-blocking, on CUDA
        (a loader's pinned batch is copied as it is; anything else is pinned first)."""
        return to_device(tensor, self.device)

    def autocast(self):
        """Autocast for the forwards (a no-op context in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for fp16 only (bf16 has fp32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype is torch.float16)

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        return f"{self.device} ({'fp32' if self.dtype is None else str(self.dtype).removeprefix('torch.')})"


CPU_FP32 = Placement(torch.device("cpu"))
