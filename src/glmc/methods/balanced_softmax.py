"""Balanced Softmax (Ren et al., NeurIPS 2020) / the logit-adjusted loss (Menon et al., ICLR 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
from torch import nn

from glmc.data.batch import TwoStreamBatch
from glmc.methods.base import METHODS, MethodOptions, Needs, SearchRange, StepResult, require
from glmc.methods.losses import log_prior, logit_adjusted_cross_entropy


@dataclass(frozen=True)
class LogitAdjustedOptions(MethodOptions):
    # logits + tau * log(prior) (Menon et al. 2021): tau = 1 is Balanced Softmax (Ren et al. 2020),
    # tau = 0 cross-entropy.
    logit_adjust_tau: float = 1.0
    search_space: ClassVar[dict[str, SearchRange]] = {"method.logit_adjust_tau": SearchRange(0.0, 2.0)}

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.logit_adjust_tau >= 0, f"method.logit_adjust_tau must be >= 0, got {self.logit_adjust_tau}")


@METHODS.register("balanced-softmax")
class BalancedSoftmax:
    """The logit-adjusted softmax cross-entropy (Menon et al. 2021, "Long-tail learning via logit
    adjustment"), which at tau = 1 is Balanced Softmax (Ren et al. 2020, "Balanced Meta-Softmax
    for Long-Tailed Visual Recognition"):

        L(z, y) = -log( e^{z_y + tau log pi_y} / sum_j e^{z_j + tau log pi_j} ),   pi_k = n_k / n

    tau = method.logit_adjust_tau (default 1, Balanced Softmax). Prediction uses the plain
    logits z, which the adjustment during training leaves calibrated for the balanced test set.
    Trains the prediction head on the uniform stream's view 1.
    """

    Options = LogitAdjustedOptions
    needs = Needs()  # the uniform stream's view 1, the prediction head

    def __init__(self, config: LogitAdjustedOptions, class_counts: Sequence[int], total_epochs: int) -> None:
        self.tau = config.logit_adjust_tau
        self.log_prior = log_prior(class_counts)  # K

    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult:
        labels = batch.uniform.labels
        self.log_prior = self.log_prior.to(labels.device)
        logits = model(batch.uniform.view1).logits  # N x K
        loss = logit_adjusted_cross_entropy(logits, labels, self.log_prior, self.tau)
        return StepResult(loss=loss, parts={"balanced_softmax": loss.detach()})
