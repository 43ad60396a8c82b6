"""synthetic-lt: a small long-tailed image dataset generated in code, for tests and smoke runs.

Ten classes of 32 x 32 RGB uint8 images, so the CIFAR augmentation and backbones apply.
A class is a pattern (horizontal stripes, vertical stripes, a checker, rings, spots) in a
colour (red, green, blue); each pattern comes in two colours and each colour in three or
four patterns, so neither colour nor pattern alone names the class. Every image draws its
own frequency, phase or position (a random translation), orientation jitter, contrast,
background, colour jitter and pixel noise, and a fainter pattern of a random class is
painted beneath as clutter, so some images are genuinely ambiguous.

The balanced "original" training pool holds `N_MAX` images per class, classes interleaved;
the long-tailed training set is chosen from it by the exponential profile and the split
protocol, exactly as for CIFAR-LT, so both protocols and the fingerprint apply. The test
set is balanced and complete. Everything comes from fixed seeds; no global RNG is used.

Normalisation: per-channel mean and std on the [0, 1] scale, computed from the balanced
training pool (like the CIFAR constants, which come from the full training set), so they
do not depend on the imbalance factor or the split.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from glmc.data.datasets import DATASETS, DataConfig
from glmc.data.in_memory import InMemoryDataset, long_tailed_in_memory
from glmc.data.longtail import SPLITS, exponential_profile, long_tailed_indices

N_MAX = 500  # training pool images per class, the head class's count
TEST_PER_CLASS = 100
VAL_PER_CLASS = 50  # data.validation=held-out: from the pool images the long-tailed split leaves unused
IMAGE_SIZE = 32
SEED = 2023  # root of the train-pool and test streams
TRAIN_STREAM, TEST_STREAM = 0, 1

COLOURS = {  # RGB on the [0, 1] scale
    "red": (0.85, 0.20, 0.15),
    "green": (0.20, 0.75, 0.25),
    "blue": (0.15, 0.30, 0.85),
}
NOISE_STD = 0.25  # pixel noise on the [0, 1] scale
COLOUR_JITTER = 0.10
CONTRAST = (0.35, 0.75)  # range of the class pattern's opacity over the background
CLUTTER_RATIO = 0.8  # the clutter pattern's opacity is up to this fraction of the class pattern's
BACKGROUND = (0.15, 0.55)  # range of the grey background level
ORIENTATION_JITTER = np.deg2rad(15.0)  # symmetric, so a horizontal flip keeps every class's distribution

# pattern(rng, n, size) -> n x size x size float32 in [0, 1]
Pattern = Callable[[np.random.Generator, int, int], np.ndarray]


def _coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates, each 1 x H x W float32."""
    rows, columns = np.mgrid[0:size, 0:size].astype(np.float32)
    return rows[None], columns[None]


def _wave(rng: np.random.Generator, n: int, size: int, angle: float) -> np.ndarray:
    """A sinusoid along direction `angle` (+- jitter), random frequency and phase: n x H x W in [-1, 1]."""
    rows, columns = _coordinates(size)
    theta = angle + rng.uniform(-ORIENTATION_JITTER, ORIENTATION_JITTER, (n, 1, 1))
    cycles = rng.uniform(3.0, 5.0, (n, 1, 1))  # periods across the image
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1, 1)).astype(np.float32)  # a random translation
    step = (2 * np.pi * cycles / size).astype(np.float32)  # radians per pixel
    row_step, column_step = step * np.cos(theta).astype(np.float32), step * np.sin(theta).astype(np.float32)
    return np.sin(rows * row_step + columns * column_step + phase)  # n x H x W


