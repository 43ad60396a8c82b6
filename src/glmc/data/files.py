"""The loader for datasets of image files: decoding and cropping in worker processes,
colour and blur batched on the device.

Workers (a torch DataLoader) decode each image with Pillow as RGB, then cut the training
view (random resized crop and horizontal flip) twice, or the test view (shorter side
resized, centre crop) once, and return uint8 pixels. The training device then applies the
MoCo-v2 colour jitter, grayscale and Gaussian blur to whole batches (glmc.augment) and
normalises.

The indices come from the same `TwoStreamSampler` as the in-memory loader's, so the epoch's
order and a step's re-sampled draw come from (seed, epoch[, step]); each image's crops from
(seed, epoch, step, its position in the global batch), so a crop does not depend on the number
of workers or ranks. Only what the method reads (`BatchSpec`) is decoded: a method without the
re-sampled stream never opens its files, one view is one crop.

An image that cannot be decoded stops the run naming its file (`unreadable="fail"`), or is
left out of its batch and counted (`"skip"`).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from glmc.augment import ImageNetColour, Normalise
from glmc.data.batch import BatchSpec, StreamBatch, TwoStreamBatch
from glmc.data.samplers import TwoStreamSampler, derived_seed
from glmc.distributed import SINGLE, Shard
from glmc.errors import ConfigError, DataError

DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # what Pillow raises on a bad file
UNREADABLE_POLICIES = ("fail", "skip")
CROP_SCALE = (0.08, 1.0)  # area of a random resized crop, as a fraction of the image's
CROP_RATIO = (3 / 4, 4 / 3)  # its aspect ratio (width / height)


@dataclass(frozen=True)
class ImageFiles:
    """Image files and their labels; `paths` are relative to `root`."""

    root: str
    paths: list[str]
    labels: np.ndarray  # N, int64

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, index: int) -> str:
        return os.path.join(self.root, self.paths[index])

    def subset(self, indices: np.ndarray) -> "ImageFiles":
        return ImageFiles(self.root, [self.paths[i] for i in indices], self.labels[indices])


class UnreadableImage(Exception):
    """Raised inside a worker; travels back as an item's `error`."""


def decode_rgb(path: str) -> Image.Image:
    """The image at `path`, fully decoded, as 8-bit RGB (grayscale, CMYK, palette and alpha converted)."""
    try:
        with Image.open(path) as image:
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")  # what Pillow asks for before palette transparency is dropped
            return image.convert("RGB")
    except DECODE_ERRORS as error:
        lines = str(error).strip().splitlines()
        raise UnreadableImage(lines[0] if lines else type(error).__name__) from None


def random_resized_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random crop box (left, top, right, bottom) of 8-100% of the area and aspect 3/4-4/3;
    after 10 misses the largest centred box within the ratio bounds (Szegedy et al. 2015)."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        w, h = int(round(height * CROP_RATIO[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def training_view(image: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random resized crop to size x size, mirrored half the time: H x W x 3 uint8."""
    box = random_resized_box(image.width, image.height, rng)
    crop = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box))
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def centre_view(image: Image.Image, size: int, resize: int) -> np.ndarray:
    """Shorter side resized to `resize`, then the centre size x size: H x W x 3 uint8."""
    scale = resize / min(image.width, image.height)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = round((width - size) / 2), round((height - size) / 2)
    return np.asarray(resized.crop((left, top, left + size, top + size)))


@dataclass
class Decoded:
    """One item from a worker: its index and views (V x H x W x 3 uint8), or why it failed."""

    index: int
    views: np.ndarray | None
    error: str | None = None


