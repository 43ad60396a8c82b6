"""The maths of a run: one training step, the optimiser and its learning-rate schedule, the
loss bookkeeping between host syncs, and evaluation on a held-out set.

The loop that calls these, resume and the summary are glmc.trainer's; the run folder's
files, glmc.rundir's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from glmc import distributed
from glmc.config import OptimConfig
from glmc.data.batch import TwoStreamBatch
from glmc.data.samplers import derived_seed
from glmc.errors import ConfigError, GlmcError
from glmc.methods.base import Method
from glmc.metrics import ConfusionCounter, Metrics
from glmc.precision import predict_logits
from glmc.sam import SAM
from glmc.shots import ShotBounds


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return torch.device(name)


def learning_rate(epoch: int, epochs: int, optim: OptimConfig) -> float:
    """The learning rate of `epoch` (from 0).

    cosine: `lr/2 (1 + cos(pi e / E))`, CosineAnnealingLR stepped per epoch.
    warmup-cosine: the authors' ImageNet schedule, `lr (e+1) / W` for e <= W, then
    `lr/2 (1 + cos(pi (e - W + 1) / (E - W + 1)))`.
    warmup-step: Cao et al.'s CIFAR schedule, `lr (e+1) / W` for e < W (ending at lr), then lr times
    `decay_factor` once for every `decay_at` fraction f with e >= round(f E).
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


def step_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The method's host-side randomness (lambda, the CutMix box) for one step."""
    return np.random.default_rng(derived_seed(seed, epoch, step, 1))


def train_step(
    model: nn.Module,
    method: Method,
    optimizer: torch.optim.Optimizer,
    batch: TwoStreamBatch,
    epoch: int,
    rng: np.random.Generator,
    skip_nonfinite: bool = False,
    lap: Callable[[str], None] | None = None,
) -> dict[str, Tensor] | None:
    """One optimisation step; returns the loss and its parts as detached device scalars.

    `model` is the run's step model: its forward carries the precision
    (`glmc.precision.MixedPrecision`), so everything here, from its fp32 outputs on, is fp32.
    With `skip_nonfinite`, a step whose loss is NaN or infinite changes nothing and returns None
    (this costs a host-device sync per step, so it is opt-in). With a `SAM` optimiser the step
    takes SAM's gradient at the perturbed weights; the returned loss is the one at the
    unperturbed weights. `lap(phase)`, if given, is called as each phase ends — "forward",
    "backward" (SAM's second pass included), "optimizer" — which is how `glmc bench` times them.
    """
    lap = lap or (lambda phase: None)
    device = batch.uniform.labels.device
    replay = copy.deepcopy(rng) if isinstance(optimizer, SAM) else None  # SAM's second pass draws the same lam, box
    result = method(model, batch, epoch, rng)
    lap("forward")
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    if skip_nonfinite and distributed.any_across(not torch.isfinite(result.loss), device):  # ranks skip together
        optimizer.zero_grad(set_to_none=True)
        return None
    if replay is not None:
        optimizer.second_pass(model, lambda: method(model, batch, epoch, replay).loss)
    lap("backward")
    optimizer.step()
    lap("optimizer")
    return {"loss": result.loss.detach(), **result.parts}


class NonFiniteLoss(GlmcError):
    """Training produced a NaN or infinite loss."""


class NonFiniteWatch:
    """Remembers, on the device, the first step whose loss was not finite, and its parts.

    `observe` queues a few tiny kernels and never waits; `check` (at the loop's sync points
    and before every checkpoint) raises `NonFiniteLoss` naming that step.
    """

    def __init__(self) -> None:
        self.first_step: Tensor | None = None  # 0-dim int64, -1 while all losses were finite
        self.first_parts: dict[str, Tensor] = {}

    def observe(self, parts: dict[str, Tensor], global_step: int) -> None:
        loss = parts["loss"]
        if self.first_step is None:
            self.first_step = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self.first_parts = {name: torch.zeros_like(value, dtype=torch.float32) for name, value in parts.items()}
        first = ~torch.isfinite(loss) & (self.first_step < 0)
        self.first_step = torch.where(first, global_step, self.first_step)
        self.first_parts = {name: torch.where(first, parts[name].float(), kept) for name, kept in self.first_parts.items()}

    def check(self) -> None:
        if self.first_step is None or int(self.first_step) < 0:
            return
        values = torch.stack(list(self.first_parts.values())).cpu().tolist()
        described = ", ".join(f"{name}={value:.4g}" for name, value in zip(self.first_parts, values))
        raise NonFiniteLoss(
            f"non-finite loss at step {int(self.first_step) + 1} ({described}); stopped, the last good "
            "checkpoint is kept (set train.nonfinite=skip to skip such steps instead)"
        )


@dataclass
class LossMeter:
    """Running sums of the loss parts, on the device (read once per epoch)."""

    totals: dict[str, Tensor] | None = None
    steps: int = 0

    def add(self, parts: dict[str, Tensor]) -> None:
        if self.totals is None:
            self.totals = {name: value.float().clone() for name, value in parts.items()}
        else:
            for name, value in parts.items():
                self.totals[name] += value.float()
        self.steps += 1

    def means(self) -> dict[str, float]:
        if not self.totals:
            return {}
        names = list(self.totals)
        values = torch.stack([self.totals[n] for n in names]).cpu().tolist()  # one transfer
        return {name: value / self.steps for name, value in zip(names, values)}


def confusion_counts(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
                     precision: str = "fp32") -> ConfusionCounter:
    """The confusion matrix and top-5 count of `model` on un-augmented test batches, in `precision`.

    batches: (N x C x H x W normalised float, N labels) on the model's device.
    """
    was_training = model.training
    model.eval()
    counter = ConfusionCounter(num_classes)
    for inputs, targets in batches:
        counter.update(predict_logits(model, inputs, precision), targets)
    model.train(was_training)
    return counter


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    class_counts: Sequence[int],
    shot_bounds: ShotBounds,
    precision: str = "fp32",
) -> Metrics:
    """Top-1/5, per-class and many/medium/few accuracy on un-augmented test batches.

    Under torchrun each rank passes its slice of the test set; the counts are summed over
    ranks, so every rank returns the metrics of the whole test set.
    """
    counter = confusion_counts(model, batches, len(class_counts), precision)
    if distributed.active():
        counter.reduce(distributed.sum_across, next(model.parameters()).device)
    return counter.finish(class_counts, shot_bounds)


def at_most(steps: int | None, batches: Iterator) -> Iterator:
    """The first `steps` items of `batches` (all of them when None)."""
    for index, batch in enumerate(batches):
        if steps is not None and index >= steps:
            return
        yield batch
