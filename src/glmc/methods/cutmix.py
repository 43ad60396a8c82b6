"""CutMix alone (Yun et al., ICCV 2019), on the uniform stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from glmc.data.batch import TwoStreamBatch
from glmc.methods.base import CUTMIX_LABELS, METHODS, Needs, StepResult, require
from glmc.methods.mixup import MixUpOptions
from glmc.methods.losses import soft_cross_entropy
from glmc.mixing import box_area_fraction, cutmix, cutmix_box, mixed_targets, partner_indices, sample_lambda


@dataclass(frozen=True)
class CutMixOptions(MixUpOptions):
    cutmix_label: str = "lambda"  # the label share: "lambda" (as GLMC's local mixture) or "area" (the CutMix paper)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.cutmix_label in CUTMIX_LABELS,
                f"method.cutmix_label must be one of {', '.join(CUTMIX_LABELS)}, got {self.cutmix_label!r}")


@METHODS.register("cutmix")
class CutMix:
    """CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with
    Localizable Features"):

        x~ = M * x_i + (1 - M) * x_j,   y~ = lam y_i + (1 - lam) y_j,   lam ~ Beta(a, a)

    with M zero on a box of sides W sqrt(1 - lam), H sqrt(1 - lam) at a uniform centre, j a
    random permutation of the uniform batch (view 1) and a = method.beta. The label share is
    `lam` (method.cutmix_label=lambda, as GLMC's local mixture) or the clipped box's area
    (`area`, as the CutMix paper; the `-cutmix` presets use it). Every batch is mixed.
    """

    Options = CutMixOptions
    needs = Needs()  # the uniform stream's view 1, the prediction head

    def __init__(self, config: CutMixOptions, class_counts: Sequence[int], total_epochs: int) -> None:
        self.config = config
        self.num_classes = len(class_counts)

    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult:
        x, labels = batch.uniform.view1, batch.uniform.labels  # N x C x H x W, N
        lam = sample_lambda(rng, self.config.beta)
        height, width = x.shape[-2:]
        box = cutmix_box(height, width, lam, rng)
        partner = partner_indices(len(labels), rng, labels.device)  # N
        if self.config.cutmix_label == "area":
            lam = 1.0 - box_area_fraction(box, height, width)
        logits = model(cutmix(x, x[partner], box)).logits  # N x K
        loss = soft_cross_entropy(logits, mixed_targets(labels, labels[partner], lam, self.num_classes))
        return StepResult(loss=loss, parts={"cutmix": loss.detach(), "lam": torch.full_like(loss.detach(), lam)})
