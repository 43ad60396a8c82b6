"""Focal loss (Lin et al., ICCV 2017)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import nn

from glmc.data.batch import TwoStreamBatch
from glmc.methods.base import METHODS, MethodConfig, StepResult
from glmc.methods.losses import focal_loss


@METHODS.register("focal")
class Focal:
    """The softmax focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection"):

        FL(p_y) = -(1 - p_y)^gamma log p_y,   p = softmax(z)

    gamma = method.focal_gamma (default 1.0, Cao et al.'s CIFAR-LT focal baseline); no class
    weights (alpha_t = 1). Trains the prediction head on the uniform stream's view 1.
    """

    def __init__(self, config: MethodConfig, class_counts: Sequence[int], total_epochs: int) -> None:
        self.gamma = config.focal_gamma

    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult:
        logits = model(batch.uniform.view1).logits  # N x K
        loss = focal_loss(logits, batch.uniform.labels, self.gamma)
        return StepResult(loss=loss, parts={"focal": loss.detach()})