def horizontal_stripes(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return 0.5 + 0.5 * _wave(rng, n, size, angle=0.0)


def vertical_stripes(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return 0.5 + 0.5 * _wave(rng, n, size, angle=np.pi / 2)


def checker(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return 0.5 + 0.5 * _wave(rng, n, size, angle=0.0) * _wave(rng, n, size, angle=np.pi / 2)


def rings(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Concentric rings around a random centre."""
    rows, columns = _coordinates(size)
    centre = rng.uniform(0.2 * size, 0.8 * size, (2, n, 1, 1)).astype(np.float32)
    radius = np.hypot(rows - centre[0], columns - centre[1])  # n x H x W
    step = (2 * np.pi * rng.uniform(3.0, 5.0, (n, 1, 1)) / size).astype(np.float32)  # radians per pixel
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    return 0.5 + 0.5 * np.sin(radius * step + phase)


def spots(rng: np.random.Generator, n: int, size: int, max_spots: int = 6) -> np.ndarray:
    """Three to six Gaussian spots at random places."""
    rows, columns = _coordinates(size)
    centres = rng.uniform(0.0, size, (2, n, max_spots, 1, 1)).astype(np.float32)
    sigma = rng.uniform(1.5, 3.0, (n, max_spots, 1, 1)).astype(np.float32)
    present = np.arange(max_spots)[None, :] < rng.integers(3, max_spots + 1, (n, 1))  # n x S
    # A 2-D Gaussian is the product of two 1-D ones: 2 x S x size exponentials instead of S x size^2.
    vertical = np.exp(-((rows[:, :, :1] - centres[0]) ** 2) / (2 * sigma**2))  # n x S x H x 1
    horizontal = np.exp(-((columns[:, :1, :] - centres[1]) ** 2) / (2 * sigma**2))  # n x S x 1 x W
    blobs = vertical * horizontal * present[:, :, None, None]  # n x S x H x W
    return np.minimum(blobs.sum(axis=1), 1.0).astype(np.float32)  # n x H x W


PATTERNS: dict[str, Pattern] = {
    "stripes-0deg": horizontal_stripes,
    "stripes-90deg": vertical_stripes,
    "checker": checker,
    "rings": rings,
    "spots": spots,
}


def class_definitions() -> list[tuple[str, str]]:
    """(pattern, colour) of each class: pattern i in colours i and i + 1 (mod 3)."""
    colours = list(COLOURS)
    return [
        (pattern, colours[(i + shift) % len(colours)]) for i, pattern in enumerate(PATTERNS) for shift in (0, 1)
    ]


def class_names() -> list[str]:
    return [f"{pattern}-{colour}" for pattern, colour in class_definitions()]


def paint_layer(classes: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each image's pattern and jittered colour, drawn for its class.

    classes: N -> (N x H x W float32 in [0, 1], N x 3 x 1 x 1 float32 RGB).
    """
    patterns = np.empty((len(classes), size, size), dtype=np.float32)
    colours = np.empty((len(classes), 3), dtype=np.float32)
    for k, (pattern_name, colour_name) in enumerate(class_definitions()):
        where = np.flatnonzero(classes == k)
        patterns[where] = PATTERNS[pattern_name](rng, len(where), size)  # n_k x H x W
        colours[where] = COLOURS[colour_name]
    colours += rng.normal(0.0, COLOUR_JITTER, colours.shape).astype(np.float32)
    return patterns, colours[:, :, None, None]


def generate_images(labels: np.ndarray, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """Images of the given classes, in the order of `labels`: N -> N x 3 x H x W uint8.

    Each image is a grey background, a fainter clutter pattern of a random class over it
    (opacity at most `CLUTTER_RATIO` of the class pattern's), the class pattern on top, and
    pixel noise.
    """
    n = len(labels)
    main, main_colour = paint_layer(labels, rng, size)  # N x H x W, N x 3 x 1 x 1
    clutter_classes = rng.integers(0, len(class_definitions()), n)
    clutter, clutter_colour = paint_layer(clutter_classes, rng, size)
    contrast = rng.uniform(*CONTRAST, (n, 1, 1)).astype(np.float32)
    clutter_contrast = contrast * rng.uniform(0.0, CLUTTER_RATIO, (n, 1, 1)).astype(np.float32)
    main_alpha = (contrast * main)[:, None]  # N x 1 x H x W
    clutter_alpha = (clutter_contrast * clutter)[:, None]
    background = rng.uniform(*BACKGROUND, (n, 1, 1, 1)).astype(np.float32)
    # Alpha compositing, back to front, keeps every pixel in [0, 1] before the noise;
    # written in place, since this pass over N x 3 x H x W floats dominates the build time.
    image = clutter_alpha * (clutter_colour - background)  # N x 3 x H x W
    image += background
    image += main_alpha * (main_colour - image)
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= np.float32(NOISE_STD)
    image += noise
    image *= np.float32(255.0)
    return np.clip(np.rint(image, out=image), 0, 255, out=image).astype(np.uint8)


def interleaved_labels(num_classes: int, per_class: int) -> np.ndarray:
    """0, 1, ..., K-1, 0, 1, ...: `per_class` of each class, N int64.

    A fixed order without an RNG, so split indices (and fingerprints) can never drift
    with numpy's generator streams; the split protocols shuffle within each class anyway.
    """
    return np.tile(np.arange(num_classes, dtype=np.int64), per_class)


def generate_split(per_class: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """A balanced set drawn from the fixed seed's `stream`: (N x 3 x H x W uint8, N int64), the caller's own copy."""
    images, labels = _generated_split(per_class, stream)
    return images.copy(), labels.copy()


@functools.lru_cache(maxsize=4)
def _generated_split(per_class: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    # Generated once a process: the same seeds give the same images, and a process that builds the dataset
    # again (a resumed run, glmc tune's trials, the tests) would otherwise spend a second on each pool.
    labels = interleaved_labels(len(class_definitions()), per_class)
    return generate_images(labels, np.random.default_rng([SEED, stream])), labels


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale of N x C x H x W uint8 images."""
    levels = np.arange(256) / 255.0
    by_channel = images.transpose(1, 0, 2, 3).reshape(images.shape[1], -1)  # C x N*H*W uint8
    means, stds = [], []
    for pixels in by_channel:
        # A histogram of the 256 levels gives exact moments without a float copy of the images.
        frequency = np.bincount(pixels, minlength=256) / pixels.size
        mean = float(frequency @ levels)
        means.append(mean)
        stds.append(float(np.sqrt(frequency @ (levels - mean) ** 2)))
    return tuple(means), tuple(stds)


@DATASETS.register("synthetic-lt")
def synthetic_lt(config: DataConfig) -> InMemoryDataset:
    """Generated 10-class LT set: profile from 500 per class, 100 test images per class.

    `config.data_root` and `config.download` are not used.
    """
    names = class_names()
    counts = exponential_profile(N_MAX, len(names), config.imbalance_factor)
    SPLITS.get(config.split)  # an unknown protocol fails before generating
    pool_images, pool_labels = generate_split(N_MAX, TRAIN_STREAM)
    test_images, test_labels = generate_split(TEST_PER_CLASS, TEST_STREAM)
    indices = long_tailed_indices(pool_labels, counts, config.split)
    mean, std = channel_stats(pool_images)
    return long_tailed_in_memory("synthetic-lt", config, names, (pool_images, pool_labels), indices,
                                 (test_images, test_labels), mean, std, VAL_PER_CLASS)
