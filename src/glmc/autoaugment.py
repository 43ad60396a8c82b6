"""AutoAugment's CIFAR-10 policy (Cubuk et al., CVPR 2019) and Cutout (DeVries & Taylor, 2017), batched on the device.

Every image draws one of the policy's 25 sub-policies; each of the sub-policy's two operations
runs with its own probability, at its fixed magnitude, with a random sign where the operation has
one. The operations work on uint8 pixels the way Pillow's do in the PIL-based implementation the
long-tailed literature trains with (the one Balanced Softmax's official code ships): the point and
colour operations give Pillow's pixels, the geometric ones Pillow's sampling (nearest, or bicubic
for shears) with the grey fill (128) outside the image; `tests/test_autoaugment.py` holds each one
against Pillow. As in that implementation, rotations always turn counter-clockwise.

The random part (`draw_policy`, `draw_cutout`) is drawn for the global batch from a step's
generator and the pixels are computed for the rows a process keeps, as `glmc.augment` does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

FILL = 128  # the grey that geometric operations show where they move pixels in from outside the image

# (operation, probability, magnitude bin 0-9) twice per sub-policy: the CIFAR-10 policy Cubuk et al. found, as the PIL
# implementation lists it (CIFAR10Policy).
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translate-x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shear-y", 0.5, 8), ("translate-y", 0.7, 9)),
    (("autocontrast", 0.5, 8), ("equalize", 0.9, 2)),
    (("shear-y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate-x", 0.5, 8)),
    (("equalize", 0.3, 7), ("autocontrast", 0.4, 8)),
    (("translate-y", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)),
    (("equalize", 0.2, 0), ("autocontrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.6, 4)),
    (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("autocontrast", 0.8, 4), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, 3)),
    (("translate-y", 0.9, 9), ("translate-y", 0.7, 9)),
    (("autocontrast", 0.9, 2), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translate-y", 0.7, 9), ("autocontrast", 0.9, 1)),
)
POLICIES = {"cifar10": CIFAR10_POLICY}
AUTOAUGMENT_POLICIES = ("none", *POLICIES)


def magnitude(operation: str, bin: int) -> float:
    """The magnitude of bin 0-9 on the operation's scale (the PIL implementation's ranges): shears in
    slope, translations as a fraction of the image side, rotations in degrees, enhancements as the
    factor's distance from 1, posterize in bits kept, solarize as the threshold."""
    fraction = bin / 9
    scales = {"shear-x": 0.3, "shear-y": 0.3, "translate-x": 150 / 331, "translate-y": 150 / 331, "rotate": 30.0,
              "color": 0.9, "contrast": 0.9, "sharpness": 0.9, "brightness": 0.9}
    if operation in scales:
        return scales[operation] * fraction
    if operation == "posterize":
        return float(round(8 - 4 * fraction))  # round half to even, as numpy's round in the original
    if operation == "solarize":
        return 256 - 256 * fraction
    return 0.0  # autocontrast, equalize, invert


SIGNED = {"shear-x", "shear-y", "translate-x", "translate-y", "color", "contrast", "sharpness", "brightness"}


# --- the operations: uint8 N x C x H x W and a per-image value (N float64) -> uint8 N x C x H x W ---

def luminance(images: Tensor) -> Tensor:
    """Pillow's RGB -> L conversion, in integers: N x 3 x H x W uint8 -> N x 1 x H x W int64."""
    r, g, b = images.long().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def blend(degenerate: Tensor, images: Tensor, factor: Tensor) -> Tensor:
    """Pillow's Image.blend: `degenerate + factor (images - degenerate)` in float32, clipped, truncated."""
    factor = factor.to(torch.float32).view(-1, 1, 1, 1)
    mixed = degenerate.to(torch.float32) + factor * (images.to(torch.float32) - degenerate.to(torch.float32))
    return mixed.clamp(0, 255).to(torch.uint8)


def invert(images: Tensor, value: Tensor) -> Tensor:
    return 255 - images


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    mask = (256 - 2 ** (8 - bits.long())).to(torch.uint8).view(-1, 1, 1, 1)
    return images & mask


def solarize(images: Tensor, threshold: Tensor) -> Tensor:
    return torch.where(images.double() >= threshold.view(-1, 1, 1, 1), 255 - images, images)


def autocontrast(images: Tensor, value: Tensor) -> Tensor:
    """Each channel stretched to [0, 255] through Pillow's look-up table (no cut-off)."""
    low = images.amin(dim=(2, 3), keepdim=True).double()
    high = images.amax(dim=(2, 3), keepdim=True).double()
    scale = torch.full_like(high, 255.0) / (high - low).clamp(min=1)  # a true division, as Pillow's (not 255 x 1/d)
    stretched = (images.double() * scale + (-low * scale)).trunc().clamp(0, 255).to(torch.uint8)
    return torch.where(high > low, stretched, images)


