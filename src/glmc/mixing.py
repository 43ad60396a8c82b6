"""Global (MixUp) and local (CutMix) mixtures of the uniform and re-sampled streams.

Pure functions: inputs are never modified, and every random draw comes from the numpy
`Generator` passed in. The draws are host-side Python scalars, so mixing a batch that
lives on the GPU never waits on the device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

Box = tuple[int, int, int, int]  # (y1, y2, x1, x2): rows y1:y2 and columns x1:x2


def sample_lambda(rng: np.random.Generator, beta: float) -> float:
    """Draw the mixing coefficient `lam ~ Beta(beta, beta)`, a float in [0, 1]."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return float(rng.beta(beta, beta))


def mixup(x_a: Tensor, x_b: Tensor, lam: float) -> Tensor:
    """Global mixture: `lam * x_a + (1 - lam) * x_b`, a new tensor of the inputs' shape."""
    if x_a.shape != x_b.shape:
        raise ValueError(f"mixup needs equal shapes, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    return lam * x_a + (1.0 - lam) * x_b


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> Box:
    """The CutMix box `(y1, y2, x1, x2)` as the authors' code draws it.

    Each side is `ceil(S * sqrt(1 - lam))`; the centre `(cy, cx)` is uniform over the
    pixels (drawn in that order); the box spans `c -/+ side // 2`, clipped to the image,
    so it can be smaller than `(1 - lam)` of the image (and, for odd sides, one pixel
    short even when unclipped).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    ratio = math.sqrt(1.0 - lam)
    half_h = math.ceil(height * ratio) // 2
    half_w = math.ceil(width * ratio) // 2
    cy = int(rng.integers(0, height))
    cx = int(rng.integers(0, width))
    y1, y2 = _clip(cy - half_h, height), _clip(cy + half_h, height)
    x1, x2 = _clip(cx - half_w, width), _clip(cx + half_w, width)
    return y1, y2, x1, x2


def _clip(value: int, size: int) -> int:
    return min(max(value, 0), size)


def cutmix(x_a: Tensor, x_b: Tensor, box: Box) -> Tensor:
    """Local mixture: a new tensor equal to `x_a` (N x C x H x W) with `box` taken from `x_b`."""
    if x_a.shape != x_b.shape:
        raise ValueError(f"cutmix needs equal shapes, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    y1, y2, x1, x2 = box
    mixed = x_a.clone()  # the slice assignment below must not touch the caller's x_a
    mixed[..., y1:y2, x1:x2] = x_b[..., y1:y2, x1:x2]
    return mixed


def box_area_fraction(box: Box, height: int, width: int) -> float:
    """Fraction of the `height x width` image covered by `box`, in [0, 1]."""
    y1, y2, x1, x2 = box
    return (y2 - y1) * (x2 - x1) / (height * width)


def mixed_targets(
    labels_a: Tensor,
    labels_b: Tensor,
    lam: float,
    num_classes: int,
    class_weights: Tensor | None = None,
) -> Tensor:
    """Soft labels `lam * onehot(labels_a) + (1 - lam) * onehot(labels_b)`.

    Inputs: two int64 label vectors of length N. Output: N x K float32 on the labels'
    device. Rows sum to 1 unless `class_weights` (length K) is given, in which case each
    class's share is multiplied by its weight: `lam * w(a) onehot(a) + (1 - lam) * w(b) onehot(b)`.
    """
    onehot_a = torch.nn.functional.one_hot(labels_a, num_classes).float()  # N x K
    onehot_b = torch.nn.functional.one_hot(labels_b, num_classes).float()  # N x K
    targets = lam * onehot_a + (1.0 - lam) * onehot_b
    if class_weights is None:
        return targets
    # A one-hot row selects one weight, so weighting the mixture column-wise equals
    # weighting each one-hot before mixing.
    weights = class_weights.to(device=targets.device, dtype=targets.dtype)
    return targets * weights  # N x K


def partner_indices(n: int, rng: np.random.Generator, device: torch.device) -> Tensor:
    """A random permutation of `0..n-1` (int64, on `device`): each image's mixing partner in its own batch."""
    return torch.from_numpy(rng.permutation(n)).to(device)
