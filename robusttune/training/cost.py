"""What a trial cost, measured where it runs: device-seconds split into start-up, training and evaluation, images
trained and evaluated, evaluations, peak memory where the device reports it, the host and the device.

A ``CostMeter`` is kept by the trial's trainable (``robusttune.search.trainable``): start-up is the time from the
trial's start to its first training step (building the model and data, reading a checkpoint), evaluation the time
inside the evaluations (``eval_s`` of each evaluation row, ``robusttune.training.loop``), training the rest of the
run (steps, checkpoint writes, reports). Seconds are wall-clock seconds of the trial's process times its devices
(``workers``: a data-parallel trial's processes each hold one). Peak memory: ``torch.cuda.max_memory_allocated`` on
CUDA (``peak_memory_kind: cuda_allocated``), the process's peak resident set (``resource.getrusage``,
``host_rss``) elsewhere: on the CPU it holds the data and Python as well as the tensors.

The meter is saved beside the trial's checkpoints (``cost.json``) at every evaluation, so a resumed trial adds to
what it had spent; its ``to_dict`` goes into every evaluation's report, and so into the trial's final record row as
``cost``.
"""

from __future__ import annotations

import json
import platform
import resource
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COST = "cost"  # the key of a result / record row


@dataclass
class CostMeter:
    startup_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    images_trained: int = 0
    images_evaluated: int = 0
    evaluations: int = 0
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    host: str = ""
    device: str = ""
    workers: int = 1
    resumes: int = 0
    _clock: float = field(default=0.0, repr=False)
    _phase: str = field(default="startup", repr=False)

    @classmethod
    def start(cls, path: Path | None = None, *, workers: int = 1) -> CostMeter:
        """A meter from the trial's start (what ``path`` held, for a resumed trial, carried over)."""
        meter = cls(workers=workers)
        if path is not None and Path(path).is_file():
            try:
                saved = json.loads(Path(path).read_text())
                meter = cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__ and not k.startswith("_")})
                meter.resumes += 1
            except (OSError, ValueError, TypeError):
                pass  # unreadable: this process's cost only
        meter._clock, meter._phase = time.perf_counter(), "startup"
        return meter

    def _close(self) -> float:
        now = time.perf_counter()
        spent, self._clock = now - self._clock, now
        return spent * self.workers

    def training_starts(self) -> None:
        """The end of start-up: the first step comes next."""
        if self._phase == "startup":
            self.startup_s += self._close()
            self._phase = "train"

    def evaluated(self, *, eval_seconds: float, images: int, trained_images: int) -> None:
        """One evaluation row: ``eval_seconds`` of it were the evaluation; ``trained_images`` so far in the trial."""
        if self._phase == "startup":  # a resumed trial re-reporting its checkpoint's evaluation: nothing ran
            self.training_starts()
        elapsed = self._close()
        spent = min(elapsed, eval_seconds * self.workers)
        self.eval_s += spent
        self.train_s += elapsed - spent
        self.images_evaluated += int(images)
        self.images_trained = max(self.images_trained, int(trained_images))
        self.evaluations += 1

    def note_device(self, device: Any) -> None:
        """The host, the device's name and its peak memory so far."""
        self.host = socket.gethostname()
        kind = getattr(device, "type", str(device))
        torch = sys.modules.get("torch")
        if kind == "cuda" and torch is not None and torch.cuda.is_available():
            self.device = f"cuda: {torch.cuda.get_device_name(device)}"
            self.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
            self.peak_memory_kind = "cuda_allocated"
            return
        self.device = f"{kind}: {platform.processor() or platform.machine()}"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
        self.peak_memory_bytes = int(rss if sys.platform == "darwin" else rss * 1024)
        self.peak_memory_kind = "host_rss"

    @property
    def device_s(self) -> float:
        return self.startup_s + self.train_s + self.eval_s

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        for key in ("startup_s", "train_s", "eval_s"):
            data[key] = round(data[key], 3)
        return {**data, "device_s": round(self.device_s, 3)}

    def save(self, path: Path) -> None:
        from robusttune.cache import atomic_write_json

        atomic_write_json(Path(path), self.to_dict())
