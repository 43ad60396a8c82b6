"""A dataset in; its training loader and test set out, whichever kind of dataset it is.

In-memory datasets (CIFAR, synthetic) live on the training device and are augmented there
(glmc.data.loader); image-file datasets are decoded by worker processes (glmc.data.files).
Both loaders have `len()` (steps per epoch) and `epoch(epoch, start_step)`; both test sets
have `batches()` of normalised images and their labels, on the device.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from glmc.augment import CifarAugment, ImageNetColour, Normalise
from glmc.data.datasets import DataConfig, DatasetSummary, LongTailedDataset
from glmc.data.files import FileTestSet, FileTwoStreamLoader
from glmc.data.images import ImageFileDataset
from glmc.data.loader import TwoStreamLoader, evaluation_batches
from glmc.distributed import SINGLE, Shard
from glmc.errors import GlmcError


class DeviceTestSet:
    """An in-memory test set, uploaded once; with a `shard`, this rank's slice of it."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, normalise: Normalise, batch_size: int,
                 device: torch.device, shard: Shard = SINGLE) -> None:
        self.images = torch.from_numpy(shard.take(images)).to(device)
        self.labels = torch.from_numpy(shard.take(labels)).to(device)
        self.normalise, self.batch_size = normalise, batch_size

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        return evaluation_batches(self.images, self.labels, self.batch_size, self.normalise)


def create_train_loader(dataset: DatasetSummary, data: DataConfig, batch_size: int, device: torch.device,
                        sampler: str = "power", resample_weighting: float = 0.0, seed: int = 0,
                        drop_last: bool = False, shard: Shard = SINGLE) -> TwoStreamLoader | FileTwoStreamLoader:
    """The two-stream training loader of `dataset` (`batch_size` images per stream and step, over all ranks)."""
    normalise = Normalise(dataset.mean, dataset.std)
    common = dict(sampler=sampler, resample_weighting=resample_weighting, seed=seed, drop_last=drop_last, shard=shard)
    if isinstance(dataset, ImageFileDataset):
        return FileTwoStreamLoader(dataset.train, dataset.class_counts, batch_size, device,
                                   ImageNetColour(normalise, data.image_size), image_size=data.image_size,
                                   workers=data.workers, unreadable=data.unreadable, **common)
    if isinstance(dataset, LongTailedDataset):
        return TwoStreamLoader(torch.from_numpy(dataset.train_images).to(device),
                               torch.from_numpy(dataset.train_labels).to(device),
                               dataset.class_counts, batch_size, CifarAugment(normalise), **common)
    raise TypeError(f"no loader for {type(dataset).__name__}")


def create_test_set(dataset: DatasetSummary, data: DataConfig, batch_size: int, device: torch.device,
                    shard: Shard = SINGLE, part: str = "test") -> DeviceTestSet | FileTestSet:
    """The `part` ("test", or "val" where the dataset has one) of `dataset`, un-augmented."""
    normalise = Normalise(dataset.mean, dataset.std)
    if isinstance(dataset, ImageFileDataset):
        files = dataset.test if part == "test" else dataset.val
        if files is None:
            raise GlmcError(f"dataset {dataset.name} has no validation set (set data.val_list, or a val/ folder)")
        return FileTestSet(files, normalise, batch_size, device, image_size=data.image_size, resize=data.resize,
                           workers=data.workers, unreadable=data.unreadable, shard=shard)
    if part != "test":
        raise GlmcError(f"dataset {dataset.name} has no validation set; its test set is the only held-out one")
    return DeviceTestSet(dataset.test_images, dataset.test_labels, normalise, batch_size, device, shard)


def input_size(dataset: DatasetSummary, data: DataConfig) -> tuple[int, int]:
    """Height and width of the images the model sees."""
    if isinstance(dataset, ImageFileDataset):
        return data.image_size, data.image_size
    height, width = dataset.train_images.shape[-2:]
    return int(height), int(width)
