"""Class probabilities for new images from a checkpoint: `glmc predict CKPT IMAGE_OR_FOLDER...`.

Preprocessing is the checkpoint's own test-time view: decode with Pillow, convert to RGB
(grayscale, RGBA and palette images included); for models trained on image files, resize the
shorter side and take the centre crop, as their test set was; for the others (CIFAR) resize
the whole image to the training resolution (no crop; images already at that size are left
untouched); normalise with the training set's per-channel mean and std. Checkpoints store mean, std and image size; for
older ones that lack them the dataset is rebuilt from the stored config to recover them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from glmc.augment import Normalise
from glmc.checkpoint import load_checkpoint
from glmc.data.files import DECODE_ERRORS, UnreadableImage, centre_view, decode_rgb
from glmc.data.images import IMAGE_SUFFIXES  # what a folder is searched for (case-insensitive)
from glmc.devices import resolve_device
from glmc.errors import GlmcError
from glmc.evaluation import checkpoint_config, checkpoint_dataset, checkpoint_eval_precision, restore_model
from glmc.precision import predict_logits


@dataclass(frozen=True)
class Preprocessing:
    """The checkpoint's test-time view of an image."""

    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    image_size: tuple[int, int]  # height, width of the training images
    test_resize: int | None = None  # shorter side before the centre crop (models trained on image files)


@dataclass(frozen=True)
class Prediction:
    """The `k` most probable classes of one image, most probable first."""

    path: str
    classes: list[str]
    indices: list[int]
    probabilities: list[float]

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "top": [{"class": name, "index": index, "probability": round(p, 6)}
                    for name, index, p in zip(self.classes, self.indices, self.probabilities)],
        }

    def render(self) -> str:
        return "  ".join([self.path] + [f"{name} {p:.3f}" for name, p in zip(self.classes, self.probabilities)])


def checkpoint_preprocessing(checkpoint: dict, path: str | os.PathLike, data_root: str | None = None) -> Preprocessing:
    """Mean, std and image size stored in the checkpoint, else recovered by rebuilding its dataset."""
    if all(key in checkpoint for key in ("mean", "std", "image_size")):
        return Preprocessing(tuple(checkpoint["mean"]), tuple(checkpoint["std"]), tuple(checkpoint["image_size"]),
                             checkpoint.get("test_resize"))
    config = checkpoint_config(checkpoint, data_root)
    try:
        dataset = checkpoint_dataset(checkpoint, path, config)
    except GlmcError as error:
        raise GlmcError(f"{path} predates stored preprocessing and its dataset cannot be rebuilt to recover it "
                        f"(pass --data-root): {error}") from None
    return Preprocessing(tuple(dataset.mean), tuple(dataset.std), dataset.input_size(config.data))


class Predictor:
    """A checkpoint's model, class names and preprocessing, ready to classify image files."""

    def __init__(self, checkpoint_path: str | os.PathLike, device: str = "auto", data_root: str | None = None) -> None:
        checkpoint = load_checkpoint(checkpoint_path)
        self.preprocessing = checkpoint_preprocessing(checkpoint, checkpoint_path, data_root)
        self.class_names: list[str] = list(checkpoint["class_names"])
        self.device = resolve_device(device)
        self.model: nn.Module = restore_model(checkpoint, checkpoint_path, self.device)
        self.precision = checkpoint_eval_precision(checkpoint, self.device)
        self.normalise = Normalise(self.preprocessing.mean, self.preprocessing.std)

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> torch.Tensor:
        """images: N x 3 x H x W uint8 -> N x K class probabilities (float32, on the CPU)."""
        inputs = self.normalise(torch.from_numpy(images).to(self.device))  # N x 3 x H x W float
        return predict_logits(self.model, inputs, self.precision).softmax(dim=1).cpu()

    def predict(self, paths: Sequence[Path], topk: int) -> list[Prediction]:
        """The `topk` most probable classes of each image in one batch."""
        images = np.stack([read_image(path, self.preprocessing.image_size, self.preprocessing.test_resize)
                           for path in paths])  # N x 3 x H x W
        top = self.probabilities(images).topk(min(topk, len(self.class_names)), dim=1)
        return [
            Prediction(str(path), [self.class_names[i] for i in indices], indices, probabilities)
            for path, indices, probabilities in zip(paths, top.indices.tolist(), top.values.tolist())
        ]


def image_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The files named, and the PNG/JPEG files under each folder named (recursively, sorted)."""
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise GlmcError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise GlmcError(f"no such image file or folder: {path}")
    return files


def check_readable(paths: Iterable[Path]) -> None:
    """Fail on the first file Pillow cannot identify, before any prediction is printed (headers only)."""
    for path in paths:
        try:
            Image.open(path).close()  # reads and checks the header only
        except DECODE_ERRORS as error:
            raise GlmcError(f"cannot read image {path}: {decode_reason(error)}") from None


def read_image(path: Path, size: tuple[int, int], test_resize: int | None = None) -> np.ndarray:
    """Decode `path` as RGB at `size` (height, width): 3 x H x W uint8. With `test_resize`, the
    shorter side is resized to it and the centre cut out; else the whole image is resized."""
    height, width = size
    try:
        rgb = decode_rgb(str(path))
    except UnreadableImage as error:
        raise GlmcError(f"cannot read image {path}: {error}") from None
    if test_resize is not None:
        pixels = centre_view(rgb, height, test_resize)  # H x W x 3
    else:
        if rgb.size != (width, height):
            rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(rgb, dtype=np.uint8)  # H x W x 3
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # 3 x H x W


def decode_reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def predict_files(
    predictor: Predictor, inputs: Iterable[str | os.PathLike], topk: int = 5, batch_size: int = 256
) -> Iterator[Prediction]:
    """Predictions for every image named or found under a folder named, in order, `batch_size` at a time."""
    if topk < 1:
        raise GlmcError(f"--topk must be at least 1, got {topk}")
    if batch_size < 1:
        raise GlmcError(f"--batch-size must be at least 1, got {batch_size}")
    paths = image_files(inputs)
    check_readable(paths)
    for start in range(0, len(paths), batch_size):
        yield from predictor.predict(paths[start : start + batch_size], topk)
