"""Deferred re-weighting, DRW (Cao et al., NeurIPS 2019), with cross-entropy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from torch import nn

from glmc.data.batch import TwoStreamBatch
from glmc.methods.base import METHODS, Needs, StepResult, require
from glmc.methods.cb import ClassBalancedOptions
from glmc.methods.losses import deferred_cross_entropy, drw_start_epoch, effective_number_weights


@dataclass(frozen=True)
class DRWOptions(ClassBalancedOptions):
    # The re-weighting switches on at epoch round(drw_start * train.epochs); 0.8 is Cao et al.'s
    # epoch 160 of 200.
    drw_start: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.drw_start <= 1, f"method.drw_start must be in [0, 1] (a fraction of train.epochs), got {self.drw_start}")


@METHODS.register("drw")
class DeferredReweighting:
    """Cross-entropy, then class-balanced cross-entropy from the DRW epoch on (Cao et al. 2019,
    "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", Algorithm 1):

        L = mean_i CE(z_i, y_i)                                       for T <  T_drw
        L = sum_i w_{y_i} CE(z_i, y_i) / sum_i w_{y_i},   w_k = (1 - beta) / (1 - beta^n_k)   for T >= T_drw

    T_drw = round(method.drw_start * train.epochs) (their epoch 160 of 200); the weights are
    Cui et al.'s effective-number weights with beta = method.cb_beta (their 0.9999).
    """

    Options = DRWOptions
    needs = Needs()  # the uniform stream's view 1, the prediction head

    def __init__(self, config: DRWOptions, class_counts: Sequence[int], total_epochs: int) -> None:
        self.weights = effective_number_weights(class_counts, config.cb_beta)  # K
        self.start_epoch = drw_start_epoch(config.drw_start, total_epochs)

    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult:
        labels = batch.uniform.labels
        self.weights = self.weights.to(labels.device)
        logits = model(batch.uniform.view1).logits  # N x K
        loss, active = deferred_cross_entropy(logits, labels, self.weights, epoch, self.start_epoch)
        return StepResult(loss=loss, parts={"ce": loss.detach(), "drw": active})
