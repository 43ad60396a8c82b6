"""Backbone registry and CIFAR ResNets: output contract, parameter counts, init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from glmc.errors import ConfigError
from glmc.models import BACKBONES, GLMCOutput, create_model
from glmc.models.cifar_resnet import ZeroPadShortcut

BATCH = 2
PROJECTION_DIM = 128


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def backbone_parameters(model: nn.Module) -> int:
    """Parameters outside the four GLMC heads."""
    return count_parameters(model) - count_parameters(model.heads)


def images(memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=generator)  # N x 3 x H x W
    return x.contiguous(memory_format=memory_format)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", BACKBONES.names())
def test_forward_returns_glmc_output_with_expected_shapes(name: str, num_classes: int) -> None:
    model = create_model(name, num_classes)
    out = model(images())
    assert isinstance(out, GLMCOutput)
    d = model.feature_dim
    assert out.logits.shape == (BATCH, num_classes)
    assert out.logits_fc.shape == (BATCH, num_classes)
    projection = model.heads.projection.out_features  # 128 for the CIFAR nets, 256 for the ImageNet ones
    assert out.z.shape == (BATCH, projection)
    assert out.p.shape == (BATCH, projection)
    assert out.feature.shape == (BATCH, d)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backward_reaches_every_parameter(name: str) -> None:
    model = create_model(name, 10)
    out = model(images())
    loss = out.logits.sum() + out.logits_fc.sum() + out.p.sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


@pytest.mark.parametrize("name", BACKBONES.names())
def test_channels_last_matches_contiguous_in_eval_mode(name: str) -> None:
    model = create_model(name, 10).eval()
    with torch.no_grad():
        expected = model(images())
        model = model.to(memory_format=torch.channels_last)
        actual = model(images(torch.channels_last))
    # Fresh BN statistics let activations grow with depth (to ~1e3), so the absolute
    # tolerance scales with each output's magnitude.
    for field, want, got in zip(GLMCOutput._fields, expected, actual):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale, msg=field)


def test_standard_resnet32_backbone_has_about_046m_parameters() -> None:
    assert 450_000 <= backbone_parameters(create_model("resnet32", 10)) <= 480_000


@pytest.mark.parametrize("num_classes", [10, 100])
def test_wide_resnet32_has_about_74m_parameters(num_classes: int) -> None:
    assert 7_200_000 <= count_parameters(create_model("resnet32-wide", num_classes)) <= 7_600_000


def test_wide_resnet32_stem_is_four_times_wider() -> None:
    standard = create_model("resnet32", 10)
    wide = create_model("resnet32-wide", 10)
    assert wide.encoder.stem[0].out_channels == 4 * standard.encoder.stem[0].out_channels
    assert wide.feature_dim == 4 * standard.feature_dim


@pytest.mark.parametrize("name", ["resnet32", "resnet50"])
def test_the_cosine_classifier_starts_with_unit_class_vectors_as_cao_et_al_and_the_linear_one_is_kaiming(name) -> None:
    torch.manual_seed(0)
    cosine = create_model(name, 10, classifier="cosine").heads.fc_cb.weight  # K x d
    assert torch.allclose(cosine.norm(dim=1), torch.ones(10))
    # A uniform draw in [-1, 1]^d has norm about sqrt(d / 3), so no entry of its direction passes about sqrt(3 / d);
    # a normal draw's largest entries (over 3 standard deviations among 10 x d) would, at nearly twice that.
    assert cosine.abs().max() < 1.2 * math.sqrt(3 / cosine.shape[1])
    linear = create_model("resnet32", 10).heads.fc_cb.weight  # the authors' Kaiming-normal: norm about sqrt(2)
    assert torch.all((linear.norm(dim=1) - math.sqrt(2)).abs() < 0.5)


def test_the_logit_scale_multiplies_the_prediction_head_only_and_in_fp32() -> None:
    torch.manual_seed(0)
    plain = create_model("resnet8", 10, classifier="cosine").eval()
    scaled = create_model("resnet8", 10, classifier="cosine", logit_scale=30.0).eval()
    scaled.load_state_dict(plain.state_dict())  # the scale is no weight: the same state dict fits both
    x = torch.randn(4, 3, 32, 32)
    out, out30 = plain(x), scaled(x)
    assert torch.allclose(out30.logits, 30 * out.logits, atol=1e-5) and torch.equal(out30.logits_fc, out.logits_fc)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert scaled(x).logits.dtype == torch.float32 and plain(x).logits.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="logit_scale must be > 0"):
        create_model("resnet8", 10, logit_scale=0.0)


def test_option_a_shortcut_has_no_parameters() -> None:
    model = create_model("resnet8", 10)
    block = model.encoder.stages[1][0]  # first block of stage 2: stride 2, 16 -> 32 channels
    assert isinstance(block.shortcut, ZeroPadShortcut)
    convs_and_norms = [block.conv1, block.bn1, block.conv2, block.bn2]
    assert count_parameters(block) == sum(count_parameters(m) for m in convs_and_norms)
    assert count_parameters(block.shortcut) == 0


def test_option_a_shortcut_subsamples_and_zero_pads_channels() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, stride=2)(x)  # 2 x 32 x 4 x 4
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_unknown_backbone_error_names_close_matches() -> None:
    with pytest.raises(ConfigError, match="resnet32"):
        create_model("resnet33", 10)


@pytest.mark.parametrize("num_classes", [1, 0])
def test_fewer_than_two_classes_is_a_config_error(num_classes: int) -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet8", num_classes)


def test_weights_use_kaiming_normal_init() -> None:
    torch.manual_seed(0)
    model = create_model("resnet32-wide", 10)
    conv = model.encoder.stages[2][-1].conv2  # 256 x 256 x 3 x 3: about 590K weights
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    fc = model.heads.fc
    assert fc.weight.std().item() == pytest.approx(math.sqrt(2 / fc.in_features), rel=0.1)
