"""AutoAugment's CIFAR-10 policy and Cutout, batched: every operation against Pillow's, the policy's draws, the holes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from glmc.augment import CifarAugment, CropFlip, Normalise, apply_crop_flip
from glmc.autoaugment import (CIFAR10_POLICY, OPERATIONS, SIGNED, PolicyTable, apply_cutout, apply_policy, draw_cutout,
                              draw_policy, magnitude)
from glmc.data.loader import take_rows
from glmc.distributed import Shard


def pillow(operation: str, image: Image.Image, value: float) -> Image.Image:
    """The PIL implementation's operation (CIFAR10Policy's SubPolicy), `value` with its sign."""
    grey = (128, 128, 128)
    if operation == "shear-x":
        return image.transform(image.size, Image.AFFINE, (1, value, 0, 0, 1, 0), Image.BICUBIC, fillcolor=grey)
    if operation == "shear-y":
        return image.transform(image.size, Image.AFFINE, (1, 0, 0, value, 1, 0), Image.BICUBIC, fillcolor=grey)
    if operation == "translate-x":
        return image.transform(image.size, Image.AFFINE, (1, 0, value * image.size[0], 0, 1, 0), fillcolor=grey)
    if operation == "translate-y":
        return image.transform(image.size, Image.AFFINE, (1, 0, 0, 0, 1, value * image.size[1]), fillcolor=grey)
    if operation == "rotate":
        turned = image.convert("RGBA").rotate(value)
        return Image.composite(turned, Image.new("RGBA", turned.size, (128,) * 4), turned).convert(image.mode)
    enhancers = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness,
                 "brightness": ImageEnhance.Brightness}
    if operation in enhancers:
        return enhancers[operation](image).enhance(1 + value)
    if operation == "posterize":
        return ImageOps.posterize(image, int(value))
    if operation == "solarize":
        return ImageOps.solarize(image, value)
    return {"autocontrast": ImageOps.autocontrast, "equalize": ImageOps.equalize, "invert": ImageOps.invert}[operation](image)


def make_images(n: int = 12, seed: int = 0) -> np.ndarray:
    """N x 32 x 32 x 3 uint8: smooth images (so sharpness and shears have structure), some of narrow range
    (so autocontrast and equalize change them), one flat (their degenerate case)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:32, 0:32]
    images = []
    for i in range(n):
        base = np.stack([np.sin(xs / (3 + i) + c) * np.cos(ys / (4 + c)) for c in range(3)], -1)
        noise = rng.normal(0, 0.3, (32, 32, 3))
        low, high = (0, 255) if i % 2 else (60 + 5 * i, 140 + 5 * i)
        image = low + (high - low) * (base + noise - (base + noise).min()) / np.ptp(base + noise)
        images.append(image)
    images[-1] = np.full((32, 32, 3), 97.0)
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


# the share of pixel values that may differ from Pillow's, and by how much: none, except one level where
# Pillow interpolates in another order, and the rare pixel on a rotated image's edge whose centre lands on
# the border (Pillow finds nearest neighbours in fixed point), which shows the grey or the pixel
TOLERANCE = {"shear-x": (0.002, 1), "shear-y": (0.002, 1), "rotate": (0.002, 255)}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_every_operation_gives_pillows_pixels_at_every_magnitude(operation):
    images = make_images()
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    for bin in range(10):
        for sign in ((1, -1) if operation in SIGNED else (1,)):
            value = sign * magnitude(operation, bin)
            ours = OPERATIONS[operation](batch, torch.full((len(images),), value, dtype=torch.float64))
            ours = ours.permute(0, 2, 3, 1).numpy().astype(int)
            theirs = np.stack([np.asarray(pillow(operation, Image.fromarray(image), value)) for image in images]).astype(int)
            share, most = TOLERANCE.get(operation, (0.0, 0))
            difference = np.abs(ours - theirs)
            assert difference.max() <= most, (operation, bin, sign, difference.max())
            assert (difference > 0).mean() <= share, (operation, bin, sign, (difference > 0).mean())


def test_each_image_takes_its_own_sub_policy_operation_and_sign():
    images = torch.from_numpy(make_images(n=8)).permute(0, 3, 1, 2).contiguous()
    table = PolicyTable.of("cifar10", torch.device("cpu"))
    sub_policy = torch.tensor([0, 1, 2, 3, 4, 5, 6, 13])
    chance = torch.tensor([[0.05, 0.9], [0.5, 0.1], [0.0, 0.0], [0.9, 0.9], [0.4, 0.95], [0.1, 0.1], [0.3, 0.3], [0.5, 0.1]],
                          dtype=torch.float64)
    sign = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]],
                        dtype=torch.float64)
    ours = apply_policy(images, table, sub_policy, chance, sign)
    for i, (first, second) in enumerate(CIFAR10_POLICY[s] for s in sub_policy.tolist()):
        expected = images[i : i + 1]
        for slot, (name, probability, bin) in enumerate((first, second)):
            if chance[i, slot] < probability:
                value = magnitude(name, bin) * (sign[i, slot].item() if name in SIGNED else 1.0)
                expected = OPERATIONS[name](expected, torch.tensor([value], dtype=torch.float64))
        assert torch.equal(ours[i : i + 1], expected), i
    assert not torch.equal(ours[0], images[0])  # invert ran (0.05 < 0.1)
    assert torch.equal(ours[3], images[3])  # neither ran (0.9 above 0.5 and 0.7)


