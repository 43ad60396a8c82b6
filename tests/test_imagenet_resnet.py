"""ImageNet ResNets and ResNeXt: torchvision's parameter counts, shapes, v1.5 layout, init, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glmc.models import GLMCOutput, create_model
from glmc.models.heads import CosineLinear
from glmc.models.imagenet_resnet import Bottleneck, ImageNetResNet

IMAGENET_BACKBONES = ["resnet10", "resnet18", "resnet50", "resnext50-32x4d"]
FEATURE_DIMS = {"resnet10": 512, "resnet18": 512, "resnet50": 2048, "resnext50-32x4d": 2048}
PROJECTION_DIM = 256
NUM_CLASSES = 7

# torchvision's totals minus their 1000-way fc (d * 1000 + 1000):
# resnet18 11,689,512 - 513,000; resnet50 25,557,032 - 2,049,000; resnext50_32x4d
# 25,028,904 - 2,049,000. torchvision has no ResNet-10; its count is summed by hand
# (stem 9,536 + stages 73,984 + 230,144 + 919,040 + 3,673,088).
BACKBONE_PARAMETERS = {
    "resnet10": 4_905_792,
    "resnet18": 11_176_512,
    "resnet50": 23_508_032,
    "resnext50-32x4d": 22_979_904,
}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def images(batch: int, height: int, width: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, height, width, generator=generator)  # N x 3 x H x W


@pytest.mark.parametrize("name", IMAGENET_BACKBONES)
def test_backbone_parameters_match_torchvision_without_fc(name: str) -> None:
    model = create_model(name, NUM_CLASSES)
    assert count_parameters(model) - count_parameters(model.heads) == BACKBONE_PARAMETERS[name]


@pytest.mark.parametrize(
    ("name", "height", "width"),
    [
        ("resnet10", 64, 64),
        ("resnet18", 64, 64),
        ("resnet10", 32, 32),  # the smallest size the brief promises
        ("resnet10", 47, 61),  # odd, non-square: adaptive pooling copes
        ("resnet50", 32, 32),  # the bottlenecks only at 32 px to stay fast
        ("resnext50-32x4d", 32, 32),
    ],
)
def test_output_shapes_feature_dim_and_projection_width(name: str, height: int, width: int) -> None:
    model = create_model(name, NUM_CLASSES)
    d = FEATURE_DIMS[name]
    assert model.feature_dim == d
    assert model.heads.projection.out_features == PROJECTION_DIM
    with torch.no_grad():
        out = model(images(2, height, width))
    assert isinstance(out, GLMCOutput)
    assert out.logits.shape == (2, NUM_CLASSES)
    assert out.logits_fc.shape == (2, NUM_CLASSES)
    assert out.z.shape == (2, PROJECTION_DIM)
    assert out.p.shape == (2, PROJECTION_DIM)
    assert out.feature.shape == (2, d)


@pytest.mark.parametrize("name", IMAGENET_BACKBONES)
def test_cosine_classifier_reaches_fc_cb(name: str) -> None:
    heads = create_model(name, NUM_CLASSES, classifier="cosine").heads
    assert isinstance(heads.fc_cb, CosineLinear)
    assert heads.fc_cb.out_features == NUM_CLASSES and heads.fc_cb.in_features == FEATURE_DIMS[name]
    assert not isinstance(create_model(name, NUM_CLASSES).heads.fc_cb, CosineLinear)


def test_stem_is_7x7_stride_2_conv_then_stride_2_max_pool() -> None:
    stem = create_model("resnet10", NUM_CLASSES).encoder.stem
    conv, pool = stem[0], stem[-1]
    assert (conv.kernel_size, conv.stride, conv.out_channels, conv.bias) == ((7, 7), (2, 2), 64, None)
    assert isinstance(pool, nn.MaxPool2d) and (pool.kernel_size, pool.stride) == (3, 2)


@pytest.mark.parametrize("name", ["resnet50", "resnext50-32x4d"])
def test_bottleneck_strides_on_its_3x3_conv(name: str) -> None:
    model = create_model(name, NUM_CLASSES)
    for stage, stride in zip(model.encoder.stages, (1, 2, 2, 2)):
        first = stage[0]
        assert isinstance(first, Bottleneck)
        assert (first.conv1.stride, first.conv2.stride, first.conv3.stride) == ((1, 1), (stride, stride), (1, 1))
        projection = first.shortcut[0]  # every stage's first bottleneck changes the width
        assert (projection.kernel_size, projection.stride) == ((1, 1), (stride, stride))
        assert all(isinstance(block.shortcut, nn.Identity) for block in stage[1:])


def test_resnext_3x3_has_32_groups_twice_the_resnet_width() -> None:
    resnet, resnext = create_model("resnet50", NUM_CLASSES), create_model("resnext50-32x4d", NUM_CLASSES)
    for plain, grouped in zip(resnet.encoder.stages, resnext.encoder.stages):
        assert grouped[0].conv2.groups == 32
        assert grouped[0].conv2.out_channels == 2 * plain[0].conv2.out_channels
        assert grouped[-1].out_planes == plain[-1].out_planes


def test_basic_blocks_keep_identity_shortcuts_where_the_shape_is_kept() -> None:
    model = create_model("resnet18", NUM_CLASSES)
    assert isinstance(model.encoder.stages[0][0].shortcut, nn.Identity)  # 64 -> 64, stride 1
    for stage in model.encoder.stages[1:]:
        assert isinstance(stage[0].shortcut, nn.Sequential)
        assert isinstance(stage[1].shortcut, nn.Identity)


def test_convolutions_use_kaiming_normal_fan_out_and_batch_norm_starts_as_identity() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", NUM_CLASSES)
    conv = model.encoder.stages[3][-1].conv2  # 512 x 512 x 3 x 3: about 2.4M weights
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.02)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)


def test_a_few_sgd_steps_reduce_the_cross_entropy_of_logits() -> None:
    torch.manual_seed(0)
    model: ImageNetResNet = create_model("resnet10", NUM_CLASSES)
    x = images(8, 32, 32)
    y = torch.arange(8) % NUM_CLASSES
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x).logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    final = F.cross_entropy(model(x).logits, y).item()
    assert math.isfinite(final)
    assert final < 0.5 * losses[0], losses + [final]
