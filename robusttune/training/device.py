"""Where a run executes and in which precision: the device it was given and the autocast dtype.

``auto`` means the GPU this process may use: inside a Ray trial that reserved a GPU, Ray sets
``CUDA_VISIBLE_DEVICES`` to the assigned one, so ``cuda`` is that GPU; a trial without a GPU sees none and
runs on the CPU. Weights and optimizer stay fp32; ``bf16``/``fp16`` autocast the forwards (``fp16`` with a
gradient scaler). On a CUDA device fp32 matmuls and convolutions (all of them in an fp32 run; under autocast, the
few that autocast leaves in fp32) use TF32 tensor cores (``tf32=False`` keeps them in true fp32); the relevance
CAM's product over blocks always runs in true fp32 (``exact_fp32``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from robusttune.config import Precision
from robusttune.errors import ConfigError
from robusttune.method.masking import to_device

DTYPES = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first visible CUDA device, else the CPU; ``cuda[:N]`` must exist (one-line error)."""
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{spec}': no CUDA device is visible to this process (use device: auto or cpu)")
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
