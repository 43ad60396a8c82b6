"""Encoders with GLMC heads, built by name: `create_model("resnet32", num_classes=10)`.

CIFAR ResNets (cifar_resnet.py): resnet8, resnet20, resnet32, resnet32-wide. ImageNet
ResNets for 224 px images (imagenet_resnet.py): resnet10, resnet18, resnet50,
resnext50-32x4d.

To add one, register a constructor of your encoder (images N x 3 x H x W -> features N x d, with
`feature_dim` = d) with `@BACKBONES.register("name")` from `glmc.models.base`, in a file imported
here or in a module of your own imported before the run is built: `create_model` puts the GLMC
heads on it (`with_heads`).
"""

from __future__ import annotations

from glmc.models import cifar_resnet, imagenet_resnet  # noqa: F401  (importing registers them)
from glmc.models.base import BACKBONES, GLMCModel, create_model, with_heads
from glmc.models.heads import CLASSIFIERS, HEADS, use_heads
from glmc.models.output import GLMCOutput

__all__ = ["BACKBONES", "CLASSIFIERS", "GLMCModel", "GLMCOutput", "HEADS", "create_model", "use_heads", "with_heads"]
