"""Focal loss (Lin et al., ICCV 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
from torch import nn

from glmc.data.batch import TwoStreamBatch
from glmc.methods.base import METHODS, MethodOptions, Needs, SearchRange, StepResult, require
from glmc.methods.losses import focal_loss


@dataclass(frozen=True)
class FocalOptions(MethodOptions):
    # The exponent gamma (Lin et al. 2017). 1.0 is Cao et al.'s CIFAR-LT focal baseline, the one the
    # long-tailed tables quote (Lin et al. use 2.0 for detection); 0 is cross-entropy.
    focal_gamma: float = 1.0
    search_space: ClassVar[dict[str, SearchRange]] = {"method.focal_gamma": SearchRange(0.0, 3.0)}

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.focal_gamma >= 0, f"method.focal_gamma must be >= 0, got {self.focal_gamma}")


@METHODS.register("focal")
class Focal:
    """The softmax focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection"):

        FL(p_y) = -(1 - p_y)^gamma log p_y,   p = softmax(z)

    gamma = method.focal_gamma (default 1.0, Cao et al.'s CIFAR-LT focal baseline); no class
    weights (alpha_t = 1). Trains the prediction head on the uniform stream's view 1.
    """

    Options = FocalOptions
    needs = Needs()  # the uniform stream's view 1, the prediction head

    def __init__(self, config: FocalOptions, class_counts: Sequence[int], total_epochs: int) -> None:
        self.gamma = config.focal_gamma

    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult:
        logits = model(batch.uniform.view1).logits  # N x K
        loss = focal_loss(logits, batch.uniform.labels, self.gamma)
        return StepResult(loss=loss, parts={"focal": loss.detach()})
