"""Long-tailed training subsets: the exponential profile and the split protocols.

Both protocols are exactly reproducible with numpy's legacy RNG (`RandomState`, the
generator behind `np.random.seed`), so a split can be checked against other codebases
index for index. `split_fingerprint` names a split in one short string.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np

from glmc.errors import ConfigError, DataError
from glmc.registry import Registry

# protocol(labels, class_counts) -> selected original training indices, in protocol order
SplitProtocol = Callable[[np.ndarray, Sequence[int]], np.ndarray]
SPLITS: Registry[SplitProtocol] = Registry("split protocol")


def exponential_profile(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Training images per class: `n_k = int(n_max * (1/IF)^(k/(K-1)))`, k = 0..K-1."""
    if not imbalance_factor >= 1:  # also rejects NaN
        raise ConfigError(f"imbalance factor must be >= 1, got {imbalance_factor}")
    if num_classes < 2:
        raise ConfigError(f"a long-tailed profile needs at least 2 classes, got {num_classes}")
    # Written as the reference code writes it, so the floats (and int() truncation) agree.
    ratio = 1.0 / imbalance_factor
    return [int(n_max * ratio ** (k / (num_classes - 1.0))) for k in range(num_classes)]


@SPLITS.register("standard")
def standard_split(labels: np.ndarray, class_counts: Sequence[int]) -> np.ndarray:
    """Cao et al. (LDAM-DRW, NeurIPS 2019), the split nearly every paper uses.

    Seed 0; for each class in label order, shuffle its indices and keep the first n_k.
    """
    rng = np.random.RandomState(0)
    chosen = []
    for k, n_k in enumerate(class_counts):
        idx = _class_indices(labels, k, n_k)
        rng.shuffle(idx)
        chosen.append(idx[:n_k])
    return np.concatenate(chosen)


@SPLITS.register("glmc")
def glmc_split(labels: np.ndarray, class_counts: Sequence[int]) -> np.ndarray:
    """The GLMC authors' split (their issue #14): not the standard one.

    Seed 3407; for each class in label order, `choice(n_original_k, n_k, replace=False)`
    over that class's indices in original file order.
    """
    rng = np.random.RandomState(3407)
    chosen = []
    for k, n_k in enumerate(class_counts):
        idx = _class_indices(labels, k, n_k)
        chosen.append(idx[rng.choice(len(idx), n_k, replace=False)])
    return np.concatenate(chosen)


def _class_indices(labels: np.ndarray, k: int, n_k: int) -> np.ndarray:
    idx = np.where(labels == k)[0]
    if len(idx) < n_k:
        raise DataError(f"class {k} has {len(idx)} training images, the profile needs {n_k}")
    return idx


def long_tailed_indices(labels: np.ndarray, class_counts: Sequence[int], protocol: str) -> np.ndarray:
    """Original indices of the long-tailed subset chosen by the named protocol."""
    return SPLITS.get(protocol)(np.asarray(labels), class_counts)


def split_fingerprint(indices: np.ndarray) -> str:
    """`sha256:<hex>` over the selected indices as little-endian int64, ascending."""
    canonical = np.sort(np.asarray(indices, dtype=np.int64)).astype("<i8")
    return "sha256:" + hashlib.sha256(canonical.tobytes()).hexdigest()
