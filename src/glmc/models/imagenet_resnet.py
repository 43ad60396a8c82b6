"""The ImageNet ResNets of He et al. 2016 (section 3.4) and ResNeXt (Xie et al. 2017), as encoders.

A 7x7 stride-2 stem with a 3x3 stride-2 max-pool, four stages (base widths 64, 128, 256,
512; strides 1, 2, 2, 2) with projection shortcuts (1x1 conv + batch norm) where the
shape changes, global average pooling. Bottlenecks stride on their 3x3 convolution
("ResNet v1.5"), as torchvision's ResNet-50 does, so the parameter counts match its.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from glmc.models.base import BACKBONES

STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
PROJECTION_DIM = 256  # e for ImageNet-LT and iNaturalist (the authors' code); CIFAR uses 128


def conv1x1(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)


def conv3x3(in_planes: int, planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """The identity where the shape is kept, else a projection (option B): 1x1 conv + BN."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm (ResNet-10/18/34).

    Input N x in_planes x H x W; output N x planes x H/stride x W/stride.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.out_planes = planes
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # N x planes x H/s x W/s
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, in `groups` groups), 1x1 expand to 4 * planes (ResNet-50, ResNeXt).

    The 3x3 width is planes * width_per_group / 64 * groups: `planes` for a ResNet,
    2 * planes for ResNeXt-50 32x4d. Input N x in_planes x H x W; output
    N x 4 * planes x H/stride x W/stride.
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, groups: int = 1, width_per_group: int = 64) -> None:
        super().__init__()
        width = planes * width_per_group // 64 * groups
        self.out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, self.out_planes)
        self.bn3 = nn.BatchNorm2d(self.out_planes)
        self.shortcut = shortcut(in_planes, self.out_planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # N x width x H x W
        out = F.relu(self.bn2(self.conv2(out)))  # N x width x H/s x W/s
        out = self.bn3(self.conv3(out))  # N x 4 * planes x H/s x W/s
        return F.relu(out + self.shortcut(x))


Block = Callable[[int, int, int], nn.Module]  # (in_planes, planes, stride) -> block with .out_planes


def make_stage(block: Block, in_planes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
    """`num_blocks` blocks; only the first changes the width and the resolution."""
    blocks = [block(in_planes, planes, stride)]
    blocks += [block(blocks[0].out_planes, planes, 1) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def init_module(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convolutions, batch norm as the identity; Linear keeps PyTorch's default."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ImageNetResNet(nn.Module):
    """ImageNet ResNet/ResNeXt encoder with `blocks_per_stage` blocks of kind `block` in each of four stages.

    Input: images N x 3 x H x W, H, W >= 32 (224 for ImageNet). Output: the pooled feature,
    N x `feature_dim` (512 for basic blocks, 2048 for bottlenecks). GLMC's projection on it
    is `projection_dim` = 256 wide, as in the authors' ImageNet-LT and iNaturalist code.
    """

    projection_dim = PROJECTION_DIM

    def __init__(self, block: Block, blocks_per_stage: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages, in_planes = [], 64
        for planes, num_blocks, stride in zip(STAGE_WIDTHS, blocks_per_stage, STAGE_STRIDES):
            stages.append(make_stage(block, in_planes, planes, num_blocks, stride))
            in_planes = stages[-1][-1].out_planes
        self.stages = nn.Sequential(*stages)
        self.feature_dim = in_planes

    def init_weights(self, heads: nn.Module) -> None:
        """Once the heads exist (which keep PyTorch's default initialisation): `init_module` of every module."""
        self.apply(init_module)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stem(x)  # N x 3 x H x W -> N x 64 x H/4 x W/4
        out = self.stages(out)  # -> N x d x H/32 x W/32
        return F.adaptive_avg_pool2d(out, 1).flatten(1)  # -> N x d


@BACKBONES.register("resnet10")
def resnet10() -> ImageNetResNet:
    """ImageNet ResNet-10: one basic block per stage, about 4.9M backbone parameters; for quick runs."""
    return ImageNetResNet(BasicBlock, (1, 1, 1, 1))


@BACKBONES.register("resnet18")
def resnet18() -> ImageNetResNet:
    """ImageNet ResNet-18 (basic blocks 2-2-2-2), 11.2M backbone parameters; not a CIFAR ResNet."""
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2))


@BACKBONES.register("resnet50")
def resnet50() -> ImageNetResNet:
    """ImageNet ResNet-50 v1.5 (bottlenecks 3-4-6-3), 23.5M backbone parameters."""
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3))


@BACKBONES.register("resnext50-32x4d")
def resnext50_32x4d() -> ImageNetResNet:
    """ResNeXt-50 32x4d: ResNet-50 with 32 groups of width 4 in the first stage's 3x3, 23.0M backbone parameters.

    GLMC's backbone for ImageNet-LT and iNaturalist 2018.
    """
    return ImageNetResNet(partial(Bottleneck, groups=32, width_per_group=4), (3, 4, 6, 3))