def test_policy_draws_cover_every_sub_policy_and_run_at_the_listed_rates():
    generator = torch.Generator().manual_seed(0)
    table = PolicyTable.of("cifar10", torch.device("cpu"))
    sub_policy, chance, sign = draw_policy(100_000, len(CIFAR10_POLICY), generator)
    counts = torch.bincount(sub_policy, minlength=25)
    assert counts.min() > 3500 and counts.max() < 4500
    runs = chance < table.probability[sub_policy]
    expected = table.probability[sub_policy].mean(0)
    assert torch.allclose(runs.double().mean(0), expected, atol=0.01)
    assert abs((sign > 0).double().mean().item() - 0.5) < 0.01
    again = draw_policy(100_000, len(CIFAR10_POLICY), torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((sub_policy, chance, sign), again))


def test_cutout_zeroes_a_length_square_around_its_centre_clipped_at_the_border():
    images = torch.full((3, 3, 32, 32), 200, dtype=torch.uint8)
    row, column = torch.tensor([[16], [0], [31]]), torch.tensor([[16], [5], [31]])
    holes = apply_cutout(images, 16, row, column) == 0  # N x 3 x H x W
    assert holes.all(1).eq(holes.any(1)).all()  # every channel alike
    hole = holes[:, 0]
    assert hole[0].sum() == 256 and hole[0, 8:24, 8:24].all()
    assert hole[1].sum() == 8 * 13 and hole[1, 0:8, 0:13].all()  # rows [-8, 8), columns [-3, 13), clipped
    assert hole[2].sum() == 9 * 9 and hole[2, 23:, 23:].all()  # [23, 39) clipped to [23, 32)
    row, column = draw_cutout(50_000, 32, 32, torch.Generator().manual_seed(1))
    assert row.min() == 0 and row.max() == 31 and column.min() == 0 and column.max() == 31


def identity_view(**options) -> CifarAugment:
    return CifarAugment(Normalise((0.0,) * 3, (1 / 255,) * 3), **options)  # normalising gives the pixel values as floats


def test_the_cifar_view_keeps_its_crops_and_flips_and_adds_the_policy_then_the_hole():
    images = torch.from_numpy(make_images(n=16)).permute(0, 3, 1, 2).contiguous().clamp(min=1)  # no pixel is 0 before the hole
    plain, full = identity_view(), identity_view(policy="cifar10", cutout=16)
    crops = plain.draw(16, torch.Generator().manual_seed(3))
    draw = full.draw(16, torch.Generator().manual_seed(3))
    assert all(torch.equal(getattr(crops, f), getattr(draw, f)) for f in ("top", "left", "mirrored"))
    assert crops.sub_policy is None and crops.hole_row is None
    cropped = apply_crop_flip(images, 4, CropFlip(draw.top, draw.left, draw.mirrored))
    expected = apply_cutout(apply_policy(cropped, PolicyTable.of("cifar10", torch.device("cpu")), draw.sub_policy,
                                         draw.chance, draw.sign), 16, draw.hole_row, draw.hole_column)
    views = full(images, draw)
    assert torch.allclose(views, expected.float(), atol=1e-3)
    hole = views.eq(0).all(1)  # N x H x W: black in every channel
    for i in range(16):  # a square of up to 16 x 16 around each image's centre, clipped at the border
        r, c = draw.hole_row[i, 0].item(), draw.hole_column[i, 0].item()
        side = (min(r + 8, 32) - max(r - 8, 0)) * (min(c + 8, 32) - max(c - 8, 0))
        assert hole[i, max(r - 8, 0):r + 8, max(c - 8, 0):c + 8].all() and hole[i].sum() >= side


def test_a_process_computes_its_rows_of_the_global_batchs_views():
    images = torch.from_numpy(make_images(n=12)).permute(0, 3, 1, 2).contiguous()
    augment = identity_view(policy="cifar10", cutout=16)
    draw = augment.draw(12, torch.Generator().manual_seed(5))
    whole = augment(images, draw)
    for rank in (0, 1, 2):
        shard = Shard(rank, 3)
        assert torch.equal(augment(shard.take(images), take_rows(draw, shard)), shard.take(whole))