def equalize(images: Tensor, value: Tensor) -> Tensor:
    """Each channel's histogram equalised through Pillow's look-up table."""
    n, c, h, w = images.shape
    pixels = images.reshape(n * c, h * w).long()
    counts = torch.zeros(n * c, 256, dtype=torch.long, device=images.device).scatter_add_(1, pixels, torch.ones_like(pixels))
    last_bin = 255 - (counts.flip(1) > 0).long().argmax(1, keepdim=True)
    step = (h * w - counts.gather(1, last_bin)) // 255  # (pixels not in the last used bin) / 255
    below = counts.cumsum(1) - counts
    table = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    unchanged = ((counts > 0).sum(1, keepdim=True) <= 1) | (step == 0)
    table = torch.where(unchanged, torch.arange(256, device=images.device), table)
    return table.gather(1, pixels).reshape(n, c, h, w).to(torch.uint8)


def enhance_color(images: Tensor, amount: Tensor) -> Tensor:
    return blend(luminance(images).expand_as(images), images, 1 + amount)


def enhance_contrast(images: Tensor, amount: Tensor) -> Tensor:
    mean = (luminance(images).double().mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor()
    return blend(mean.expand_as(images), images, 1 + amount)


def enhance_brightness(images: Tensor, amount: Tensor) -> Tensor:
    return blend(torch.zeros_like(images), images, 1 + amount)


SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13  # Pillow's ImageFilter.SMOOTH


def enhance_sharpness(images: Tensor, amount: Tensor) -> Tensor:
    """Blend with Pillow's SMOOTH filter of the image, whose border pixels stay as they are."""
    channels = images.shape[1]
    kernel = SMOOTH.to(images.device).expand(channels, 1, 3, 3)
    smooth = torch.nn.functional.conv2d(images.float(), kernel, groups=channels)
    degenerate = images.clone()
    degenerate[:, :, 1:-1, 1:-1] = (smooth + 0.5).clamp(0, 255).to(torch.uint8)
    return blend(degenerate, images, 1 + amount)


def sample_affine(images: Tensor, matrix: Tensor, bicubic: bool) -> Tensor:
    """Pillow's Image.transform(AFFINE): output pixel (x, y) shows the input at `matrix @ (x + 0.5, y + 0.5, 1)`,
    by nearest neighbour or by Pillow's bicubic (a = -1, neighbours clamped at the border); grey where that
    point lies outside the image. matrix: N x 2 x 3 float64."""
    n, c, h, w = images.shape
    device = images.device
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float64) + 0.5,
                            torch.arange(w, device=device, dtype=torch.float64) + 0.5, indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)]).reshape(3, h * w)  # 3 x HW
    source_x, source_y = (matrix @ grid).unbind(1)  # N x HW each
    inside = (source_x >= 0) & (source_x < w) & (source_y >= 0) & (source_y < h)
    flat = images.reshape(n, c, h * w)

    def pixels(column: Tensor, row: Tensor) -> Tensor:  # N x HW clamped indices -> N x C x HW
        index = (row.clamp(0, h - 1) * w + column.clamp(0, w - 1)).unsqueeze(1).expand(n, c, h * w)
        return flat.gather(2, index).double()

    if bicubic:
        x, y = source_x - 0.5, source_y - 0.5
        left, top = x.floor(), y.floor()
        dx, dy = (x - left).unsqueeze(1), (y - top).unsqueeze(1)
        left, top = left.long(), top.long()
        rows = [cubic(*[pixels(left + i, top + j) for i in (-1, 0, 1, 2)], dx) for j in (-1, 0, 1, 2)]
        values = cubic(*rows, dy).clamp(0, 255).floor()
    else:
        values = pixels(source_x.floor().long(), source_y.floor().long())
    values = torch.where(inside.unsqueeze(1), values, torch.full_like(values, FILL))
    return values.to(torch.uint8).reshape(n, c, h, w)


def cubic(v1: Tensor, v2: Tensor, v3: Tensor, v4: Tensor, d: Tensor) -> Tensor:
    """Pillow's cubic interpolation between v2 and v3 at distance d."""
    return v2 + d * ((v3 - v1) + d * ((2 * (v1 - v2) + v3 - v4) + d * (-v1 + v2 - v3 + v4)))


def affine(a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor) -> Tensor:
    return torch.stack([torch.stack([a, b, c], 1), torch.stack([d, e, f], 1)], 1)


def shear_x(images: Tensor, slope: Tensor) -> Tensor:
    one, zero = torch.ones_like(slope), torch.zeros_like(slope)
    return sample_affine(images, affine(one, slope, zero, zero, one, zero), bicubic=True)


def shear_y(images: Tensor, slope: Tensor) -> Tensor:
    one, zero = torch.ones_like(slope), torch.zeros_like(slope)
    return sample_affine(images, affine(one, zero, zero, slope, one, zero), bicubic=True)


def translate_x(images: Tensor, fraction: Tensor) -> Tensor:
    one, zero = torch.ones_like(fraction), torch.zeros_like(fraction)
    return sample_affine(images, affine(one, zero, fraction * images.shape[3], zero, one, zero), bicubic=False)


