"""LDAM-DRW: label-distribution-aware margins with deferred re-weighting (Cao et al., NeurIPS 2019)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from torch import nn

from glmc.data.batch import TwoStreamBatch
from glmc.methods.base import METHODS, Needs, StepResult, require
from glmc.methods.drw import DRWOptions
from glmc.methods.losses import deferred_cross_entropy, drw_start_epoch, effective_number_weights, ldam_margins, margin_lowered


@dataclass(frozen=True)
class LDAMDRWOptions(DRWOptions):
    # Margins C / n_j^(1/4) with the largest equal to ldam_max_margin; logits scaled by ldam_scale
    # (Cao et al.'s CIFAR values 0.5 and 30).
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.ldam_max_margin >= 0, f"method.ldam_max_margin must be >= 0, got {self.ldam_max_margin}")
        require(self.ldam_scale > 0, f"method.ldam_scale must be > 0, got {self.ldam_scale}")

    @property
    def logit_scale(self) -> float:
        return self.ldam_scale  # the model's logits are s cos(h, w_k): softmax of them is what the loss trained


@METHODS.register("ldam-drw")
class LDAMDRW:
    """The LDAM loss with deferred re-weighting (Cao et al. 2019, "Learning Imbalanced Datasets
    with Label-Distribution-Aware Margin Loss", the LDAM loss and Algorithm 1):

        L_LDAM(z, y) = -log( e^{s(z_y - Delta_y)} / (e^{s(z_y - Delta_y)} + sum_{j != y} e^{s z_j}) ),
        Delta_j = C / n_j^(1/4)

    on the cosines `z` of a normalised classifier (`model.classifier=cosine`, which the
    config requires), C so that the largest margin is method.ldam_max_margin, s =
    method.ldam_scale. The model's logits are already `s z` (the options' `logit_scale`), so the
    loss lowers the true class's logit by `s Delta_y`. From epoch
    T_drw = round(method.drw_start * train.epochs) the loss is re-weighted by the
    effective-number weights (beta = method.cb_beta), as in `drw`.
    """

    Options = LDAMDRWOptions
    needs = Needs()  # the uniform stream's view 1, the prediction head
    required_classifier = "cosine"  # checked by glmc.config.validate

    def __init__(self, config: LDAMDRWOptions, class_counts: Sequence[int], total_epochs: int) -> None:
        self.config = config
        self.margins = config.ldam_scale * ldam_margins(class_counts, config.ldam_max_margin)  # K, s Delta_j: in logits
        self.weights = effective_number_weights(class_counts, config.cb_beta)  # K
        self.start_epoch = drw_start_epoch(config.drw_start, total_epochs)

    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult:
        labels = batch.uniform.labels
        self.margins, self.weights = self.margins.to(labels.device), self.weights.to(labels.device)
        logits = model(batch.uniform.view1).logits  # N x K, s times the cosines
        margin_logits = margin_lowered(logits, labels, self.margins)  # N x K
        loss, active = deferred_cross_entropy(margin_logits, labels, self.weights, epoch, self.start_epoch)
        return StepResult(loss=loss, parts={"ldam": loss.detach(), "drw": active})
