"""Sharpness-aware minimisation (SAM; Foret et al., "Sharpness-Aware Minimization for
Efficiently Improving Generalization", ICLR 2021), around the base SGD.

SAM minimises `max_{||e|| <= rho} L(w + e)`. Its first-order step: compute the gradient
`g = grad L(w)`, move to `w + e(w)` with `e(w) = rho * g / ||g||_2` (the norm over all
parameters), compute the gradient there, return to `w` and let the base optimiser step with
that second gradient. On long-tailed data Rangwani et al. (NeurIPS 2022, "Escaping Saddle
Points for Effective Generalization on Class-Imbalanced Data") report 1.5-2 points on top
of GLMC.

Both passes see the same batch and the same method randomness (lambda, CutMix box): the
caller replays the step's numpy generator. Batch-norm running statistics are updated by
the first pass only, so the perturbed weights never leak into them. (Rangwani et al.'s GLMC
code updates them in both passes and leaves the consistency loss out of the first one; here
both passes use the method's whole loss, as in Foret et al.)
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn


class SAM:
    """A base optimiser plus SAM's perturbed second pass.

    It stands in for the base optimiser everywhere (`param_groups`, `zero_grad`, `step`,
    `state_dict`, `load_state_dict` are the base's, so checkpoints are those of plain SGD);
    `second_pass` replaces the gradients of the first pass by those at `w + e(w)`. With
    rho = 0 it does nothing, and the step is exactly the base optimiser's.
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float) -> None:
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        self.base = base
        self.rho = rho

    @property
    def param_groups(self) -> list[dict]:
        return self.base.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.base.step()

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)

    def second_pass(self, model: nn.Module, loss_at: Callable[[], Tensor]) -> None:
        """With the first pass's gradients in `.grad`: perturb, recompute the gradients, restore `w`.

        `loss_at()` must recompute the same loss (same batch, same randomness) at the current weights.
        """
        if self.rho == 0:
            return
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        with torch.no_grad():
            perturbation = sam_perturbation([p.grad for p in params], self.rho)
            torch._foreach_add_(params, perturbation)  # w -> w + e(w)
        self.zero_grad(set_to_none=True)
        with frozen_batch_norm_statistics(model):
            loss_at().backward()
        with torch.no_grad():
            torch._foreach_sub_(params, perturbation)  # back to w, keeping the gradient at w + e(w)


def sam_perturbation(grads: list[Tensor], rho: float) -> list[Tensor]:
    """`e(w) = rho * g / ||g||_2`, the norm taken over all parameters at once (Foret et al., q = 2).

    Stays on the device: no host sync. A zero gradient gives a zero perturbation.
    """
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))  # 0-dim
    scale = rho / (norm + 1e-12)
    return torch._foreach_mul(grads, scale)


@contextlib.contextmanager
def frozen_batch_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Batch norm still normalises by the batch's statistics but leaves its running ones alone."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for module in norms:
        module.track_running_stats = False
    try:
        yield
    finally:
        for module in norms:
            module.track_running_stats = True
