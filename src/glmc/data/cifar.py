"""CIFAR-10 / CIFAR-100 in the standard python pickle layout.

Reads the official files (`cifar-10-batches-py/`, `cifar-100-python/`) and copies written
by other tools: keys may be bytes or str, `data` may be N x 3072 or N x 3 x 32 x 32.
Pickles are read with an unpickler that only rebuilds numpy arrays, so a hostile file
cannot run code. Every problem is a one-line `DataError`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from glmc.errors import DataError

IMAGE_SHAPE = (3, 32, 32)  # C x H x W, the row order of the official files


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files and how it names its keys."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    archive_url: str
    archive_md5: str
    archive_mb: int


CIFAR10 = CifarLayout(
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{k}" for k in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    num_classes=10,
    archive_url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    archive_mb=163,
)

CIFAR100 = CifarLayout(
    title="CIFAR-100",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    num_classes=100,
    archive_url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    archive_mb=161,
)


@dataclass(frozen=True)
class ImageSet:
    """Labelled images in memory."""

    images: np.ndarray  # N x 3 x 32 x 32, uint8
    labels: np.ndarray  # N, int64


@dataclass(frozen=True)
class CifarData:
    train: ImageSet
    test: ImageSet
    class_names: list[str]


def load_cifar(layout: CifarLayout, data_root: str | os.PathLike, download: bool = False) -> CifarData:
    """Read a CIFAR folder under `data_root`, fetching the official archive first if asked."""
    folder = Path(data_root) / layout.folder
    if download and not _missing_files(layout, folder):
        download = False
    if download:
        download_cifar(layout, data_root)
    _check_complete(layout, folder)
    class_names = _read_class_names(layout, folder)
    train = _read_split(layout, folder, layout.train_files)
    _check_every_class_present(train.labels, class_names, folder)
    return CifarData(train=train, test=_read_split(layout, folder, layout.test_files), class_names=class_names)


def _check_every_class_present(labels: np.ndarray, class_names: list[str], folder: Path) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        names = ", ".join(f"{k} ({class_names[k]})" for k in empty[:5])
        raise DataError(f"{folder}: {empty.size} classes have no training images: {names}")


def _missing_files(layout: CifarLayout, folder: Path) -> list[str]:
    names = (*layout.train_files, *layout.test_files, layout.meta_file)
    return [name for name in names if not (folder / name).is_file()]


def _check_complete(layout: CifarLayout, folder: Path) -> None:
    how = (
        f"pass --download to fetch the official archive ({layout.archive_mb} MB), or point "
        f"--data-root at the folder that holds {layout.folder}/"
    )
    if not folder.is_dir():
        raise DataError(f"{layout.title} not found: looked for {folder}; {how}")
    missing = _missing_files(layout, folder)
    if missing:
        raise DataError(f"{layout.title} folder {folder} is incomplete (missing {', '.join(missing)}); {how}")


def _read_class_names(layout: CifarLayout, folder: Path) -> list[str]:
    path = folder / layout.meta_file
    names = _require_key(_read_pickle(path), layout.names_key, path)
    names = [_as_str(name) for name in names]
    if len(names) != layout.num_classes:
        raise DataError(f"{path}: expected {layout.num_classes} class names, found {len(names)}")
    return names


def _read_split(layout: CifarLayout, folder: Path, files: tuple[str, ...]) -> ImageSet:
    parts = [_read_batch(layout, folder / name) for name in files]
    return ImageSet(
        images=np.concatenate([p.images for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
    )


def _read_batch(layout: CifarLayout, path: Path) -> ImageSet:
    entry = _read_pickle(path)
    labels = _as_labels(_require_key(entry, layout.label_key, path), layout.num_classes, path)
    images = _as_images(_require_key(entry, "data", path), len(labels), path)
    return ImageSet(images=images, labels=labels)


def _as_labels(raw: object, num_classes: int, path: Path) -> np.ndarray:
    try:
        labels = np.asarray(raw)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: labels are not a list of integers ({error})") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be a 1-D list of integers, got shape {labels.shape}, dtype {labels.dtype}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DataError(f"{path}: {bad.size} labels outside [0, {num_classes}), e.g. {int(bad[0])}")
    return labels.astype(np.int64)


def _as_images(raw: object, count: int, path: Path) -> np.ndarray:
    if not isinstance(raw, np.ndarray):
        raise DataError(f"{path}: 'data' is a {type(raw).__name__}, expected a numpy uint8 array")
    pixels = int(np.prod(IMAGE_SHAPE))
    if raw.dtype != np.uint8:
        raise DataError(f"{path}: 'data' has dtype {raw.dtype}, expected uint8")
    if raw.shape not in ((count, pixels), (count, *IMAGE_SHAPE)):
        raise DataError(
            f"{path}: 'data' has shape {raw.shape}, expected ({count}, {pixels}) or ({count}, 3, 32, 32) "
            f"for {count} labels"
        )
    return np.ascontiguousarray(raw.reshape(count, *IMAGE_SHAPE))


def _require_key(entry: dict, key: str, path: Path) -> object:
    if key not in entry:
        raise DataError(f"{path}: no {key!r} entry (found keys: {', '.join(sorted(entry))})")
    return entry[key]


def _as_str(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists and numpy arrays; refuses any other global (no code runs)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        # numpy 2 renamed numpy.core to numpy._core; the official files use the old name.
        return super().find_class(module.replace("numpy.core", "numpy._core", 1), name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            entry = _ArrayUnpickler(file, encoding="bytes").load()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    except Exception as error:  # truncated, garbage or hostile: all unreadable alike
        raise DataError(f"{path} is not a readable CIFAR pickle ({type(error).__name__}: {error})") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path} holds a {type(entry).__name__}, expected a dict")
    return {_as_str(key): value for key, value in entry.items()}


def download_cifar(layout: CifarLayout, data_root: str | os.PathLike, url: str | None = None, md5: str | None = None) -> Path:
    """Fetch the official archive, check its MD5 and extract it into `data_root`.

    `url` and `md5` default to the official ones; tests pass a local `file://` archive.
    """
    url = url or layout.archive_url
    md5 = md5 or layout.archive_md5
    root = Path(data_root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as scratch:
        archive = Path(scratch) / "archive.tar.gz"
        _fetch(url, archive, layout)
        digest = _md5(archive)
        if digest != md5:
            raise DataError(f"downloaded {url} has MD5 {digest}, expected {md5}; the file is corrupt, try again")
        _extract(archive, Path(scratch) / "extracted", layout)
        target = root / layout.folder
        if target.exists():
            shutil.rmtree(target)
        os.replace(Path(scratch) / "extracted" / layout.folder, target)
    return target


def _fetch(url: str, destination: Path, layout: CifarLayout) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {layout.title}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(
            f"could not download {url} ({reason}); if this machine is offline, fetch the archive "
            f"elsewhere and extract it so that {layout.folder}/ sits inside --data-root"
        ) from None


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(archive: Path, destination: Path, layout: CifarLayout) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in parts:
                raise DataError(f"archive member {member.name!r} is not a plain file inside the archive; refusing it")
        # The "data" filter (Python >= 3.11.4) also refuses links and special files.
        options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(destination, **options)
    if not (destination / layout.folder).is_dir():
        raise DataError(f"the archive does not contain {layout.folder}/")
