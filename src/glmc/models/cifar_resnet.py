"""The CIFAR ResNets of He et al. 2016 (section 4.2), as encoders (glmc.models.base wraps them with GLMC heads).

Depth 6n + 2: a 3x3 stem, three stages of n basic blocks (widths w, 2w, 4w; strides
1, 2, 2) with parameter-free option-A shortcuts, global average pooling.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from glmc.errors import ConfigError
from glmc.models.base import BACKBONES
from glmc.models.heads import CosineLinear


def conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample space by `stride`, zero-pad channels to `planes`.

    Input N x C x H x W; output N x planes x ceil(H/stride) x ceil(W/stride). No parameters.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_before = (planes - in_planes) // 2
        self.pad_after = planes - in_planes - self.pad_before

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # N x C x H/s x W/s
        # F.pad lists the last dimension first: (W, W, H, H, C, C).
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))  # N x planes x H/s x W/s


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, plus the identity or an option-A shortcut.

    Input N x in_planes x H x W; output N x planes x H/stride x W/stride.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        changes_shape = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = (
            ZeroPadShortcut(in_planes, planes, stride) if changes_shape else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # N x planes x H/s x W/s
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stage(in_planes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
    """`num_blocks` basic blocks; only the first changes the width and the resolution."""
    blocks = [BasicBlock(in_planes, planes, stride)]
    blocks += [BasicBlock(planes, planes, 1) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def kaiming_init(module: nn.Module) -> None:
    """The authors' `_weights_init`: Kaiming-normal weights for every Conv2d and Linear.

    Biases and batch norm keep PyTorch's defaults; the cosine classifier keeps its own initialisation, as LDAM's
    `NormedLinear`, which is no `nn.Linear` in Cao et al.'s code, keeps its own there.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)) and not isinstance(module, CosineLinear):
        nn.init.kaiming_normal_(module.weight)


class CifarResNet(nn.Module):
    """CIFAR ResNet encoder with `blocks_per_stage` blocks per stage and stem width `base_width`.

    Input: images N x 3 x H x W (contiguous or channels_last). Output: the pooled feature,
    N x `feature_dim` = 4 * base_width.
    """

    def __init__(self, blocks_per_stage: int, base_width: int) -> None:
        super().__init__()
        widths = (base_width, 2 * base_width, 4 * base_width)
        self.feature_dim = widths[-1]
        self.stem = nn.Sequential(conv3x3(3, base_width), nn.BatchNorm2d(base_width), nn.ReLU())
        self.stages = nn.Sequential(
            make_stage(widths[0], widths[0], blocks_per_stage, stride=1),
            make_stage(widths[0], widths[1], blocks_per_stage, stride=2),
            make_stage(widths[1], widths[2], blocks_per_stage, stride=2),
        )

    def init_weights(self, heads: nn.Module) -> None:
        """The authors' initialisation, once the heads exist: Kaiming-normal for every convolution and linear
        layer of the whole network, heads included, in module order (encoder first)."""
        self.apply(kaiming_init)
        heads.apply(kaiming_init)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stem(x)  # N x 3 x H x W -> N x w x H x W
        out = self.stages(out)  # -> N x 4w x H/4 x W/4
        return F.adaptive_avg_pool2d(out, 1).flatten(1)  # -> N x 4w


def cifar_resnet(depth: int, base_width: int) -> CifarResNet:
    """The CIFAR ResNet of depth 6n + 2 with stage widths w, 2w, 4w."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ConfigError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    return CifarResNet((depth - 2) // 6, base_width)


@BACKBONES.register("resnet32")
def resnet32() -> CifarResNet:
    """The standard CIFAR ResNet-32 (widths 16/32/64, about 0.46M parameters).

    This is the ResNet-32 that other long-tailed papers use; compare with them on it.
    """
    return cifar_resnet(32, 16)


@BACKBONES.register("resnet32-wide")
def resnet32_wide() -> CifarResNet:
    """The GLMC authors' `resnet32`: widths 64/128/256, about 7.4M parameters.

    It is 4x wider than the standard ResNet-32 and costs about 16x the compute. The
    authors' published numbers need it, as they confirmed in their issue #1; it is not
    the ResNet-32 of other papers (that is `resnet32`).
    """
    return cifar_resnet(32, 64)


@BACKBONES.register("resnet20")
def resnet20() -> CifarResNet:
    """CIFAR ResNet-20 (widths 16/32/64), for quick runs on a CPU."""
    return cifar_resnet(20, 16)


@BACKBONES.register("resnet8")
def resnet8() -> CifarResNet:
    """CIFAR ResNet-8 (one block per stage, widths 16/32/64), for smoke runs on a CPU."""
    return cifar_resnet(8, 16)
