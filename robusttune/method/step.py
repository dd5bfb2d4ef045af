"""What every method's step is: its loss on a micro-batch and which weights it trains at a step.

A ``MethodStep`` works on the models through what they expose (``run``, ``head``, ``visual``,
``named_parameters``), never by importing them: the method core stays pure tensor code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

HEAD, ALL = "head", "all"  # what a step trains: the head alone, or every weight


class MethodStep:
    """One method's step. ``config`` is the run's TrainConfig (its knobs: ``config.method``); ``student`` the model
    being fine-tuned, ``teacher`` the frozen zero-shot model it started as; ``placement`` gives ``autocast()`` and
    ``exact_fp32()`` (robusttune.training.device)."""

    def __init__(self, config: Any, student: Any, teacher: Any, placement: Any):
        self.config, self.knobs = config, config.method
        self.student, self.teacher, self.placement = student, teacher, placement

    own_weights: torch.nn.Module | None = None  # weights the method trains outside the classifier (FLYP's text
    # tower): the optimizer holds them after the classifier's, and the run's checkpoints keep them (``method_state``)

    def parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer holds, in this order: every weight of the classifier (and the method's own)."""
        own = list(self.own_weights.parameters()) if self.own_weights is not None else []
        return [*self.student.parameters(), *own]

    def before_evaluation(self) -> None:
        """Called before every evaluation (and so before every checkpoint): a method whose head follows other
        weights (FLYP: its text tower) writes it into the classifier here."""

    def trains(self, step: int, total: int) -> str:
        """``ALL`` or ``HEAD``: the weights that get gradients at ``step`` of ``total``."""
        return ALL

    @property
    def ever_trains_tower(self) -> bool:
        """Whether any step trains the image tower (a linear probe's never does: its optimizer holds the head alone)."""
        return True

    def loss(self, images: Tensor, labels: Tensor, g: torch.Generator, *, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """The micro-batch's loss and its parts (0-dim device tensors; nothing here waits for the device). ``g``: the
        micro-batch's draws (``(seed, step, slot)``); ``step``: for draws shared by every micro-batch of a step."""
        task = self.cross_entropy(images, labels)
        return task, {"loss_task": task.detach()}

    def cross_entropy(self, images: Tensor, labels: Tensor) -> Tensor:
        with self.placement.autocast():
            clean = self.student.run(images)
        return F.cross_entropy(clean.logits.float(), labels)
