"""``flyp``: FLYP (Goyal et al., CVPR 2023, "Finetune like you pretrain: Improved finetuning of zero-shot vision
models"), as its official code trains (locuslab/FLYP: src/models/flyp_loss.py, the loss of clip/loss.py's
``ClipLoss``, the captions of datacreation_scripts/imagenet_csv_creator.py, the head of src/models/zeroshot.py):

- each training image is paired with a caption: a zero-shot template filled with its class name, drawn uniformly
  per image and step (the official CSV holds every (image, template) pair, shuffled);
- the image tower, the text tower and the logit scale are all trained with CLIP's contrastive loss: with the
  L2-normalised image features ``f`` and caption features ``t`` of the batch and ``s = exp(logit_scale)``,
  ``(CE(s f t^T, arange) + CE(s t f^T, arange)) / 2`` (other images of the same class are negatives, as there);
- the classifier's head is the fine-tuned text tower's zero-shot head (per class the mean of its normalised
  template embeddings, normalised, times ``s``), rebuilt before every evaluation: what a checkpoint's ``model``
  holds, so WiSE-FT and the merges see it as any head (they interpolate the head, not the text tower: the paper's
  WiSE-FT interpolates both towers and rebuilds the head). The text tower is saved beside it (``method_state``).

No knobs (lr, weight decay and batch size are the common settings). One difference: the loss is over each
micro-batch's pairs; the official code (one process, ``DataParallel``) takes the whole batch's, which is what
robusttune computes with ``accum_steps: 1`` and one worker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robusttune.errors import ConfigError
from robusttune.method.step import MethodStep


def clip_contrastive_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP's symmetric InfoNCE over a batch of (image, caption) pairs: the i-th caption is the i-th image's."""
    image, text = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
    logits = logit_scale * image @ text.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class Flyp(MethodStep):
    def __init__(self, config, student, teacher, placement):
        super().__init__(config, student, teacher, placement)
        self.text = getattr(student, "text", None)
        if self.text is None:
            raise ConfigError("method flyp needs the text tower of the CLIP the classifier came from")
        self.own_weights = self.text.trainable_copy().to(student.device)

    def parameters(self):
        # the head is not trained: it is rebuilt from the text tower
        return [*self.student.visual.parameters(), *self.own_weights.parameters()]

    def before_evaluation(self) -> None:
        weights = self.text.head_weights(self.own_weights, self.student.device)
        with torch.no_grad():
            self.student.head.weight.copy_(weights)
            self.student.head.bias.zero_()
        self.own_weights.train()

    def loss(self, images, labels, g, *, step=0):
        templates = self.placement.upload(torch.randint(len(self.text.templates), (labels.shape[0],), generator=g))
        tokens = self.text.caption_tokens(self.student.device)[labels, templates]  # on the device: no host read
        with self.placement.autocast():
            image_features = self.student.run(images).features
            text_features = self.own_weights.encode_text(tokens)
        loss = clip_contrastive_loss(image_features.float(), text_features.float(), self.own_weights.logit_scale.exp())
        return loss, {"loss_task": loss.detach()}
