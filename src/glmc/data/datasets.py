"""The dataset registry: a name and a `DataConfig` in, a long-tailed dataset out.

Add a dataset with one decorated builder::

    @DATASETS.register("my-dataset")
    def my_dataset(config: DataConfig) -> LongTailedDataset: ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from glmc.data.cifar import CIFAR10, CIFAR100, CifarLayout, load_cifar
from glmc.data.longtail import SPLITS, exponential_profile, long_tailed_indices, split_fingerprint
from glmc.registry import Registry
from glmc.shots import STANDARD, ShotBounds


@dataclass
class DataConfig:
    """Which data a run trains and tests on."""

    dataset: str = "cifar10-lt"
    data_root: str = "data"  # folder that holds e.g. cifar-10-batches-py/
    imbalance_factor: float = 100.0  # n_max / n_min of the training set, >= 1
    split: str = "standard"  # "standard" (Cao et al.) or "glmc" (the authors' seed-3407 split)
    download: bool = False  # fetch the official archive (MD5-checked) when missing
    # Image-file datasets (glmc.data.images): lists of `relative/path label` lines, relative to
    # data_root unless absolute; empty means the dataset's standard file name.
    train_list: str = ""
    val_list: str = ""
    test_list: str = ""
    long_tailed_subset: bool = False  # draw a subset by the exponential profile (imbalance_factor, split)
    image_size: int = 224  # training crops and test centre crops, in pixels
    resize: int = 256  # test images: shorter side resized to this, then centre-cropped to image_size
    workers: int = 8  # decoding processes per training process
    unreadable: str = "fail"  # an image that cannot be decoded: "fail" (naming the file) or "skip" and count it


class DatasetSummary:
    """What every dataset kind shares: class counts, shot groups and the card.

    A subclass is a frozen dataclass with the fields `name`, `split`, `imbalance_factor`,
    `class_names`, `train_labels`, `test_labels` and a `fingerprint`.
    """

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_counts(self) -> list[int]:
        return np.bincount(self.train_labels, minlength=self.num_classes).tolist()

    def card(self, bounds: ShotBounds = STANDARD) -> "DatasetCard":
        counts = self.class_counts
        return DatasetCard(
            dataset=self.name,
            split=self.split,
            imbalance_factor=self.imbalance_factor,
            class_names=self.class_names,
            class_counts=counts,
            test_total=len(self.test_labels),
            fingerprint=self.fingerprint,
            **bounds.sizes(counts),
        )


@dataclass(frozen=True)
class LongTailedDataset(DatasetSummary):
    """A long-tailed training set and its complete, balanced test set, in memory."""

    name: str
    split: str
    imbalance_factor: float
    class_names: list[str]
    train_images: np.ndarray  # N x C x H x W, uint8
    train_labels: np.ndarray  # N, int64
    train_indices: np.ndarray  # N, positions in the original training set
    test_images: np.ndarray  # M x C x H x W, uint8
    test_labels: np.ndarray  # M, int64
    mean: tuple[float, ...]  # per-channel normalisation, on the [0, 1] scale
    std: tuple[float, ...]

    @property
    def fingerprint(self) -> str:
        return split_fingerprint(self.train_indices)


@dataclass(frozen=True)
class DatasetCard:
    """What a reader needs to know about a run's training data."""

    dataset: str
    split: str
    imbalance_factor: float
    class_names: list[str]
    class_counts: list[int]
    test_total: int
    fingerprint: str
    many: int
    medium: int
    few: int

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    def total(self) -> int:
        return sum(self.class_counts)

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "imbalance_factor": self.imbalance_factor,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "class_counts": self.class_counts,
            "total": self.total,
            "test_total": self.test_total,
            "many": self.many,
            "medium": self.medium,
            "few": self.few,
            "fingerprint": self.fingerprint,
        }

    def render(self) -> str:
        width = max(len(name) for name in self.class_names)
        rows = [f"  {k:>3}  {name:<{width}}  {count:>6}" for k, (name, count) in enumerate(zip(self.class_names, self.class_counts))]
        return "\n".join(
            [
                f"dataset      {self.dataset} (imbalance factor {self.imbalance_factor:g}, {self.split} split)",
                f"classes      {self.num_classes}",
                f"train images {self.total} (max {max(self.class_counts)}, min {min(self.class_counts)})",
                f"test images  {self.test_total}",
                f"shots        many {self.many} / medium {self.medium} / few {self.few} classes "
                f"(many > 100, medium 20..100, few < 20 training images)",
                f"fingerprint  {self.fingerprint}",
                "per class:",
                *rows,
            ]
        )


DATASETS: Registry[Callable[[DataConfig], LongTailedDataset]] = Registry("dataset")


def create_dataset(config: DataConfig) -> LongTailedDataset:
    return DATASETS.get(config.dataset)(config)


# The GLMC authors' normalisation constants. For CIFAR-100 they reuse CIFAR-10's mean with
# a widely copied std; we keep both as they are, since the numbers to reproduce used them.
CIFAR10_MEAN, CIFAR10_STD = (0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN, CIFAR100_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def _cifar_lt(name: str, layout: CifarLayout, n_max: int, mean: tuple, std: tuple) -> Callable:
    def build(config: DataConfig) -> LongTailedDataset:
        counts = exponential_profile(n_max, layout.num_classes, config.imbalance_factor)
        SPLITS.get(config.split)  # an unknown protocol fails before the slow read
        data = load_cifar(layout, config.data_root, download=config.download)
        indices = long_tailed_indices(data.train.labels, counts, config.split)
        return LongTailedDataset(
            name=name,
            split=config.split,
            imbalance_factor=config.imbalance_factor,
            class_names=data.class_names,
            train_images=data.train.images[indices],
            train_labels=data.train.labels[indices],
            train_indices=indices,
            test_images=data.test.images,
            test_labels=data.test.labels,
            mean=mean,
            std=std,
        )

    build.__doc__ = f"{layout.title}-LT: exponential profile from {n_max} images per class; complete test set."
    return DATASETS.register(name)(build)


cifar10_lt = _cifar_lt("cifar10-lt", CIFAR10, 5000, CIFAR10_MEAN, CIFAR10_STD)
cifar100_lt = _cifar_lt("cifar100-lt", CIFAR100, 500, CIFAR100_MEAN, CIFAR100_STD)

from glmc.data import images, synthetic  # noqa: E402,F401  (register image-list, folder, ..., synthetic-lt)
