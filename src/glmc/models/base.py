"""The backbone registry: `create_model("resnet32", num_classes=10)`.

Entries (cifar_resnet.py, imagenet_resnet.py) register themselves with `@BACKBONES.register(name)`
and are imported by `glmc/models/__init__.py`.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from glmc.errors import ConfigError
from glmc.models.heads import CLASSIFIERS
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
