"""The dataset registry and what every dataset is: a name and a `DataConfig` in, a `Dataset` out.

Add a dataset with one file holding one decorated builder, imported in `glmc/data/__init__.py`
(or anywhere before the run is built)::

    @DATASETS.register("my-dataset")
    def my_dataset(config: DataConfig) -> InMemoryDataset: ...

The two kinds implement `Dataset`: `glmc.data.in_memory.InMemoryDataset` (uint8 arrays,
augmented on the device: CIFAR, synthetic-lt) and `glmc.data.images.ImageFileDataset` (files
decoded by workers: ImageNet-LT, iNat, Places-LT, folders). Whoever trains or evaluates asks
the dataset for its loader and its test set, never which kind it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch

from glmc.data.batch import BatchSpec, HeldOutBatches, TrainingBatches
from glmc.distributed import SINGLE, Shard
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
    # A validation set (glmc.data.validation): "none" (the benchmarks' protocol) or "held-out" out of the training images
    validation: str = "none"
    val_per_class: int | None = None  # in-memory sets: validation images per class (None: the dataset's default)
    val_fraction: float = 0.1  # image files without a validation list or val/ folder: share of each class held out
    # In-memory datasets (CIFAR-LT, synthetic-lt): after crop and flip, an AutoAugment policy ("none" or "cifar10")
    # and a Cutout hole of this side in pixels (0: none), as some baselines' recipes train with
    autoaugment: str = "none"
    cutout: int = 0


class Dataset:
    """What every dataset kind shares: class counts, shot groups, the card, its loader and test set.

    A subclass is a frozen dataclass with the fields `name`, `split`, `imbalance_factor`,
    `class_names`, `train_labels`, `test_labels`, `mean`, `std` and a `fingerprint`, and
    implements the methods below.
    """

    from_files: ClassVar[bool] = False  # decoded from image files by worker processes (else held in memory)

    def train_loader(self, config: DataConfig, batch_size: int, device: torch.device, sampler: str = "power",
                     resample_weighting: float = 0.0, seed: int = 0, drop_last: bool = False, shard: Shard = SINGLE,
                     spec: BatchSpec = BatchSpec()) -> TrainingBatches:
        """The two-stream training loader: `batch_size` images per stream and step over all ranks,
        the streams and views of `spec` only."""
        raise NotImplementedError

    def test_set(self, config: DataConfig, batch_size: int, device: torch.device, shard: Shard = SINGLE,
                 part: str = "test") -> HeldOutBatches:
        """The `part` un-augmented, as the test set is: "test", "val" where the dataset has one, or "train" (the
        training images themselves, to see how well a model fits each class); with a `shard`, this rank's slice."""
        raise NotImplementedError

    def input_size(self, config: DataConfig) -> tuple[int, int]:
        """Height and width of the images the model sees."""
        raise NotImplementedError

    def content_digest(self) -> dict[str, str]:
        """A cheap digest of what the training and test images hold, `{"train": ..., "test": ...}`:
        resume refuses data that changed under a run (the split fingerprint only names *which* images)."""
        raise NotImplementedError

    def test_resize(self, config: DataConfig) -> int | None:
        """Test images' shorter side before the centre crop, or None when they are used as they are."""
        raise NotImplementedError

    def validation_card(self) -> dict | None:
        """The validation set a run evaluates (data.validation=held-out) for the card, or None."""
        return None

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
            validation=self.validation_card(),
        )


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
    validation: dict | None = None  # glmc.data.validation.validation_card

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
            **({"validation": self.validation} if self.validation else {}),
        }

    def render(self) -> str:
        width = max(len(name) for name in self.class_names)
        val_counts = self.validation["class_counts"] if self.validation else None
        rows = [f"  {k:>3}  {name:<{width}}  {count:>6}" + (f"  val {val_counts[k]:>5}" if val_counts else "")
                for k, (name, count) in enumerate(zip(self.class_names, self.class_counts))]
        return "\n".join(
            [
                f"dataset      {self.dataset} (imbalance factor {self.imbalance_factor:g}, {self.split} split)",
                f"classes      {self.num_classes}",
                f"train images {self.total} (max {max(self.class_counts)}, min {min(self.class_counts)})",
                f"test images  {self.test_total}",
                f"shots        many {self.many} / medium {self.medium} / few {self.few} classes "
                f"(many > 100, medium 20..100, few < 20 training images)",
                f"fingerprint  {self.fingerprint}",
                *self.validation_lines(),
                "per class:",
                *rows,
            ]
        )

    def validation_lines(self) -> list[str]:
        if not self.validation:
            return ["validation   none (data.validation=held-out holds one out of the training images)"]
        val = self.validation
        lines = [f"validation   {val['total']} images, {val['kind']} (fingerprint {val['fingerprint'][:19]}…)"]
        lost = val.get("taken_from_training") or []
        if any(lost):
            lost_by_class = ", ".join(f"{self.class_names[k]} {n}" for k, n in enumerate(lost) if n)
            lines.append(f"             {sum(lost)} of them out of the long-tailed training set, which lost them ({lost_by_class})")
        return lines


DATASETS: Registry[Callable[[DataConfig], Dataset]] = Registry("dataset")


def create_dataset(config: DataConfig) -> Dataset:
    return DATASETS.get(config.dataset)(config)
