"""Backbones with GLMC heads, built by name: `create_model("resnet32", num_classes=10)`.

CIFAR ResNets (cifar_resnet.py): resnet8, resnet20, resnet32, resnet32-wide. ImageNet
ResNets for 224 px images (imagenet_resnet.py): resnet10, resnet18, resnet50,
resnext50-32x4d.

To add a backbone, write one file with a constructor decorated by
`@BACKBONES.register("name")` from `glmc.models.base` (signature `fn(num_classes: int,
classifier: str = "linear") -> nn.Module`, passing `classifier` to `GLMCHeads`, the module's
forward returning a `GLMCOutput`) and import that file here.
"""

from __future__ import annotations

from glmc.models import cifar_resnet, imagenet_resnet  # noqa: F401  (importing registers them)
from glmc.models.base import BACKBONES, create_model
from glmc.models.heads import CLASSIFIERS, HEADS, use_heads
from glmc.models.output import GLMCOutput

__all__ = ["BACKBONES", "CLASSIFIERS", "GLMCOutput", "HEADS", "create_model", "use_heads"]
