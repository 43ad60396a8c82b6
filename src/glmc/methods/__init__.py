"""Training objectives: GLMC and the baselines, one file each, one registry."""

from __future__ import annotations

from glmc.methods import ce, glmc  # noqa: F401  (importing registers them)
from glmc.methods.base import METHODS, MethodConfig, StepResult, create_method

__all__ = ["METHODS", "MethodConfig", "StepResult", "create_method"]
