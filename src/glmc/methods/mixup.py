"""MixUp alone (Zhang et al., ICLR 2018), on the uniform stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from glmc.data.batch import TwoStreamBatch
from glmc.methods.base import METHODS, MethodOptions, Needs, StepResult, require
from glmc.methods.losses import soft_cross_entropy
from glmc.mixing import mixed_targets, mixup, partner_indices, sample_lambda


@dataclass(frozen=True)
class MixUpOptions(MethodOptions):
    beta: float = 1.0  # lam ~ Beta(beta, beta); 1.0 is Zhang et al.'s CIFAR value

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.beta > 0, f"method.beta must be > 0 (lambda ~ Beta(beta, beta)), got {self.beta}")


@METHODS.register("mixup")
class MixUp:
    """MixUp (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization"):

        x~ = lam x_i + (1 - lam) x_j,   y~ = lam y_i + (1 - lam) y_j,   lam ~ Beta(a, a)

    with j a random permutation of the uniform batch (view 1), a = method.beta (1.0, their
    CIFAR value), and the soft cross-entropy of the prediction head. No re-sampled stream:
    this is GLMC's global mixture without the re-balanced partner (`glmc-global-only`).
    """

    Options = MixUpOptions
    needs = Needs()  # the uniform stream's view 1, the prediction head

    def __init__(self, config: MixUpOptions, class_counts: Sequence[int], total_epochs: int) -> None:
        self.beta = config.beta
        self.num_classes = len(class_counts)

    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult:
        x, labels = batch.uniform.view1, batch.uniform.labels  # N x C x H x W, N
        lam = sample_lambda(rng, self.beta)
        partner = partner_indices(len(labels), rng, labels.device)  # N
        logits = model(mixup(x, x[partner], lam)).logits  # N x K
        loss = soft_cross_entropy(logits, mixed_targets(labels, labels[partner], lam, self.num_classes))
        return StepResult(loss=loss, parts={"mixup": loss.detach(), "lam": torch.full_like(loss.detach(), lam)})
