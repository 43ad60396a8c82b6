"""Baseline: plain cross-entropy on the uniform stream, no mixing, no re-balancing."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch.nn.functional as F
from torch import nn

from glmc.data.batch import TwoStreamBatch
from glmc.methods.base import METHODS, MethodOptions, Needs, StepResult


@METHODS.register("ce")
class CrossEntropy:
    """Cross-entropy of the prediction head (`GLMCOutput.logits`) on the uniform view 1.

    It reads nothing else (`needs`): no re-sampled stream or second view is built for it; the
    epoch and the rng are accepted so every method has the same contract.
    """

    Options = MethodOptions  # no options of its own
    needs = Needs()  # the uniform stream's view 1, the prediction head

    def __init__(self, config: MethodOptions, class_counts: Sequence[int], total_epochs: int) -> None:
        self.config = config

    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult:
        out = model(batch.uniform.view1)
        ce = F.cross_entropy(out.logits, batch.uniform.labels)
        return StepResult(loss=ce, parts={"ce": ce.detach()})
