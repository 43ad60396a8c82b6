"""Class-balanced re-weighting by the effective number of samples (Cui et al., CVPR 2019)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch.nn.functional as F
from torch import nn

from glmc.data.batch import TwoStreamBatch
from glmc.methods.base import METHODS, MethodOptions, Needs, StepResult, require
from glmc.methods.losses import effective_number_weights


@dataclass(frozen=True)
class ClassBalancedOptions(MethodOptions):
    # beta of the effective number E_n = (1 - beta^n) / (1 - beta) (Cui et al. 2019), whose
    # inverse weighs the loss. 0 gives equal weights; 0.9999 is their CIFAR value.
    cb_beta: float = 0.9999

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.cb_beta < 1, f"method.cb_beta must be in [0, 1) (effective number of samples), got {self.cb_beta}")


@METHODS.register("cb")
class ClassBalanced:
    """Class-balanced cross-entropy from the first epoch on (Cui et al. 2019, "Class-Balanced
    Loss Based on Effective Number of Samples"):

        CB(z, y) = (1 - beta) / (1 - beta^n_y) * CE(z, y),   E_n = (1 - beta^n) / (1 - beta)

    with the weights normalised to sum to K (`effective_number_weights`) and the batch
    reduced by the weighted mean, as Cao et al.'s code does for its re-weighting baselines.
    Trains the prediction head on the uniform stream's view 1; beta = method.cb_beta.
    """

    Options = ClassBalancedOptions
    needs = Needs()  # the uniform stream's view 1, the prediction head

    def __init__(self, config: ClassBalancedOptions, class_counts: Sequence[int], total_epochs: int) -> None:
        self.weights = effective_number_weights(class_counts, config.cb_beta)  # K

    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult:
        labels = batch.uniform.labels
        self.weights = self.weights.to(labels.device)  # a no-op after the first step
        logits = model(batch.uniform.view1).logits  # N x K
        loss = F.cross_entropy(logits, labels, weight=self.weights.to(logits.dtype))
        return StepResult(loss=loss, parts={"class_balanced": loss.detach()})
