"""Backbones with GLMC heads, built by name: `create_model("resnet32", num_classes=10)`.

To add a backbone, write one file with a constructor decorated by
`@BACKBONES.register("name")` (signature `fn(num_classes: int) -> nn.Module`, the module's
forward returning a `GLMCOutput`) and import that file at the bottom of this one.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from glmc.errors import ConfigError
from glmc.models.output import GLMCOutput
from glmc.registry import Registry

BACKBONES: Registry[Callable[[int], nn.Module]] = Registry("backbone")


def create_model(name: str, num_classes: int) -> nn.Module:
    """Build the registered backbone `name` with GLMC heads for `num_classes` classes."""
    constructor = BACKBONES.get(name)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    return constructor(num_classes)


# Backbone modules register themselves on import; they need BACKBONES defined above.
from glmc.models import cifar_resnet  # noqa: E402, F401

__all__ = ["BACKBONES", "GLMCOutput", "create_model"]
