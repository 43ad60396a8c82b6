"""Backbones with GLMC heads, built by name: `create_model("resnet32", num_classes=10)`.

CIFAR ResNets (cifar_resnet.py): resnet8, resnet20, resnet32, resnet32-wide. ImageNet
ResNets for 224 px images (imagenet_resnet.py): resnet10, resnet18, resnet50,
resnext50-32x4d.

To add a backbone, write one file with a constructor decorated by
`@BACKBONES.register("name")` (signature `fn(num_classes: int, classifier: str = "linear")
-> nn.Module`, passing `classifier` to `GLMCHeads`, the module's forward returning a
`GLMCOutput`) and import that file at the bottom of this one.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from glmc.errors import ConfigError
from glmc.models.heads import CLASSIFIERS
from glmc.models.output import GLMCOutput
from glmc.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


def create_model(name: str, num_classes: int, classifier: str = "linear") -> nn.Module:
    """Build the registered backbone `name` with GLMC heads for `num_classes` classes.

    `classifier` is the kind of the prediction head fc_cb: "linear" or "cosine" (LDAM's
    normalised classifier, Cao et al. 2019).
    """
    constructor = BACKBONES.get(name)
    CLASSIFIERS.get(classifier)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    return constructor(num_classes, classifier=classifier)


# Backbone modules register themselves on import; they need BACKBONES defined above.
from glmc.models import cifar_resnet, imagenet_resnet  # noqa: E402, F401

__all__ = ["BACKBONES", "CLASSIFIERS", "GLMCOutput", "create_model"]
