"""``masked_distill``: the paper's method (Xiao et al., CVPR 2023, "Masked Images Are Counterfactual Samples for
Robust Fine-tuning"; the official code's main_distill.py and its masking and loss modules), per micro-batch:

1. one student forward on the clean images, capturing what the CAM needs; cross-entropy on its logits;
2. the CAM for the true labels: one ``torch.autograd.grad`` of ``sum(logit[y])`` to the captured activations (no
   parameter gradients; ``robusttune.method.cam``);
3. a patch mask (object / context / random, threshold or ratio form; ``masking``) and a refill (none / single /
   multi; ``refill``);
4. the frozen teacher's features (or logits) on the counterfactual images under ``inference_mode``, the student's on
   the same images (reusing the clean forward when there is no mask);
5. ``loss = w_task * CE + w_distill * distill`` (``losses``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robusttune.method import cam as cam_lib
from robusttune.method import losses, masking, refill
from robusttune.method.step import MethodStep
from robusttune.methods import CamMethod, DistillKind, DistillNorm, Refill, Region


class MaskedDistill(MethodStep):
    def cam(self, clean, labels: Tensor) -> Tensor:
        score = clean.logits.float().gather(1, labels[:, None]).sum()
        if self.knobs.cam is CamMethod.RELEVANCE:
            grads = torch.autograd.grad(score, clean.vit.attentions, retain_graph=True)
            with self.placement.exact_fp32():  # the product over blocks in true fp32, TF32 or not
                return cam_lib.attention_relevance([a.detach() for a in clean.vit.attentions], list(grads))
        (grad,) = torch.autograd.grad(score, clean.vit.last_ln1_tokens, retain_graph=True)
        return cam_lib.grad_cam(clean.vit.last_ln1_tokens.detach(), grad)

    def patch_mask(self, cam: Tensor | None, batch: int, patches: int, g: torch.Generator) -> Tensor:
        k = self.knobs
        scores = cam if cam is not None else torch.zeros(batch, patches, device=self.student.device)
        if k.mask_ratio is not None:
            return masking.ratio_mask(scores, k.region, k.mask_ratio, g)
        # random + no fill keeps an exact count of patches, as the official code does (it drops tokens by gather)
        return masking.threshold_mask(scores, k.region, k.mask_threshold, g, exact_count=k.refill is Refill.NONE)

    def counterfactual(self, images: Tensor, mask: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """The counterfactual images and, for refill 'none', the patches to drop from attention."""
        if self.knobs.refill is Refill.NONE:
            return images, mask
        batch, patches = mask.shape
        if self.knobs.refill is Refill.SINGLE:
            donors = refill.single_donors(batch, g)
        else:
            donors = refill.multi_donors(batch, patches, g)
        return refill.refill(images, mask, donors, self.student.patch_size), None

    def distill_loss(self, student_out, teacher_out) -> Tensor:
        k = self.knobs
        if k.distill is DistillKind.LOGIT:
            return losses.logit_kd(student_out.logits.float(), teacher_out.logits, temperature=k.kd_temperature)
        return losses.feature_mse(student_out.features.float(), teacher_out.features,
                                  normalise=k.distill_norm is DistillNorm.VARIANCE)

    def loss(self, images: Tensor, labels: Tensor, g: torch.Generator, *, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and its parts (``loss_task``, ``mask_fraction``, ``loss_distill``)."""
        k = self.knobs
        with self.placement.autocast():
            clean = self.student.run(images, cam=k.cam if k.uses_cam else None)
        task = F.cross_entropy(clean.logits.float(), labels)
        parts = {"loss_task": task.detach()}
        loss = k.w_task * task
        if k.w_distill > 0:
            drop = None
            if k.region is Region.NONE:
                cf_images, student_cf = images, clean  # distil on the clean images: reuse the clean forward
            else:
                cam = self.cam(clean, labels) if k.uses_cam else None
                mask = self.patch_mask(cam, images.shape[0], self.patches, g)
                parts["mask_fraction"] = mask.float().mean()
                cf_images, drop = self.counterfactual(images, mask, g)
                with self.placement.autocast():
                    student_cf = self.student.run(cf_images, drop_patches=drop)
            with torch.inference_mode(), self.placement.autocast():
                teacher_cf = self.teacher.run(cf_images, drop_patches=drop)
            # inference tensors cannot be saved for backward: take plain (fp32) copies for the loss
            teacher_cf.features, teacher_cf.logits = teacher_cf.features.float().clone(), teacher_cf.logits.float().clone()
            distill = self.distill_loss(student_cf, teacher_cf)
            parts["loss_distill"] = distill.detach()
            loss = loss + k.w_distill * distill
        return loss, parts

    @property
    def patches(self) -> int:
        h, w = self.student.grid_size
        return h * w
