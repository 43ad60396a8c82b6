"""How the re-sampled stream draws its images.

Both schemes give every training image a weight and draw with replacement.
- `power`: the GLMC authors' sampler, image weight `1 / n_k^q` (`--resample_weighting`);
  q = 0 is uniform over images, q = 1 class-balanced.
- `reversed`: BBN's reversed sampler (Zhou et al. 2020), class probability `∝ N_max / n_k`,
  then an image uniformly within the class.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

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
