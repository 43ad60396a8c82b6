"""The optimiser and its learning-rate schedule: SGD with momentum (wrapped in SAM where asked), its lr set at the
start of every epoch."""

from __future__ import annotations

import math

import torch
from torch import nn

from glmc.config import OptimConfig
from glmc.sam import SAM


def learning_rate(epoch: int, epochs: int, optim: OptimConfig) -> float:
    """The learning rate of `epoch` (from 0).

    cosine: `lr/2 (1 + cos(pi e / E))`, CosineAnnealingLR stepped per epoch.
    warmup-cosine: the authors' ImageNet schedule, `lr (e+1) / W` for e <= W, then
    `lr/2 (1 + cos(pi (e - W + 1) / (E - W + 1)))`.
    warmup-step: Cao et al.'s CIFAR schedule, `lr (e+1) / W` for e < W (ending at lr), then lr times
    `decay_factor` once for every `decay_at` fraction f with e >= round(f E).
    ramp-cosine: Ren et al.'s CIFAR schedule, `lr (s + (1 - s) e / (W - 1))` for e < W - 1 (s is
    `warmup_start`), then `lr/2 (1 + cos(pi (e - W + 1) / (E - W)))`, which is 0 in the last epoch.
    With `optim.schedule_lag` epoch 0 trains at `lr` and epoch e at the value above for e - 1,
    as the authors' ImageNet-LT/iNat code does (it sets the lr after each epoch).
    """
    if optim.schedule_lag:
        if epoch == 0:
            return optim.lr
        epoch -= 1
    if optim.schedule == "cosine":
        return optim.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    warmup = optim.warmup_epochs
    if optim.schedule == "ramp-cosine":
        peak = max(warmup - 1, 0)  # the epoch that trains at lr
        if epoch < peak:
            return optim.lr * (optim.warmup_start + (1 - optim.warmup_start) * epoch / peak)
        return optim.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - peak) / max(epochs - 1 - peak, 1)))
    if optim.schedule == "warmup-step":
        if epoch < warmup:
            return optim.lr * (epoch + 1) / warmup
        decays = sum(epoch >= round(at * epochs) for at in optim.decay_at)
        return optim.lr * optim.decay_factor**decays
    if epoch <= warmup and warmup > 0:
        return optim.lr * (epoch + 1) / warmup
    return optim.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup + 1) / (epochs - warmup + 1)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def create_optimizer(model: nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.SGD | SAM:
    """SGD with momentum; wrapped in SAM (glmc.sam) when optim.sam_rho > 0."""
    # fused kernels on CUDA; foreach (multi-tensor) on CPU, where fused SGD is not faster
    options = {"fused": True} if device.type == "cuda" else {"foreach": True}
    sgd = torch.optim.SGD(
        model.parameters(), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, **options
    )
    return SAM(sgd, optim.sam_rho) if optim.sam_rho > 0 else sgd
