"""The loss terms of GLMC and of the baselines, one pure function each."""

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
    counts = _counts(class_counts)  # K
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


# ---------------------------------------------------------------- the baselines' terms


def _counts(class_counts: Sequence[int]) -> Tensor:
    """Training counts as float64 (K), refusing an empty class."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)  # K
    if counts.numel() == 0 or bool((counts <= 0).any()):
        raise DataError(f"every class needs at least one training image, got counts {list(class_counts)}")
    return counts


def at_least_float32(x: Tensor) -> Tensor:
    """`x` in float32, or its own wider type: bf16 logits from autocast gain their precision back."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def effective_number_weights(class_counts: Sequence[int], beta: float) -> Tensor:
    """Class-balanced weights of Cui et al. 2019 (float32, length K, summing to K).

    The effective number of samples of class k is `E_k = (1 - beta^n_k) / (1 - beta)`; the
    class-balanced loss weighs class k by `1 / E_k = (1 - beta) / (1 - beta^n_k)`,
    normalised here to sum to K. `beta = 0` gives equal weights; `beta -> 1` approaches
    inverse class frequency.
    """
    counts = _counts(class_counts)
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    raw = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))  # K
    return (raw / raw.sum() * counts.numel()).float()


def deferred_weights(weights: Tensor, epoch: int, start_epoch: int) -> Tensor | None:
    """Deferred re-weighting (DRW, Cao et al. 2019): no weights before `start_epoch`, `weights` from it on."""
    return weights if epoch >= start_epoch else None


def deferred_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor, epoch: int, start_epoch: int) -> tuple[Tensor, Tensor]:
    """Cross-entropy, class-weighted by `weights` from `start_epoch` on (DRW); and whether the
    weights are on, as a 0-dim 1.0 / 0.0 to log. logits: N x K, labels: N, weights: K."""
    deferred = deferred_weights(weights, epoch, start_epoch)
    loss = F.cross_entropy(logits, labels, weight=None if deferred is None else deferred.to(logits.dtype))
    active = torch.full((), float(deferred is not None), dtype=loss.dtype, device=loss.device)
    return loss, active


def drw_start_epoch(fraction: float, total_epochs: int) -> int:
    """The epoch (from 0) at which DRW switches on: `round(fraction * total_epochs)` (0.8 of 200 = 160)."""
    return int(round(fraction * total_epochs))


def log_prior(class_counts: Sequence[int]) -> Tensor:
    """`log pi_k = log(n_k / sum_j n_j)`, the log of the training label prior (float32, length K)."""
    counts = _counts(class_counts)
    return torch.log(counts / counts.sum()).float()


def logit_adjusted_cross_entropy(logits: Tensor, labels: Tensor, log_prior: Tensor, tau: float) -> Tensor:
    """The logit-adjusted loss of Menon et al. 2021: `CE(logits + tau * log pi, y)`.

    With tau = 1 it is Balanced Softmax (Ren et al. 2020), `-log(n_y e^z_y / sum_j n_j e^z_j)`:
    `log n_j` and `log pi_j` differ by a constant that softmax ignores. With a uniform prior
    it equals cross-entropy. logits: N x K, labels: N, log_prior: K -> scalar.
    """
    logits = at_least_float32(logits)  # log priors of rare classes are large: add them in float32
    return F.cross_entropy(logits + tau * log_prior.to(logits.dtype), labels)


def focal_loss(logits: Tensor, labels: Tensor, gamma: float, weights: Tensor | None = None) -> Tensor:
    """Softmax focal loss of Lin et al. 2017: `mean_i w_{y_i} (1 - p_{y_i})^gamma (-log p_{y_i})`.

    `p` is the softmax of `logits`; `gamma = 0` without weights is cross-entropy. With the
    class-balanced `weights` (length K) it is Cui et al.'s class-balanced focal-softmax loss.
    logits: N x K, labels: N -> scalar.
    """
    log_p = F.log_softmax(at_least_float32(logits), dim=-1).gather(1, labels[:, None]).squeeze(1)  # N, log p_y
    loss = -((1.0 - log_p.exp()) ** gamma) * log_p  # N
    if weights is not None:
        loss = loss * weights.to(loss.dtype)[labels]
    return loss.mean()


def ldam_margins(class_counts: Sequence[int], max_margin: float) -> Tensor:
    """LDAM's class margins `Delta_k = C / n_k^(1/4)` (Cao et al. 2019), C so that the largest is `max_margin`.

    float32, length K; the rarest class gets `max_margin`.
    """
    raw = _counts(class_counts).pow(-0.25)  # K
    return (raw * (max_margin / raw.max())).float()


def margin_lowered(logits: Tensor, labels: Tensor, margins: Tensor) -> Tensor:
    """`z - Delta_y onehot(y)`: the true class's logit lowered by its margin.

    LDAM's loss is the cross-entropy of these (Cao et al. 2019), on logits `s cos(h, w_k)` of a
    normalised classifier, with margins `s Delta_j`. logits: N x K, labels: N, margins: K -> N x K, in fp32.
    """
    logits = at_least_float32(logits)  # margins of a few tenths on logits up to s: not in bf16
    onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)  # N x K
    return logits - onehot * margins.to(logits.dtype)[labels][:, None]
