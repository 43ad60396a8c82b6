"""GLMC: Global and Local Mixture Consistency cumulative learning.

Du, Yang, Jia, Nan, Chen, Yang, "Global and Local Mixture Consistency Cumulative
Learning for Long-tailed Visual Recognitions", CVPR 2023 (arXiv 2305.08661).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from glmc.data.batch import TwoStreamBatch
from glmc.methods.base import METHODS, MethodConfig, StepResult
from glmc.methods.losses import class_weights, cumulative_alpha, simsiam_loss, soft_cross_entropy
from glmc.mixing import box_area_fraction, cutmix, cutmix_box, mixed_targets, mixup, sample_lambda


@METHODS.register("glmc")
class GLMC:
    """The GLMC objective for one step:

        L = alpha * L_CE + (1 - alpha) * L_cb + gamma * L_sim,   alpha = 1 - (T / T_max)^2

    with the global batch `x_g = mixup(uniform.view1, resampled.view1)` and the local
    batch `x_l = cutmix(uniform.view2, resampled.view2)` sharing one `lam`;
    `L_CE` is soft cross-entropy of `fc` on both, `L_cb` that of `fc_cb` with
    class-weighted labels, `L_sim = -cos(p_g, sg(z_l)) - cos(p_l, sg(z_g))`.
    """

    def __init__(self, config: MethodConfig, class_counts: Sequence[int], total_epochs: int) -> None:
        self.config = config
        self.total_epochs = total_epochs
        self.num_classes = len(class_counts)
        self.class_weights = class_weights(class_counts, config.label_weighting)  # K

    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult:
        uniform, resampled = batch.uniform, batch.resampled
        lam = sample_lambda(rng, self.config.beta)
        height, width = uniform.view2.shape[-2:]
        box = cutmix_box(height, width, lam, rng)
        x_global = mixup(uniform.view1, resampled.view1, lam)  # N x C x H x W
        x_local = cutmix(uniform.view2, resampled.view2, box)  # N x C x H x W
        lam_local = self._cutmix_lambda(lam, box, height, width)

        weights = self._weights_on(uniform.labels.device)
        labels = (uniform.labels, resampled.labels)
        p_global = mixed_targets(*labels, lam, self.num_classes)  # N x K
        p_local = mixed_targets(*labels, lam_local, self.num_classes)  # N x K
        p_global_w = mixed_targets(*labels, lam, self.num_classes, weights)  # N x K
        p_local_w = mixed_targets(*labels, lam_local, self.num_classes, weights)  # N x K

        out_g = model(x_global)
        out_l = model(x_local)
        ce = soft_cross_entropy(out_g.logits_fc, p_global) + soft_cross_entropy(out_l.logits_fc, p_local)
        cb = soft_cross_entropy(out_g.logits, p_global_w) + soft_cross_entropy(out_l.logits, p_local_w)
        sim = simsiam_loss(out_g.p, out_l.z) + simsiam_loss(out_l.p, out_g.z)

        alpha = cumulative_alpha(epoch, self.total_epochs)
        loss = alpha * ce + (1.0 - alpha) * cb + self.config.consistency_weight * sim
        parts = {
            "ce": ce.detach(),
            "cb": cb.detach(),
            "sim": sim.detach(),
            "alpha": _scalar(alpha, loss),
            "lam": _scalar(lam, loss),
        }
        return StepResult(loss=loss, parts=parts)

    def _cutmix_lambda(self, lam: float, box: tuple[int, int, int, int], height: int, width: int) -> float:
        """The uniform image's share of the CutMix label."""
        if self.config.cutmix_label == "area":
            return 1.0 - box_area_fraction(box, height, width)
        return lam  # authors' code: the drawn lam, whatever the clipped box covers

    def _weights_on(self, device: torch.device) -> Tensor:
        # Moved once and cached, so later steps do no host-to-device copy.
        if self.class_weights.device != device:
            self.class_weights = self.class_weights.to(device)
        return self.class_weights


def _scalar(value: float, like: Tensor) -> Tensor:
    # torch.full launches a fill kernel on `like`'s device: no host-device copy or sync.
    return torch.full((), value, dtype=like.dtype, device=like.device)
