"""Training objectives: GLMC, its ablations and the baselines, one file each, one registry."""

from __future__ import annotations

from glmc.methods import (  # noqa: F401  (importing registers them)
    balanced_softmax,
    cb,
    ce,
    cutmix,
    drw,
    focal,
    glmc,
    glmc_ablations,
    ldam_drw,
    mixup,
)
from glmc.methods.base import METHODS, MethodOptions, Needs, StepResult, create_method, method_options

__all__ = ["METHODS", "MethodOptions", "Needs", "StepResult", "create_method", "method_options"]
