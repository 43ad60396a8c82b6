"""Which images each training step reads: the two-stream index sampler both loaders use.

`TwoStreamSampler` draws, per step, the uniform stream (a shuffle without replacement per
epoch) and the re-sampled stream (with replacement, by per-image weights). Randomness is
counter-based: the epoch's shuffle is seeded from (seed, epoch) and a step's draw from
(seed, epoch, step), so any step can be reproduced, or resumed, on its own.

The re-sampled stream's schemes give every training image a weight:
- `power`: the GLMC authors' sampler, image weight `1 / n_k^q` (`--resample_weighting`);
  q = 0 is uniform over images, q = 1 class-balanced.
- `reversed`: BBN's reversed sampler (Zhou et al. 2020), class probability `∝ N_max / n_k`,
  then an image uniformly within the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from glmc.distributed import SINGLE, Shard
from glmc.errors import ConfigError
from glmc.registry import Registry

# scheme(class_counts, q) -> probability of drawing class k, summing to 1
ClassProbabilities = Callable[[np.ndarray, float], np.ndarray]
SAMPLERS: Registry[ClassProbabilities] = Registry("sampler")


@SAMPLERS.register("power")
def power_class_probabilities(class_counts: np.ndarray, q: float) -> np.ndarray:
    mass = class_counts * class_counts ** -q  # n_k images of weight n_k^-q each
    return mass / mass.sum()


@SAMPLERS.register("reversed")
def reversed_class_probabilities(class_counts: np.ndarray, q: float) -> np.ndarray:
    mass = class_counts.max() / class_counts
    return mass / mass.sum()


def class_probabilities(class_counts: Sequence[int], scheme: str, q: float = 0.0) -> np.ndarray:
    """Probability that one draw of the re-sampled stream is of class k."""
    if q < 0:
        raise ConfigError(f"resample weighting q must be >= 0, got {q}")
    counts = np.asarray(class_counts, dtype=np.float64)
    if (counts <= 0).any():
        raise ConfigError("every class needs at least one training image to be re-sampled")
    return SAMPLERS.get(scheme)(counts, q)


def image_weights(labels: Tensor, class_counts: Sequence[int], scheme: str, q: float = 0.0) -> Tensor:
    """Per-image sampling weights (float64) whose class totals follow `class_probabilities`."""
    per_class = class_probabilities(class_counts, scheme, q) / np.asarray(class_counts, dtype=np.float64)
    return torch.as_tensor(per_class, device=labels.device)[labels]


def derived_seed(*counters: int) -> int:
    """A 63-bit seed that depends on every counter (seed, epoch, step, ...)."""
    return int(np.random.SeedSequence(list(counters)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def steps_per_epoch(images: int, batch_size: int, drop_last: bool, world: int = 1) -> int:
    """Full batches, plus the partial last one unless `drop_last` or it cannot give every rank an image."""
    full, rest = divmod(images, batch_size)
    return full + (1 if rest and not drop_last and rest >= world else 0)


@dataclass(frozen=True)
class StepDraw:
    """One step's global batch of indices; `generator` is seeded from (seed, epoch, step) and has
    drawn `resampled`, so a loader can go on drawing the step's augmentation from it."""

    step: int
    uniform: Tensor  # B int64
    resampled: Tensor  # B int64, the same length
    generator: torch.Generator


class TwoStreamSampler:
    """The indices of both streams, step by step, for `batch_size` images per stream (the global batch).

    `labels` (N int64) live on the device the draws are made on. The last uniform batch of an
    epoch is partial unless `drop_last` (the authors keep it), or dropped when too small to give
    each of `shard.world` ranks an image; the re-sampled batch always matches its size.
    """

    def __init__(self, labels: Tensor, class_counts: Sequence[int], batch_size: int, scheme: str = "power",
                 q: float = 0.0, seed: int = 0, drop_last: bool = False, shard: Shard = SINGLE) -> None:
        if not 0 < batch_size <= len(labels):
            raise ConfigError(f"batch size must be in [1, {len(labels)}] (the training set size), got {batch_size}")
        if batch_size < shard.world:
            raise ConfigError(f"batch size {batch_size} is smaller than the {shard.world} processes sharing it")
        self.size, self.batch_size, self.seed, self.drop_last, self.shard = len(labels), batch_size, seed, drop_last, shard
        self.weights = image_weights(labels, class_counts, scheme, q)
        self.generator = torch.Generator(device=labels.device)

    def __len__(self) -> int:
        """Steps per epoch."""
        return steps_per_epoch(self.size, self.batch_size, self.drop_last, self.shard.world)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[StepDraw]:
        order = torch.randperm(self.size, generator=self.seeded(epoch), device=self.generator.device)
        for step in range(start_step, len(self)):
            uniform = order[step * self.batch_size : (step + 1) * self.batch_size]
            generator = self.seeded(epoch, step)
            resampled = torch.multinomial(self.weights, len(uniform), replacement=True, generator=generator)
            yield StepDraw(step, uniform, resampled, generator)

    def seeded(self, *counters: int) -> torch.Generator:
        """The sampler's generator, re-seeded from (seed, *counters)."""
        return self.generator.manual_seed(derived_seed(self.seed, *counters))
