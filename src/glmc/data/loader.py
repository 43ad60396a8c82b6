"""The device-resident training loader for small images.

The whole uint8 training set is one tensor on the device. Every step draws two index
batches, the uniform stream (a shuffle without replacement per epoch) and the re-sampled
stream (with replacement), and two independently augmented views of each, all as batched
tensor operations.

Randomness is counter-based: the epoch's shuffle is seeded from (seed, epoch) and a step's
draws from (seed, epoch, step), so any step can be reproduced, or resumed, on its own.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from glmc.augment import Normalise
from glmc.data.batch import StreamBatch, TwoStreamBatch
from glmc.data.samplers import image_weights
from glmc.distributed import SINGLE, Shard
from glmc.errors import ConfigError

# augment(images N x C x H x W uint8, generator) -> N x C x H x W float
Augment = Callable[[Tensor, torch.Generator], Tensor]


def derived_seed(*counters: int) -> int:
    """A 63-bit seed that depends on every counter (seed, epoch, step, ...)."""
    return int(np.random.SeedSequence(list(counters)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def steps_per_epoch(images: int, batch_size: int, drop_last: bool, world: int = 1) -> int:
    """Full batches, plus the partial last one unless `drop_last` or it cannot give every rank an image."""
    full, rest = divmod(images, batch_size)
    return full + (1 if rest and not drop_last and rest >= world else 0)


class TwoStreamLoader:
    """Yields `TwoStreamBatch`es of two augmented views per stream.

    images: N x C x H x W uint8 and labels: N int64, both on the training device.
    The last uniform batch of an epoch is partial unless `drop_last` (the authors keep it);
    the re-sampled batch always matches its size. `batch_size` is the global batch: with a
    `shard` of several ranks, each rank yields its slice of both streams (glmc.distributed).
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
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be N x C x H x W uint8, got {tuple(images.shape)} {images.dtype}")
        if not 0 < batch_size <= len(images):
            raise ConfigError(f"batch size must be in [1, {len(images)}] (the training set size), got {batch_size}")
        if batch_size < shard.world:
            raise ConfigError(f"batch size {batch_size} is smaller than the {shard.world} processes sharing it")
        self.shard = shard
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.weights = image_weights(labels, class_counts, sampler, resample_weighting)
        self.generator = torch.Generator(device=images.device)

    def __len__(self) -> int:
        """Steps per epoch."""
        return steps_per_epoch(len(self.images), self.batch_size, self.drop_last, self.shard.world)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TwoStreamBatch]:
        """The batches of one epoch, from `start_step` on (for resuming mid-epoch)."""
        order = torch.randperm(len(self.images), generator=self._seeded(epoch), device=self.images.device)
        for step in range(start_step, len(self)):
            uniform = order[step * self.batch_size : (step + 1) * self.batch_size]
            generator = self._seeded(epoch, step)
            resampled = torch.multinomial(self.weights, len(uniform), replacement=True, generator=generator)
            if self.shard.world > 1:  # every rank drew the same global batch; it augments its own slice
                uniform, resampled = self.shard.take(uniform), self.shard.take(resampled)
                generator = self._seeded(epoch, step, self.shard.rank)
            yield TwoStreamBatch(uniform=self._views(uniform, generator), resampled=self._views(resampled, generator))

    def _views(self, indices: Tensor, generator: torch.Generator) -> StreamBatch:
        images = self.images[indices]  # B x C x H x W uint8
        return StreamBatch(
            view1=self.augment(images, generator),
            view2=self.augment(images, generator),
            labels=self.labels[indices],
        )

    def _seeded(self, *counters: int) -> torch.Generator:
        return self.generator.manual_seed(derived_seed(self.seed, *counters))


def evaluation_batches(
    images: Tensor, labels: Tensor, batch_size: int, normalise: Normalise
) -> Iterator[tuple[Tensor, Tensor]]:
    """Un-augmented, normalised test batches in order: (N x C x H x W float, N int64)."""
    for start in range(0, len(images), batch_size):
        yield normalise(images[start : start + batch_size]), labels[start : start + batch_size]