class DecodedViews(Dataset):
    """Keys are (index, seed) for training views (two random crops each) or an index for the test view."""

    def __init__(self, files: ImageFiles, size: int, resize: int, views: int = 2) -> None:
        self.files, self.size, self.resize, self.views = files, size, resize, views

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int] | int) -> Decoded:
        index, seed = key if isinstance(key, tuple) else (key, None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow's EXIF and palette notes, once per worker and image
                image = decode_rgb(self.files.file(index))
        except UnreadableImage as error:
            return Decoded(index, None, str(error))
        if seed is None:
            return Decoded(index, centre_view(image, self.size, self.resize)[None])
        rng = np.random.default_rng(seed)
        return Decoded(index, np.stack([training_view(image, self.size, rng) for _ in range(self.views)]))


def collate(items: list[Decoded]) -> tuple[Tensor, Tensor, Tensor, list[tuple[int, str]]]:
    """Decoded items -> (indices N, views N x V x H x W x 3 uint8, which keys decoded (bool, one per
    item), [(index, reason)] of the others)."""
    good = [item for item in items if item.error is None]
    decoded = torch.tensor([item.error is None for item in items])
    failed = [(item.index, item.error) for item in items if item.error is not None]
    indices = torch.tensor([item.index for item in good], dtype=torch.int64)
    views = torch.from_numpy(np.stack([item.views for item in good])) if good else torch.empty(0, dtype=torch.uint8)
    return indices, views, decoded, failed


@dataclass
class Unreadable:
    """The policy for undecodable images and the files it has skipped (by index)."""

    files: ImageFiles
    policy: str = "fail"
    skipped: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.policy not in UNREADABLE_POLICIES:
            raise ConfigError(f"data.unreadable must be one of {', '.join(UNREADABLE_POLICIES)}, got {self.policy!r}")

    def handle(self, failed: list[tuple[int, str]]) -> None:
        for index, reason in failed:
            if self.policy == "fail":
                raise DataError(f"cannot read image {self.files.file(index)}: {reason} "
                                "(set data.unreadable=skip to leave such images out and count them)")
            self.skipped.add(index)

    def skipped_paths(self) -> list[str]:
        return sorted(self.files.paths[i] for i in self.skipped)


def make_loader(dataset: Dataset, keys: Iterator[list], workers: int, pin: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=keys, num_workers=workers, collate_fn=collate, pin_memory=pin,
                      prefetch_factor=4 if workers else None,
                      multiprocessing_context=worker_start() if workers else None)


def worker_start() -> multiprocessing.context.BaseContext:
    """Workers are forked from a server process started clean, never from the training process.

    A fork copies each lock as it is at that instant, and a lock another thread of the training
    process holds then (a process group's, the progress bar's, the run folder's lease renewal)
    stays held in the child for ever: the worker, and the loader waiting on it, would hang. The
    server imports this module (and torch with it) once; each worker is a fork of the server."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class FileTwoStreamLoader:
    """Yields `TwoStreamBatch`es of image files, like `TwoStreamLoader` does for in-memory images.

    `batch_size` is the global batch: with a `shard` of several ranks each yields its slice.
    Only the streams and views `spec` names are decoded and coloured.
    """

    def __init__(
        self,
        files: ImageFiles,
        class_counts: Sequence[int],
        batch_size: int,
        device: torch.device,
        colour: ImageNetColour,
        image_size: int = 224,
        sampler: str = "power",
        resample_weighting: float = 0.0,
        seed: int = 0,
        drop_last: bool = False,
        workers: int = 8,
        unreadable: str = "fail",
        shard: Shard = SINGLE,
        spec: BatchSpec = BatchSpec(),
    ) -> None:
        if workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {workers}")
        self.sampler = TwoStreamSampler(torch.from_numpy(files.labels), class_counts, batch_size, sampler,
                                        resample_weighting, seed, drop_last, shard)
        self.files, self.device, self.colour, self.spec = files, device, colour, spec
        self.seed, self.workers, self.shard = seed, workers, shard
        self.unreadable = Unreadable(files, unreadable)
        self.views = DecodedViews(files, image_size, image_size, views=max(spec.views))

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TwoStreamBatch]:
        """The batches of one epoch, from `start_step` on."""
        loader = make_loader(self.views, self.keys(epoch, start_step), self.workers, self.device.type == "cuda")
        for step, (indices, views, decoded, failed) in enumerate(loader, start_step):
            self.unreadable.handle(failed)
            yield self._batch(epoch, step, indices, views, decoded)

    def unreadable_paths(self) -> list[str]:
        return self.unreadable.skipped_paths()

    def decoding_rate(self, workers: int, steps: int, warmup: int) -> float:
        """Source images per second through the workers' half (decode, crops, flips), no device work."""
        keys = (key for epoch in range(10**6) for key in self.keys(epoch, 0))
        batches = iter(make_loader(self.views, keys, workers, pin=False))
        for _ in range(warmup + (2 if workers else 0)):  # workers start and fill their queues
            next(batches)
        started, images = time.perf_counter(), 0
        for _ in range(steps):
            indices, _, _, _ = next(batches)
            images += len(indices)
        return images / (time.perf_counter() - started)

    def keys(self, epoch: int, start_step: int) -> Iterator[list[tuple[int, int]]]:
        """Per step: this rank's (index, crop seed) for the uniform stream, then, if read, as many for the re-sampled one."""
        streams = 2 if self.spec.resampled else 1
        for draw in self.sampler.epoch(epoch, start_step):
            size = len(draw.uniform)
            seeds = np.random.SeedSequence([self.seed, epoch, draw.step, 3]).generate_state(2 * size, np.uint64)
            mine = self.shard.take(np.arange(size))
            yield [(int(indices[p]), int(seeds[stream * size + p]))
                   for stream, indices in enumerate((draw.uniform, draw.resampled)[:streams]) for p in mine]

    def _batch(self, epoch: int, step: int, indices: Tensor, views: Tensor, decoded: Tensor) -> TwoStreamBatch:
        """Split the decoded items into the streams, colour and normalise the views read, on the device.

        Keys whose image was skipped are missing from `indices`; the longer stream is then cut
        to the shorter, as the methods mix the streams pairwise."""
        streams = 2 if self.spec.resampled else 1
        per_stream = len(decoded) // streams
        stream_of = (torch.arange(len(decoded)) // per_stream)[decoded]  # one per decoded item
        positions = [(stream_of == number).nonzero().flatten() for number in range(streams)]
        size = min(len(chosen) for chosen in positions)
        if size == 0:
            raise DataError(f"every image of epoch {epoch + 1}, step {step + 1} was unreadable")
        pixels = views.to(self.device, non_blocking=True).permute(0, 1, 4, 2, 3)  # N x V x 3 x H x W, channels-last memory
        labels = torch.from_numpy(self.files.labels)[indices].to(self.device, non_blocking=True)
        seed = derived_seed(self.seed, epoch, step, self.shard.rank, 2)
        batches = []
        for number, chosen in enumerate(positions):
            chosen = chosen[:size].to(self.device)
            images = pixels[chosen]  # n x V x 3 x H x W
            coloured = {view: self.colour(images[:, view - 1], seed + 2 * number + view - 1) if view in self.spec.views else None
                        for view in (1, 2)}
            batches.append(StreamBatch(view1=coloured[1], view2=coloured[2], labels=labels[chosen]))
        return TwoStreamBatch(uniform=batches[0], resampled=batches[1] if self.spec.resampled else None)


class FileTestSet:
    """The test (or validation) images of a file dataset, decoded in workers, in order.

    With a `shard` of several ranks each evaluates its slice; summing the confusion counts
    over ranks gives the single-process metrics.
    """

    def __init__(self, files: ImageFiles, normalise: Normalise, batch_size: int, device: torch.device,
                 image_size: int = 224, resize: int = 256, workers: int = 8, unreadable: str = "fail",
                 shard: Shard = SINGLE) -> None:
        self.files, self.normalise, self.batch_size, self.device = files, normalise, batch_size, device
        self.workers, self.shard = workers, shard
        self.unreadable = Unreadable(files, unreadable)
        self.views = DecodedViews(files, image_size, resize, views=1)

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(N x 3 x H x W normalised float, N labels) on the device."""
        mine = list(self.shard.take(range(len(self.files))))
        keys = (mine[start : start + self.batch_size] for start in range(0, len(mine), self.batch_size))
        labels = torch.from_numpy(self.files.labels)
        for indices, views, _, failed in make_loader(self.views, keys, self.workers, self.device.type == "cuda"):
            self.unreadable.handle(failed)
            if len(indices) == 0:
                continue
            pixels = views[:, 0].to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # N x 3 x H x W
            yield self.normalise(pixels), labels[indices].to(self.device, non_blocking=True)

    def unreadable_paths(self) -> list[str]:
        return self.unreadable.skipped_paths()
