"""Batched augmentation on the device.

CIFAR: random crop with zero padding, flip, normalise. One gather does crop and flip for the
whole batch, so no Python runs per image. Zero padding happens on the uint8 pixels, before
normalisation, as `RandomCrop(32, padding=4)` does on a PIL image. Optionally, after the flip,
AutoAugment's CIFAR-10 policy and Cutout (glmc.autoaugment), as some baselines' recipes use.

Large images (MoCo v2, as the authors' ImageNet-LT runs): the loader's workers crop and flip; the
device applies colour jitter, random grayscale and Gaussian blur to whole batches with
kornia, then normalises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from glmc.autoaugment import POLICIES, PolicyTable, apply_cutout, apply_policy, draw_cutout, draw_policy


@dataclass(frozen=True)
class CropFlip:
    """Where each image of a batch is cropped and whether it is mirrored: N x 1 int64 offsets, N x 1 bool."""

    top: Tensor
    left: Tensor
    mirrored: Tensor | None  # None: flipping is off


def draw_crop_flip(n: int, padding: int, generator: torch.Generator, flip: bool = True) -> CropFlip:
    """The random part of `random_crop_flip` for n images, drawn from `generator` (top, left, then flip)."""
    device = generator.device
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    mirrored = torch.rand(n, 1, generator=generator, device=device) < 0.5 if flip else None
    return CropFlip(top, left, mirrored)


def apply_crop_flip(images: Tensor, padding: int, params: CropFlip) -> Tensor:
    """Crop each image at its offset of its zero-padded self, mirror those drawn so.

    images: N x C x H x W (any dtype) -> N x C x H x W, same dtype (channels-last memory).
    """
    n, _, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))  # N x C x H+2p x W+2p
    columns = torch.arange(width, device=device).expand(n, width)  # N x W
    if params.mirrored is not None:
        columns = torch.where(params.mirrored, columns.flip(1), columns)
    rows = params.top + torch.arange(height, device=device)  # N x H
    columns = params.left + columns  # N x W
    batch = torch.arange(n, device=device)[:, None, None]
    crops = padded[batch, :, rows[:, :, None], columns[:, None, :]]  # N x H x W x C
    return crops.permute(0, 3, 1, 2)  # N x C x H x W


def random_crop_flip(images: Tensor, padding: int, generator: torch.Generator, flip: bool = True) -> Tensor:
    """Crop each image at a random offset of its zero-padded self; mirror about half of them.

    images: N x C x H x W (any dtype) -> N x C x H x W, same dtype (channels-last memory).
    """
    return apply_crop_flip(images, padding, draw_crop_flip(len(images), padding, generator, flip))


@dataclass(frozen=True)
class Normalise:
    """uint8 pixels -> float `(x / 255 - mean) / std`, per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: Tensor) -> Tensor:
        return self.unit(images.float() / 255.0)

    def unit(self, images: Tensor) -> Tensor:
        """float pixels on the [0, 1] scale -> `(x - mean) / std`, per channel."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std


@dataclass(frozen=True)
class CifarDraw:
    """The random part of n images' CIFAR training views: crop and flip, then, where the view has them, the
    AutoAugment sub-policy, chances and signs (glmc.autoaugment.draw_policy) and the Cutout hole's centre.
    Every field has n rows (None: that part is off), so a process can keep its share of a global batch's."""

    top: Tensor
    left: Tensor
    mirrored: Tensor | None
    sub_policy: Tensor | None = None
    chance: Tensor | None = None
    sign: Tensor | None = None
    hole_row: Tensor | None = None
    hole_column: Tensor | None = None


@dataclass(frozen=True)
class CifarAugment:
    """The CIFAR training view: random crop with zero padding, horizontal flip, optionally AutoAugment's
    `policy` and a Cutout hole of side `cutout` (0: none), normalise.

    In two halves, so a loader can draw the randomness of a view it does not need (keeping the
    generator's sequence, hence every other view, unchanged) without computing the view. The crop and
    flip are drawn first, so turning AutoAugment or Cutout on changes no crop.
    """

    normalise: Normalise
    padding: int = 4
    flip: bool = True
    policy: str = "none"  # an AutoAugment policy of glmc.autoaugment.POLICIES, or "none"
    cutout: int = 0
    image_size: tuple[int, int] = (32, 32)  # height, width: where a Cutout hole's centre may fall

    def draw(self, n: int, generator: torch.Generator) -> CifarDraw:
        crop = draw_crop_flip(n, self.padding, generator, self.flip)
        extra = {}
        if self.policy != "none":
            extra["sub_policy"], extra["chance"], extra["sign"] = draw_policy(n, len(POLICIES[self.policy]), generator)
        if self.cutout:
            extra["hole_row"], extra["hole_column"] = draw_cutout(n, *self.image_size, generator)
        return CifarDraw(crop.top, crop.left, crop.mirrored, **extra)

    def __call__(self, images: Tensor, params: CifarDraw) -> Tensor:
        """images: N x C x H x W uint8 -> N x C x H x W float, normalised."""
        views = apply_crop_flip(images, self.padding, CropFlip(params.top, params.left, params.mirrored))
        if params.sub_policy is not None:
            views = apply_policy(views, PolicyTable.of(self.policy, images.device), params.sub_policy, params.chance,
                                 params.sign)
        if params.hole_row is not None:
            views = apply_cutout(views, self.cutout, params.hole_row, params.hole_column)
        return self.normalise(views)


def blur_kernel_size(image_size: int) -> int:
    """MoCo v2's Gaussian blur spans about a tenth of the image: 23 px at 224; odd, at least 3."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


class ImageNetColour:
    """The device half of the large-image training view: colour jitter (0.4, 0.4, 0.4, 0)
    always, grayscale with p 0.2, Gaussian blur sigma in [0.1, 2] with p 0.5, normalise.

    Called with a seed, so a step's augmentation can be reproduced (kornia draws from
    torch's global generator, which is forked and seeded around the call).
    """

    def __init__(self, normalise: Normalise, image_size: int) -> None:
        import kornia.augmentation as K  # imported here: only image-file datasets need it

        kernel = blur_kernel_size(image_size)
        self.normalise = normalise
        self.transforms = torch.nn.Sequential(
            K.ColorJitter(0.4, 0.4, 0.4, 0.0, p=1.0),
            K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=0.5),
        )

    def __call__(self, images: Tensor, seed: int) -> Tensor:
        """images: N x 3 x H x W uint8 -> N x 3 x H x W float, normalised."""
        devices = [images.device] if images.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            coloured = self.transforms(images.float() / 255.0)
        return self.normalise.unit(coloured)
