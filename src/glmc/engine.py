"""One training step, and what watches the steps between the loop's host syncs: the loss sums and non-finite losses.

The loop that calls these is glmc.trainer's; the optimiser and its schedule, glmc.optim's; evaluation,
glmc.evaluation's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from glmc import distributed
from glmc.data.batch import TwoStreamBatch
from glmc.data.samplers import derived_seed
from glmc.errors import GlmcError
from glmc.methods.base import Method
from glmc.sam import SAM


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


def at_most(steps: int | None, batches: Iterator) -> Iterator:
    """The first `steps` items of `batches` (all of them when None)."""
    for index, batch in enumerate(batches):
        if steps is not None and index >= steps:
            return
        yield batch
