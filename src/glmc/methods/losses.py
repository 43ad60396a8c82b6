"""The loss terms of GLMC, one pure function each."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from glmc.errors import DataError


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against soft labels: `mean_i( -sum_k targets_ik * log_softmax(logits)_ik )`.

    Inputs: N x K logits and N x K targets. Output: a scalar tensor.
    """
    log_probs = F.log_softmax(logits, dim=-1)  # N x K
    return -(targets * log_probs).sum(dim=-1).mean()


def class_weights(class_counts: Sequence[int], tau: float) -> Tensor:
    """Per-class label weights `w_k = n_k^-tau / sum_j n_j^-tau * K` (float32, length K).

    They sum to K; `tau = 0` gives all ones, larger `tau` favours the rare classes.
    """
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)  # K
    if counts.numel() == 0 or bool((counts <= 0).any()):
        raise DataError(f"every class needs at least one training image, got counts {list(class_counts)}")
    raw = counts.pow(-tau)
    return (raw / raw.sum() * counts.numel()).float()


def simsiam_loss(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam negative cosine `-mean_i cos(p_i, sg(z_i))`, a scalar in [-1, 1].

    Inputs: N x e predictor outputs `p` and N x e projections `z`. The stop-gradient on
    `z` is what keeps SimSiam from collapsing: only the `p` side is pulled.
    """
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def cumulative_alpha(epoch: int, total_epochs: int) -> float:
    """The cumulative coefficient `alpha = 1 - (epoch / total_epochs)^2`, epoch counted from 0.

    It moves the weight from the plain classifier loss (alpha = 1 at the start) toward
    the re-balanced one as training goes on.
    """
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be positive, got {total_epochs}")
    if not 0 <= epoch <= total_epochs:
        raise ValueError(f"epoch must be in [0, {total_epochs}], got {epoch}")
    return 1.0 - (epoch / total_epochs) ** 2
