"""Datasets of image files: `path label` lists and class folders.

- `image-list`: `data_root` holds the images; `data.train_list` and `data.test_list` (and
  optionally `data.val_list`) are text files of `relative/path.jpg label` lines, the format
  in which ImageNet-LT, Places-LT and iNaturalist 2018 are distributed. `imagenet-lt`,
  `inat2018` and `places-lt` are the same reader with those datasets' file names and class
  counts as defaults.
- `folder`: `data_root/train/<class>/<image>` and `data_root/test/<class>/<image>`, the
  layout most users have; classes in sorted folder-name order.

Images are only listed here and checked to exist; decoding happens in the loader's worker
processes (glmc.data.files). The training set is used as listed or, with
`data.long_tailed_subset`, subsampled by the CIFAR benchmarks' exponential profile and split
protocol, from `n_max` = the smallest class's count.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch

from glmc.augment import ImageNetColour, Normalise
from glmc.data.batch import BatchSpec
from glmc.data.datasets import DATASETS, DataConfig, Dataset
from glmc.data.files import FileTestSet, FileTwoStreamLoader, ImageFiles
from glmc.data.longtail import exponential_profile, long_tailed_indices
from glmc.data.validation import stratified_hold_out, validation_card
from glmc.distributed import SINGLE, Shard
from glmc.errors import ConfigError, DataError, GlmcError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AS_LISTED = "as-listed"  # the split name of a training set used whole


@dataclass(frozen=True)
class ImageFileDataset(Dataset):
    """A training set of image files, its test set and, optionally, a validation set."""

    from_files: ClassVar[bool] = True

    name: str
    split: str  # the protocol of the long-tailed subset, or "as-listed"
    imbalance_factor: float  # of the training set: largest / smallest class count
    class_names: list[str]
    train: ImageFiles
    train_indices: np.ndarray  # N, positions in the training list or folder scan
    test: ImageFiles
    val: ImageFiles | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_kind: str | None = None  # what `val` is when runs evaluate it (data.validation=held-out), else None

    @property
    def train_labels(self) -> np.ndarray:
        return self.train.labels

    @property
    def test_labels(self) -> np.ndarray:
        return self.test.labels

    @property
    def fingerprint(self) -> str:
        """`sha256:<hex>` over the sorted `path<TAB>label` lines of the training set."""
        return files_fingerprint(self.train)

    def validation_card(self) -> dict | None:
        if self.val_kind is None:
            return None
        return validation_card(self.val_kind, self.val.labels, self.num_classes, files_fingerprint(self.val))

    def train_loader(self, config: DataConfig, batch_size: int, device: torch.device, sampler: str = "power",
                     resample_weighting: float = 0.0, seed: int = 0, drop_last: bool = False, shard: Shard = SINGLE,
                     spec: BatchSpec = BatchSpec()) -> FileTwoStreamLoader:
        if config.autoaugment != "none" or config.cutout:
            raise ConfigError(f"data.autoaugment and data.cutout apply to datasets held in memory (CIFAR-LT, synthetic-lt); "
                              f"{self.name} is read from image files")
        colour = ImageNetColour(Normalise(self.mean, self.std), config.image_size)
        return FileTwoStreamLoader(self.train, self.class_counts, batch_size, device, colour, image_size=config.image_size,
                                   sampler=sampler, resample_weighting=resample_weighting, seed=seed, drop_last=drop_last,
                                   workers=config.workers, unreadable=config.unreadable, shard=shard, spec=spec)

    def test_set(self, config: DataConfig, batch_size: int, device: torch.device, shard: Shard = SINGLE,
                 part: str = "test") -> FileTestSet:
        files = {"test": self.test, "val": self.val, "train": self.train}[part]
        if files is None:
            raise GlmcError(f"dataset {self.name} has no validation set (set data.val_list, or a val/ folder)")
        return FileTestSet(files, Normalise(self.mean, self.std), batch_size, device, image_size=config.image_size,
                           resize=config.resize, workers=config.workers, unreadable=config.unreadable, shard=shard)

    def input_size(self, config: DataConfig) -> tuple[int, int]:
        return config.image_size, config.image_size

    def content_digest(self) -> dict[str, str]:
        """SHA-256 of every file's path, size and modification time: cheap for 100K files, and a re-synced
        or re-encoded image changes it (reading every byte would take minutes)."""
        return {"train": files_digest(self.train), "test": files_digest(self.test)}

    def test_resize(self, config: DataConfig) -> int:
        return config.resize


def files_fingerprint(files: ImageFiles) -> str:
    lines = sorted(f"{path}\t{label}\n" for path, label in zip(files.paths, files.labels.tolist()))
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def files_digest(files: ImageFiles) -> str:
    digest = hashlib.sha256()
    for path in sorted(files.paths):
        try:
            stat = os.stat(os.path.join(files.root, path))
        except OSError:
            digest.update(f"{path}\tmissing\n".encode())
            continue
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return "sha256:" + digest.hexdigest()


# ---------------------------------------------------------------- list files


def read_image_list(list_file: Path, root: Path, num_classes: int | None = None) -> ImageFiles:
    """The `relative/path label` lines of `list_file`; every file must exist under `root`.

    Labels must lie in [0, num_classes); with `num_classes` None, in [0, largest label].
    """
    if not list_file.is_file():
        raise DataError(f"image list not found: {list_file}")
    paths, labels, numbers = [], [], []
    try:
        with open(list_file, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2:
                    raise DataError(f"{list_file}, line {number}: expected 2 columns `relative/path label`, found "
                                    f"{len(fields)} (paths with spaces are not supported in lists; use the folder layout)")
                path, label = fields
                try:
                    labels.append(int(label))
                except ValueError:
                    raise DataError(f"{list_file}, line {number}: label {label!r} is not an integer") from None
                paths.append(path)
                numbers.append(number)
    except UnicodeDecodeError:
        raise DataError(f"{list_file} is not a UTF-8 text file of `relative/path label` lines") from None
    if not paths:
        raise DataError(f"{list_file} lists no images")
    label_array = np.asarray(labels, dtype=np.int64)
    upper = num_classes if num_classes is not None else int(label_array.max()) + 1
    for number, path, label in zip(numbers, paths, labels):
        if not 0 <= label < upper:
            raise DataError(f"{list_file}, line {number}: label {label} is outside [0, {upper})")
        if not os.path.isfile(os.path.join(root, path)):
            raise DataError(f"{list_file}, line {number}: image {root / path} does not exist")
    return ImageFiles(str(root), paths, label_array)


def class_names_from_folders(files: ImageFiles, num_classes: int) -> list[str]:
    """Each class's parent-folder name (ImageNet's wnids, Places' scene names) when that names
    the classes one to one; else the class ids as strings."""
    parents: list[set[str]] = [set() for _ in range(num_classes)]
    for path, label in zip(files.paths, files.labels.tolist()):
        parents[label].add(Path(path).parent.name)
    names = [next(iter(found)) if len(found) == 1 else "" for found in parents]
    if all(names) and len(set(names)) == num_classes:
        return names
    return [str(k) for k in range(num_classes)]


def require_every_class(files: ImageFiles, num_classes: int, where: Path) -> None:
    counts = np.bincount(files.labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise DataError(f"{where}: {len(empty)} of {num_classes} classes have no training images ({shown}); "
                        "labels must run from 0 to the number of classes - 1")


# ---------------------------------------------------------------- class folders


def scan_class_folders(folder: Path, known: list[str] | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """Class names, image paths (relative to folder's parent) and labels of `folder/<class>/...`.

    With `known` classes (the training set's), every class folder must be one of them.
    """
    if not folder.is_dir():
        raise DataError(f"no folder {folder}: the folder dataset needs {folder.parent}/train/<class>/<image> "
                        f"and {folder.parent}/test/<class>/<image>")
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} holds no class folders (expected {folder}/<class>/<image>)")
    names = known if known is not None else classes
    index = {name: k for k, name in enumerate(names)}
    paths, labels = [], []
    for name in classes:
        if name not in index:
            raise DataError(f"{folder / name} is not a class of the training set ({len(names)} classes in "
                            f"{folder.parent / 'train'})")
        images = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DataError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        paths.extend(str(p.relative_to(folder.parent)) for p in images)
        labels.extend([index[name]] * len(images))
    return names, paths, np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------- the long-tailed subset


def training_subset(files: ImageFiles, num_classes: int, config: DataConfig) -> tuple[ImageFiles, np.ndarray, str, float]:
    """The training files, their positions, the split name and the imbalance factor."""
    counts = np.bincount(files.labels, minlength=num_classes)
    if not config.long_tailed_subset:
        return files, np.arange(len(files)), AS_LISTED, float(counts.max() / counts.min())
    n_max = int(counts.min())
    profile = exponential_profile(n_max, num_classes, config.imbalance_factor)
    if min(profile) == 0:
        raise DataError(f"the smallest class has {n_max} images: too few for a long-tailed subset with imbalance "
                        f"factor {config.imbalance_factor:g} (its rarest class would get none)")
    indices = long_tailed_indices(files.labels, profile, config.split)
    return files.subset(indices), indices, config.split, float(config.imbalance_factor)


def with_validation(config: DataConfig, train: ImageFiles, indices: np.ndarray, val: ImageFiles | None,
                    own: str) -> tuple[ImageFiles, np.ndarray, ImageFiles | None, str | None]:
    """The training files and positions, the validation files and what they are, for `config.validation`:
    with `held-out`, the dataset's own validation set (`own` says which) or a stratified hold-out of the training files."""
    if config.validation != "held-out":
        return train, indices, val, None
    if val is not None:
        return train, indices, val, own
    kept, held = stratified_hold_out(train.labels, config.val_fraction)
    return (train.subset(kept), indices[kept], train.subset(held),
            f"held out of the training images, stratified ({config.val_fraction:g} of each class)")


# ---------------------------------------------------------------- the registered datasets


@dataclass(frozen=True)
class ListDefaults:
    """A list-distributed dataset's standard file names and class count."""

    train: str = ""
    val: str = ""
    test: str = ""
    num_classes: int | None = None


def list_path(root: Path, configured: str, default: str) -> Path | None:
    name = configured or default
    return None if not name else (Path(name) if os.path.isabs(name) else root / name)


def _image_list_dataset(name: str, defaults: ListDefaults, description: str) -> Callable[[DataConfig], ImageFileDataset]:
    def build(config: DataConfig) -> ImageFileDataset:
        root = Path(config.data_root)
        train_list = list_path(root, config.train_list, defaults.train)
        test_list = list_path(root, config.test_list, defaults.test)
        if train_list is None or test_list is None:
            raise DataError(f"the {name} dataset needs data.train_list and data.test_list "
                            "(text files of `relative/path label` lines)")
        if not root.is_dir():
            raise DataError(f"data root {root} is not a folder (it should hold the images the lists name)")
        train = read_image_list(train_list, root, defaults.num_classes)
        num_classes = defaults.num_classes or int(train.labels.max()) + 1
        require_every_class(train, num_classes, train_list)
        test = read_image_list(test_list, root, num_classes)
        val_list = list_path(root, config.val_list, defaults.val)
        use_val = val_list is not None and (bool(config.val_list) or val_list.is_file())  # a default list is optional
        val = read_image_list(val_list, root, num_classes) if use_val else None
        class_names = class_names_from_folders(train, num_classes)
        subset, indices, split, imbalance = training_subset(train, num_classes, config)
        subset, indices, val, val_kind = with_validation(config, subset, indices, val, f"the validation list {val_list}")
        return ImageFileDataset(name, split, imbalance, class_names, subset, indices, test, val, IMAGENET_MEAN, IMAGENET_STD,
                                val_kind)

    build.__doc__ = description
    return DATASETS.register(name)(build)


image_list = _image_list_dataset("image-list", ListDefaults(), "Your own `relative/path label` lists (data.train_list, data.test_list).")
imagenet_lt = _image_list_dataset(
    "imagenet-lt", ListDefaults("ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt", 1000),
    "ImageNet-LT (Liu et al. 2019): 1000 classes, 115.8K training images, balanced 50K test set.")
inat2018 = _image_list_dataset(
    "inat2018", ListDefaults("iNaturalist18_train.txt", "", "iNaturalist18_val.txt", 8142),
    "iNaturalist 2018: 8142 classes, 437.5K training images; tested on its 24.4K validation set, as every paper does.")
places_lt = _image_list_dataset(
    "places-lt", ListDefaults("Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt", 365),
    "Places-LT (Liu et al. 2019): 365 classes, 62.5K training images, balanced 36.5K test set.")


@DATASETS.register("folder")
def folder_dataset(config: DataConfig) -> ImageFileDataset:
    """Your own class folders: data_root/train/<class>/<image> and data_root/test/<class>/<image>."""
    root = Path(config.data_root)
    class_names, train_paths, train_labels = scan_class_folders(root / "train")
    _, test_paths, test_labels = scan_class_folders(root / "test", known=class_names)
    train = ImageFiles(str(root), train_paths, train_labels)
    test = ImageFiles(str(root), test_paths, test_labels)
    val = None
    if (root / "val").is_dir():
        _, val_paths, val_labels = scan_class_folders(root / "val", known=class_names)
        val = ImageFiles(str(root), val_paths, val_labels)
    subset, indices, split, imbalance = training_subset(train, len(class_names), config)
    subset, indices, val, val_kind = with_validation(config, subset, indices, val, f"the folder {root / 'val'}")
    return ImageFileDataset("folder", split, imbalance, class_names, subset, indices, test, val, IMAGENET_MEAN, IMAGENET_STD,
                            val_kind)
