"""What every training method shares: its config, its result, and the registry.

A method is built once per run as
`METHODS.get(name)(config, class_counts, total_epochs)` and then called every step as
`method(model, batch, epoch, rng) -> StepResult`, where `model(x)` returns a
`GLMCOutput`. A newcomer adds a method with one file and one `@METHODS.register(name)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, Sequence

import numpy as np
from torch import Tensor, nn

from glmc.data.batch import TwoStreamBatch
from glmc.errors import ConfigError
from glmc.registry import Registry

CUTMIX_LABELS = ("lambda", "area")


@dataclass(frozen=True)
class MethodConfig:
    """The training objective. Defaults reproduce the authors' code."""

    name: str = "glmc"
    # lambda ~ Beta(beta, beta). The authors' code always uses Beta(1, 1), whatever its
    # --beta flag says; set 0.5 for the paper's stated variant.
    beta: float = 1.0
    # tau: class weights n_k^-tau for the re-balanced head's labels (--label_weighting).
    label_weighting: float = 1.2
    # gamma: weight of the SimSiam global-local consistency loss.
    consistency_weight: float = 1.0
    # How the CutMix soft label splits between the two images: "lambda" (authors' code)
    # or "area" (the clipped box's actual pixel share, as in the CutMix paper).
    cutmix_label: str = "lambda"
    # GLMC: both mixed batches through the encoder as one batch of 2N (faster on a GPU). Not the
    # authors' computation: BatchNorm then normalises over both batches together.
    joint_forward: bool = False

    # ---- the baselines' options; each default is its paper's (or its code's, where named) ----
    # beta of the effective number E_n = (1 - beta^n) / (1 - beta) (Cui et al. 2019), whose
    # inverse weighs the loss in `cb`, `drw` and `ldam-drw`. 0 gives equal weights.
    cb_beta: float = 0.9999
    # Deferred re-weighting (Cao et al. 2019): the re-weighting of `drw` and `ldam-drw`
    # switches on at epoch round(drw_start * train.epochs); 0.8 is their epoch 160 of 200.
    drw_start: float = 0.8
    # Focal loss exponent gamma (Lin et al. 2017). 1.0 is Cao et al.'s CIFAR-LT focal baseline,
    # the one the long-tailed tables quote (Lin et al. use 2.0 for detection); 0 is cross-entropy.
    focal_gamma: float = 1.0
    # LDAM (Cao et al. 2019): margins C / n_j^(1/4) with the largest equal to `ldam_max_margin`,
    # logits scaled by `ldam_scale` s (their CIFAR values 0.5 and 30).
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    # Logit-adjusted loss (Menon et al. 2021): logits + tau * log(prior). tau = 1 is Balanced
    # Softmax (Ren et al. 2020); tau = 0 is cross-entropy.
    logit_adjust_tau: float = 1.0

    def __post_init__(self) -> None:
        # `not x >= 0` rather than `x < 0` so that NaN is rejected too.
        if not self.beta > 0:
            raise ConfigError(f"method.beta must be > 0 (lambda ~ Beta(beta, beta)), got {self.beta}")
        if not self.label_weighting >= 0:
            raise ConfigError(f"method.label_weighting (tau) must be >= 0, got {self.label_weighting}")
        if not self.consistency_weight >= 0:
            raise ConfigError(f"method.consistency_weight (gamma) must be >= 0, got {self.consistency_weight}")
        if self.cutmix_label not in CUTMIX_LABELS:
            raise ConfigError(
                f"method.cutmix_label must be one of {', '.join(CUTMIX_LABELS)}, got {self.cutmix_label!r}"
            )
        if not 0 <= self.cb_beta < 1:
            raise ConfigError(f"method.cb_beta must be in [0, 1) (effective number of samples), got {self.cb_beta}")
        if not 0 <= self.drw_start <= 1:
            raise ConfigError(f"method.drw_start must be in [0, 1] (a fraction of train.epochs), got {self.drw_start}")
        if not self.focal_gamma >= 0:
            raise ConfigError(f"method.focal_gamma must be >= 0, got {self.focal_gamma}")
        if not self.ldam_max_margin >= 0:
            raise ConfigError(f"method.ldam_max_margin must be >= 0, got {self.ldam_max_margin}")
        if not self.ldam_scale > 0:
            raise ConfigError(f"method.ldam_scale must be > 0, got {self.ldam_scale}")
        if not self.logit_adjust_tau >= 0:
            raise ConfigError(f"method.logit_adjust_tau must be >= 0, got {self.logit_adjust_tau}")


class StepResult(NamedTuple):
    """One training step's outcome.

    `loss` carries the graph for `backward()`; `parts` are detached scalar tensors for
    logging, left on the device so the training loop never waits on a `.item()`.
    """

    loss: Tensor
    parts: dict[str, Tensor]


class Method(Protocol):
    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult: ...


MethodConstructor = Callable[[MethodConfig, Sequence[int], int], Method]

METHODS: Registry[MethodConstructor] = Registry("method")


def create_method(config: MethodConfig, class_counts: Sequence[int], total_epochs: int) -> Method:
    """Build the method named by `config.name`; unknown names raise ConfigError with close matches."""
    constructor = METHODS.get(config.name)
    if total_epochs <= 0:
        raise ConfigError(f"total_epochs must be positive, got {total_epochs}")
    return constructor(config, class_counts, total_epochs)
