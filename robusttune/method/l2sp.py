"""``l2sp``: L2-SP (Li, Grandvalet and Davoine, ICML 2018, "Explicit Inductive Bias for Transfer Learning with
Convolutional Networks", eq. 3): cross-entropy plus ``alpha / 2 * ||w - w_0||^2``, ``w_0`` the pre-trained weights
the run starts from (the frozen zero-shot teacher's), added to the loss (not decoupled like AdamW's decay).

As the authors' code (holyseven/TransferLearningClassification, model/network_base.py, mode 1: ``tf.nn.l2_loss``
of ``w - w0`` over the variables named ``weights``, i.e. the layers' kernels) the penalty covers the weight
matrices and kernels (tensors of 2 or more dimensions: every linear and convolution weight, the positional
embedding, the head), not biases, norms or the class token. The paper adds ``beta / 2 * ||w_new||^2`` for layers
without a pre-trained value; here every layer has one (the head starts as the zero-shot head), so ``alpha =
strength`` is the whole penalty.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robusttune.method.step import MethodStep


def l2sp_penalty(weights: list[Tensor], anchors: list[Tensor], strength: float) -> Tensor:
    """``strength / 2 * sum ||w - w_0||^2`` over matching tensors, in fp32."""
    total = torch.zeros((), device=weights[0].device)
    for weight, anchor in zip(weights, anchors, strict=True):
        total = total + (weight.float() - anchor.float()).pow(2).sum()
    return 0.5 * strength * total


class L2sp(MethodStep):
    def __init__(self, config, student, teacher, placement):
        super().__init__(config, student, teacher, placement)
        anchors = dict(teacher.named_parameters())
        self.pairs = [(p, anchors[name]) for name, p in student.named_parameters() if p.ndim >= 2]

    def loss(self, images, labels, g, *, step=0):
        task = self.cross_entropy(images, labels)
        trained = [(p, a) for p, a in self.pairs if p.requires_grad]
        penalty = l2sp_penalty([p for p, _ in trained], [a for _, a in trained], self.knobs.strength)
        return task + penalty, {"loss_task": task.detach(), "loss_l2sp": penalty.detach()}
