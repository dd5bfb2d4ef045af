"""One fine-tuning run with its checkpoint: load the task, fine-tune from the zero-shot model, checkpoint.

The one place that does this, for ``robusttune train``, every sweep trial and the vanilla fine-tuning
baseline alike. Callers choose where the checkpoint lives and what happens to each evaluation.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robusttune.config import TaskSpec, TrainConfig
from robusttune.data.sets import TaskData, class_subset, restrict
from robusttune.errors import CheckpointError
from robusttune.models.classifier import ImageClassifier, frozen_copy
from robusttune.training.checkpoint import load_checkpoint, save_checkpoint
from robusttune.training.device import Placement
from robusttune.training.distributed import ALONE, Shard
from robusttune.training.loop import OnStep, Probe, Report, TrainResult, total_steps, train
from robusttune.training.tasks import build_task


@dataclass
class Run:
    """A run ready to go: the zero-shot student, the task's data, and the checkpoint it resumes from (if any)."""

    config: TrainConfig
    student: ImageClassifier
    task: TaskData
    checkpoint: Path | None
    resume: dict[str, Any] | None
    placement: Placement  # the run's device and precision, resolved once (its evaluations use it too)

    @property
    def total_steps(self) -> int:
        return total_steps(self.config, len(self.task.train))

    @property
    def finished(self) -> bool:
        """The checkpoint it resumes from is the run's last step."""
        return self.resume is not None and int(self.resume["step"]) >= self.total_steps

    @property
    def history(self) -> list[dict[str, Any]]:
        """The evaluations the resumed checkpoint holds (empty for a fresh run)."""
        return json.loads(self.resume["history"]) if self.resume is not None else []

    def train(self, *, report: Report | None = None, after_save: Callable[[dict[str, Any]], None] | None = None,
              on_step: OnStep | None = None, shard: Shard = ALONE, probe: Probe | None = None) -> TrainResult:
        """Fine-tune (in place), writing the checkpoint at every evaluation; ``after_save`` sees each state saved.
        In a data-parallel run (``shard``) this process trains its share and only the leader writes. The teacher is
        a frozen copy of the zero-shot student (what ``probe`` receives as the run's start)."""
        def save(state: dict[str, Any]) -> None:
            save_checkpoint(self.checkpoint, state)  # type: ignore[arg-type]
            if after_save is not None:
                after_save(state)

        writes = self.checkpoint is not None and shard.leader
        return train(self.config, self.student, frozen_copy(self.student), self.task, report=report,
                     save_checkpoint=save if writes else None, resume=self.resume, placement=self.placement,
                     on_step=on_step, shard=shard, probe=probe)


def with_train_subset(task: TaskData, config: TrainConfig) -> TaskData:
    """The task trained on ``config.train_subset`` (a fixed, seeded per-class subset; the same for every trial)."""
    if config.train_subset is None:
        return task
    positions = class_subset(task.train.labels, config.train_subset)
    return dataclasses.replace(task, train=restrict(task.train, positions))


def prepare_run(config: TrainConfig, spec: TaskSpec, cache_dir: Path, *, checkpoint: Path | None = None,
                built: tuple[ImageClassifier, TaskData] | None = None, head_folders: Sequence[Path] = (),
                placement: Placement | None = None) -> Run:
    """Build the task (or take ``built``; ``head_folders`` keep its zero-shot head) and read ``checkpoint`` if it
    exists; a checkpoint written with another config is refused. ``placement``: the caller's, when it evaluates
    on it too (default: the config's device and precision), resolved first: a GPU given and unusable fails before
    anything is built."""
    placement = placement or Placement.of(config.device, config.precision)
    student, task = built if built is not None else build_task(spec, cache_dir, head_folders=head_folders)
    task = with_train_subset(task, config)
    resume = None
    if checkpoint is not None and checkpoint.is_file():
        resume = load_checkpoint(checkpoint)
        if not config.resumes(json.loads(resume["config"])):
            raise CheckpointError(f"{checkpoint}: checkpoint was written with a different config; cannot resume")
    return Run(config, student, task, checkpoint, resume, placement)
