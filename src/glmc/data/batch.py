"""The batch types that flow from the loader into a training method."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class StreamBatch:
    """One stream's batch: two independently augmented views of the same images."""

    view1: Tensor  # N x C x H x W, float, normalised
    view2: Tensor  # N x C x H x W, float, normalised
    labels: Tensor  # N, int64


@dataclass(frozen=True)
class TwoStreamBatch:
    """A GLMC step's input: the uniform (instance-balanced) and the re-sampled stream.

    Both streams hold the same number of images.
    """

    uniform: StreamBatch
    resampled: StreamBatch
