"""The device-resident training loader for small images.

The whole uint8 training set is one tensor on the device. Every step takes the two index
batches of `TwoStreamSampler` and augments the views the method reads (`BatchSpec`), all as
batched tensor operations. A step's augmentation is drawn from the step's generator after the
sampler's draw, in a fixed order (uniform view 1, view 2, re-sampled view 1, view 2); a view
nobody reads has its randomness drawn and its pixels never computed, so every method sees the
same crops for the views it does read.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Protocol, Sequence

import torch
from torch import Tensor

from glmc.augment import Normalise
from glmc.data.batch import VIEWS, BatchSpec, StreamBatch, TwoStreamBatch
from glmc.data.samplers import TwoStreamSampler
from glmc.distributed import SINGLE, Shard


class Augment(Protocol):
    """A batched training view in two halves (glmc.augment.CifarAugment)."""

    def draw(self, n: int, generator: torch.Generator) -> object:
        """The random parameters of n images' views: a dataclass of N x ... tensors (or None)."""

    def __call__(self, images: Tensor, params: object) -> Tensor:
        """images: N x C x H x W uint8 -> N x C x H x W float."""


class TwoStreamLoader:
    """Yields `TwoStreamBatch`es of the augmented views `spec` asks for, from images held on the device.

    images: N x C x H x W uint8 and labels: N int64, both on the training device. `batch_size`
    is the global batch: with a `shard` of several ranks, each rank yields its slice of both
    streams (glmc.distributed), augmented exactly as that slice of a single process's batch.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        class_counts: Sequence[int],
        batch_size: int,
        augment: Augment,
        sampler: str = "power",
        resample_weighting: float = 0.0,
        seed: int = 0,
        drop_last: bool = False,
        shard: Shard = SINGLE,
        spec: BatchSpec = BatchSpec(),
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be N x C x H x W uint8, got {tuple(images.shape)} {images.dtype}")
        self.sampler = TwoStreamSampler(labels, class_counts, batch_size, sampler, resample_weighting, seed, drop_last, shard)
        self.images, self.labels, self.augment, self.shard, self.spec = images, labels, augment, shard, spec

    def __len__(self) -> int:
        """Steps per epoch."""
        return len(self.sampler)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TwoStreamBatch]:
        """The batches of one epoch, from `start_step` on (for resuming mid-epoch)."""
        for draw in self.sampler.epoch(epoch, start_step):
            streams = [self._views(draw.uniform, draw.generator)]
            if self.spec.resampled:
                streams.append(self._views(draw.resampled, draw.generator))
            yield TwoStreamBatch(uniform=streams[0], resampled=streams[1] if self.spec.resampled else None)

    def unreadable_paths(self) -> list[str]:
        return []  # pixels in memory are always readable

    def _views(self, indices: Tensor, generator: torch.Generator) -> StreamBatch:
        """The stream's views of this rank's share of the global batch `indices`.

        Every view's randomness is drawn for the whole global batch, in order, whatever the spec
        and the number of ranks; a rank keeps its share of it. So an image's crops depend on
        neither which views a method reads nor how many processes share the batch.
        """
        mine = self.shard.take(indices)
        images = self.images[mine]  # b x C x H x W uint8
        views = {}
        for view in VIEWS:
            params = self.augment.draw(len(indices), generator)  # the global batch's
            views[view] = self.augment(images, take_rows(params, self.shard)) if view in self.spec.views else None
        return StreamBatch(view1=views[1], view2=views[2], labels=self.labels[mine])


def take_rows(params: object, shard: Shard) -> object:
    """This rank's rows of an augmentation's per-image parameters (a dataclass of N x ... tensors)."""
    if shard.world == 1:
        return params
    return dataclasses.replace(params, **{f.name: None if getattr(params, f.name) is None else shard.take(getattr(params, f.name))
                                          for f in dataclasses.fields(params)})


def evaluation_batches(
    images: Tensor, labels: Tensor, batch_size: int, normalise: Normalise
) -> Iterator[tuple[Tensor, Tensor]]:
    """Un-augmented, normalised test batches in order: (N x C x H x W float, N int64)."""
    for start in range(0, len(images), batch_size):
        yield normalise(images[start : start + batch_size]), labels[start : start + batch_size]
