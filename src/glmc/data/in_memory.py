"""Datasets held in memory as uint8 arrays (CIFAR-LT, synthetic-lt): uploaded once, augmented on the device."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from glmc.augment import CifarAugment, Normalise
from glmc.data.batch import BatchSpec
from glmc.data.datasets import DataConfig, Dataset
from glmc.data.loader import TwoStreamLoader, evaluation_batches
from glmc.data.longtail import split_fingerprint
from glmc.data.validation import balanced_hold_out, validation_card
from glmc.distributed import SINGLE, Shard
from glmc.errors import GlmcError


@dataclass(frozen=True)
class InMemoryDataset(Dataset):
    """A long-tailed training set and its complete, balanced test set, as arrays.

    Build one from your arrays in a dataset builder (glmc.data.datasets); the loader crops,
    flips (then applies data.autoaugment and data.cutout where set) and normalises on the device
    (glmc.augment.CifarAugment).
    """

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
    # the validation set held out of the original training set (data.validation=held-out), or None
    val_images: np.ndarray | None = None  # V x C x H x W, uint8
    val_labels: np.ndarray | None = None  # V, int64
    val_indices: np.ndarray | None = None  # V, positions in the original training set
    val_taken: tuple[int, ...] | None = None  # per class: how many came out of the long-tailed training set

    @property
    def fingerprint(self) -> str:
        return split_fingerprint(self.train_indices)

    def validation_card(self) -> dict | None:
        if self.val_labels is None:
            return None
        return validation_card("class-balanced, from the original training images", self.val_labels,
                               self.num_classes, split_fingerprint(self.val_indices), self.val_taken, self.val_indices)

    def train_loader(self, config: DataConfig, batch_size: int, device: torch.device, sampler: str = "power",
                     resample_weighting: float = 0.0, seed: int = 0, drop_last: bool = False, shard: Shard = SINGLE,
                     spec: BatchSpec = BatchSpec()) -> TwoStreamLoader:
        augment = CifarAugment(Normalise(self.mean, self.std), policy=config.autoaugment, cutout=config.cutout,
                               image_size=self.input_size(config))
        return TwoStreamLoader(torch.from_numpy(self.train_images).to(device), torch.from_numpy(self.train_labels).to(device),
                               self.class_counts, batch_size, augment, sampler=sampler,
                               resample_weighting=resample_weighting, seed=seed, drop_last=drop_last, shard=shard, spec=spec)

    def test_set(self, config: DataConfig, batch_size: int, device: torch.device, shard: Shard = SINGLE,
                 part: str = "test") -> "DeviceTestSet":
        if part == "val" and self.val_images is None:
            raise GlmcError(f"dataset {self.name} has no validation set here: set data.validation=held-out to hold one "
                            "out of the training images")
        images, labels = {"train": (self.train_images, self.train_labels), "val": (self.val_images, self.val_labels),
                          "test": (self.test_images, self.test_labels)}[part]
        return DeviceTestSet(images, labels, Normalise(self.mean, self.std), batch_size, device, shard)

    def content_digest(self) -> dict[str, str]:
        """SHA-256 of the pixels and labels themselves (a re-encoded copy of CIFAR changes it)."""
        return {"train": array_digest(self.train_images, self.train_labels), "test": array_digest(self.test_images, self.test_labels)}

    def input_size(self, config: DataConfig) -> tuple[int, int]:
        height, width = self.train_images.shape[-2:]
        return int(height), int(width)

    def test_resize(self, config: DataConfig) -> None:
        return None  # test images are used as they are


def long_tailed_in_memory(name: str, config: DataConfig, class_names: list[str], pool: tuple[np.ndarray, np.ndarray],
                          indices: np.ndarray, test: tuple[np.ndarray, np.ndarray], mean: tuple[float, ...],
                          std: tuple[float, ...], val_per_class: int) -> InMemoryDataset:
    """The long-tailed set of `indices` into the original training set `pool` (images, labels), with its
    validation set held out of `pool` when `config.validation` asks (`val_per_class` per class unless
    `config.val_per_class` says otherwise)."""
    pool_images, pool_labels = pool
    val = {}
    if config.validation == "held-out":
        held_out = balanced_hold_out(pool_labels, indices, config.val_per_class or val_per_class, len(class_names))
        indices = held_out.train_indices
        val = {"val_images": pool_images[held_out.val_indices], "val_labels": pool_labels[held_out.val_indices],
               "val_indices": held_out.val_indices, "val_taken": held_out.taken_from_training}
    return InMemoryDataset(name=name, split=config.split, imbalance_factor=config.imbalance_factor, class_names=class_names,
                           train_images=pool_images[indices], train_labels=pool_labels[indices], train_indices=indices,
                           test_images=test[0], test_labels=test[1], mean=mean, std=std, **val)


def array_digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).data)
    return "sha256:" + digest.hexdigest()


class DeviceTestSet:
    """An in-memory test set, uploaded once; with a `shard`, this rank's slice of it."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, normalise: Normalise, batch_size: int,
                 device: torch.device, shard: Shard = SINGLE) -> None:
        self.images = torch.from_numpy(shard.take(images)).to(device)
        self.labels = torch.from_numpy(shard.take(labels)).to(device)
        self.normalise, self.batch_size = normalise, batch_size

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        return evaluation_batches(self.images, self.labels, self.batch_size, self.normalise)

    def unreadable_paths(self) -> list[str]:
        return []
