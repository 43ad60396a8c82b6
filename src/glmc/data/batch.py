"""What flows from a loader into a training method: the batch types, and what a method reads of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

from torch import Tensor

VIEWS = (1, 2)  # every stream can give two independently augmented views of its images


@dataclass(frozen=True)
class BatchSpec:
    """The parts of a step's batch a method reads; the loaders build only these.

    `resampled`: whether the re-sampled stream is read (the uniform one always is).
    `views`: which of the two augmented views of each stream are read.
    """

    resampled: bool = True
    views: tuple[int, ...] = VIEWS

    def __post_init__(self) -> None:
        if not self.views or not set(self.views) <= set(VIEWS):
            raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {self.views}")


@dataclass(frozen=True)
class StreamBatch:
    """One stream's batch: up to two independently augmented views of the same images.

    A view the method did not ask for (`BatchSpec.views`) is None.
    """

    view1: Tensor | None  # N x C x H x W, float, normalised
    view2: Tensor | None  # N x C x H x W, float, normalised
    labels: Tensor  # N, int64


@dataclass(frozen=True)
class TwoStreamBatch:
    """A step's input: the uniform (instance-balanced) and the re-sampled stream.

    Both streams hold the same number of images; `resampled` is None when the method does not read it.
    """

    uniform: StreamBatch
    resampled: StreamBatch | None


class TrainingBatches(Protocol):
    """A training loader, whatever the dataset kind (in memory: glmc.data.loader; files: glmc.data.files)."""

    def __len__(self) -> int:
        """Steps per epoch."""

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TwoStreamBatch]:
        """The batches of `epoch` (from 0), from `start_step` on."""

    def unreadable_paths(self) -> list[str]:
        """Images left out as undecodable so far (`data.unreadable=skip`); empty for in-memory data."""


class HeldOutBatches(Protocol):
    """A held-out set (test or validation), un-augmented, in order, on the training device."""

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(N x C x H x W normalised float, N int64 labels) per batch."""

    def unreadable_paths(self) -> list[str]: ...
