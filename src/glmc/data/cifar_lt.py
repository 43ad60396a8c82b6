"""CIFAR-10-LT and CIFAR-100-LT: the official CIFAR files (glmc.data.cifar) cut to the long-tailed profile."""

from __future__ import annotations

from typing import Callable

import numpy as np

from glmc.data.cifar import CIFAR10, CIFAR100, CifarLayout, load_cifar
from glmc.data.datasets import DATASETS, DataConfig
from glmc.data.in_memory import InMemoryDataset, long_tailed_in_memory
from glmc.data.longtail import SPLITS, exponential_profile, long_tailed_indices

# The GLMC authors' normalisation constants. For CIFAR-100 they reuse CIFAR-10's mean with
# a widely copied std; we keep both as they are, since the numbers to reproduce used them.
CIFAR10_MEAN, CIFAR10_STD = (0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN, CIFAR100_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


# Each dataset's CIFAR files and the head class's size n_max (all its training images).
LAYOUTS: dict[str, tuple[CifarLayout, int]] = {"cifar10-lt": (CIFAR10, 5000), "cifar100-lt": (CIFAR100, 500)}
# data.validation=held-out: validation images per class unless data.val_per_class says otherwise
VAL_PER_CLASS = {"cifar10-lt": 100, "cifar100-lt": 20}


def class_counts(name: str, imbalance_factor: float) -> list[int]:
    """Training images per class of the CIFAR-LT dataset `name`, head first."""
    layout, n_max = LAYOUTS[name]
    return exponential_profile(n_max, layout.num_classes, imbalance_factor)


def cifar_lt_indices(name: str, train_labels: np.ndarray, imbalance_factor: float, split: str) -> np.ndarray:
    """The original training indices that the CIFAR-LT dataset `name` keeps for these settings."""
    return long_tailed_indices(train_labels, class_counts(name, imbalance_factor), split)


def _cifar_lt(name: str, mean: tuple, std: tuple) -> Callable:
    layout, n_max = LAYOUTS[name]

    def build(config: DataConfig) -> InMemoryDataset:
        counts = class_counts(name, config.imbalance_factor)
        SPLITS.get(config.split)  # an unknown protocol fails before the slow read
        data = load_cifar(layout, config.data_root, download=config.download)
        indices = long_tailed_indices(data.train.labels, counts, config.split)
        return long_tailed_in_memory(name, config, data.class_names, (data.train.images, data.train.labels), indices,
                                     (data.test.images, data.test.labels), mean, std, VAL_PER_CLASS[name])

    build.__doc__ = f"{layout.title}-LT: exponential profile from {n_max} images per class; complete test set."
    return DATASETS.register(name)(build)


cifar10_lt = _cifar_lt("cifar10-lt", CIFAR10_MEAN, CIFAR10_STD)
cifar100_lt = _cifar_lt("cifar100-lt", CIFAR100_MEAN, CIFAR100_STD)