def translate_y(images: Tensor, fraction: Tensor) -> Tensor:
    one, zero = torch.ones_like(fraction), torch.zeros_like(fraction)
    return sample_affine(images, affine(one, zero, zero, zero, one, fraction * images.shape[2]), bicubic=False)


def rotate(images: Tensor, degrees: Tensor) -> Tensor:
    """Counter-clockwise about the image centre, nearest neighbour, as Pillow's Image.rotate."""
    h, w = images.shape[2:]
    angle = -torch.deg2rad(degrees)
    cos, sin = angle.cos(), angle.sin()
    centre_x, centre_y = w / 2, h / 2
    shift_x = cos * -centre_x + sin * -centre_y + centre_x
    shift_y = -sin * -centre_x + cos * -centre_y + centre_y
    return sample_affine(images, affine(cos, sin, shift_x, -sin, cos, shift_y), bicubic=False)


OPERATIONS = {
    "invert": invert, "posterize": posterize, "solarize": solarize, "autocontrast": autocontrast, "equalize": equalize,
    "color": enhance_color, "contrast": enhance_contrast, "brightness": enhance_brightness, "sharpness": enhance_sharpness,
    "shear-x": shear_x, "shear-y": shear_y, "translate-x": translate_x, "translate-y": translate_y, "rotate": rotate,
}
OPERATION_NAMES = tuple(OPERATIONS)


@dataclass(frozen=True)
class PolicyTable:
    """A policy as tensors, one row per sub-policy, one column per operation slot."""

    operation: Tensor  # S x 2 int64, positions in OPERATION_NAMES
    probability: Tensor  # S x 2 float64
    magnitude: Tensor  # S x 2 float64
    signed: Tensor  # S x 2 bool

    @classmethod
    @functools.lru_cache(maxsize=8)
    def of(cls, policy: str, device: torch.device) -> "PolicyTable":
        """The table of a policy of POLICIES on `device`, made once per policy and device."""
        rows = POLICIES[policy]
        column = lambda f, dtype: torch.tensor([[f(*op) for op in row] for row in rows], dtype=dtype, device=device)
        return cls(operation=column(lambda name, p, m: OPERATION_NAMES.index(name), torch.long),
                   probability=column(lambda name, p, m: p, torch.float64),
                   magnitude=column(lambda name, p, m: magnitude(name, m), torch.float64),
                   signed=column(lambda name, p, m: name in SIGNED, torch.bool))


def draw_policy(n: int, sub_policies: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """For n images: the sub-policy (N), a uniform number per operation slot that decides whether the
    operation runs (N x 2), and a sign per slot (N x 2, +1 or -1)."""
    device = generator.device
    sub_policy = torch.randint(0, sub_policies, (n,), generator=generator, device=device)
    chance = torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)
    sign = torch.where(torch.rand(n, 2, generator=generator, device=device) < 0.5, -1.0, 1.0).double()
    return sub_policy, chance, sign


def apply_policy(images: Tensor, table: PolicyTable, sub_policy: Tensor, chance: Tensor, sign: Tensor) -> Tensor:
    """Each image's sub-policy, its two operations in order, each where its chance falls under its probability.
    images: N x C x H x W uint8 -> the same shape, uint8."""
    images = images.clone()
    for slot in (0, 1):
        operation = table.operation[sub_policy, slot]
        runs = chance[:, slot] < table.probability[sub_policy, slot]
        value = table.magnitude[sub_policy, slot] * torch.where(table.signed[sub_policy, slot], sign[:, slot], 1.0)
        for index in operation[runs].unique().tolist():
            rows = (runs & (operation == index)).nonzero().squeeze(1)
            images[rows] = OPERATIONS[OPERATION_NAMES[index]](images[rows], value[rows])
    return images


def draw_cutout(n: int, height: int, width: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The centre of each image's hole: N x 1 rows and N x 1 columns, uniform over the image."""
    device = generator.device
    row = torch.randint(0, height, (n, 1), generator=generator, device=device)
    column = torch.randint(0, width, (n, 1), generator=generator, device=device)
    return row, column


def apply_cutout(images: Tensor, length: int, row: Tensor, column: Tensor) -> Tensor:
    """Zero the square [centre - length // 2, centre + length // 2) of each image, clipped at the border.
    Zero pixels, before normalisation, as the reference applies it to [0, 1] tensors."""
    h, w = images.shape[2:]
    half = length // 2
    rows = torch.arange(h, device=images.device)
    columns = torch.arange(w, device=images.device)
    in_rows = (rows >= row - half) & (rows < row + half)  # N x H
    in_columns = (columns >= column - half) & (columns < column + half)  # N x W
    hole = (in_rows[:, :, None] & in_columns[:, None, :]).unsqueeze(1)  # N x 1 x H x W
    return images.masked_fill(hole, 0)

