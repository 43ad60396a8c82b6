"""Checkpoints: what a training checkpoint holds, written atomically with a checksum, read with `weights_only=True`.

A checkpoint is a dict of tensors and plain values (the resolved config included), so it
loads without unpickling arbitrary objects; a file that would run code is refused.
`training_payload` makes one and `restore_training` puts one back into a run's model and
optimiser; the run folder (glmc.rundir) names the files.

Writing never leaves a half-written file under the checkpoint's name: the bytes go to a
temporary file that is flushed to disk and then renamed. With `keep_previous`, the file it
replaces stays as `<name>.prev`, so a checkpoint damaged later (a truncated copy, a flipped
bit: the SHA-256 in `<name>.sha256` tells) still leaves a good one to resume from. The
`.prev` is a hard link made before the new file takes the name, so the name never goes
missing, even for a moment, to a reader or a crash.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import sys
from pathlib import Path

import torch
from torch import nn

from glmc.config import Config
from glmc.data.datasets import Dataset
from glmc.errors import GlmcError
from glmc.files import link_or_move, sync_folder, write_durably
from glmc.weights import load_weights

FORMAT = "glmc-checkpoint/1"


class CorruptCheckpoint(GlmcError):
    """A checkpoint file that is truncated, altered or not a checkpoint at all."""


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def previous_path(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def saved_files(path: Path) -> tuple[Path, ...]:
    """Every file a save of `path` can leave: the file, its checksum, and both kept as `.prev`."""
    return path, checksum_path(path), previous_path(path), checksum_path(previous_path(path))


def save_checkpoint(path: str | os.PathLike, payload: dict, keep_previous: bool = False) -> None:
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    data = buffer.getvalue()
    written: list[Path] = []
    try:
        written.append(write_durably(path, data))
        written.append(write_durably(checksum_path(path), hashlib.sha256(data).hexdigest().encode()))
        if keep_previous and path.exists():
            keep_as_previous(path)
        # Back to back, so that the checkpoint and its checksum disagree for as short a time as can be.
        os.replace(written[0], path)
        os.replace(written[1], checksum_path(path))
        sync_folder(path.parent)
    except OSError as error:
        for temporary in written:
            temporary.unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise GlmcError(f"disk full while saving {path}; the previous checkpoint is kept") from None
        raise GlmcError(f"cannot save {path}: {error.strerror or error}") from None


def keep_as_previous(path: Path) -> None:
    """Make `<name>.prev` and its checksum the checkpoint now at `path`, which stays in place
    meanwhile: a reader, or a resume after a crash, never finds `path` missing."""
    current_file, current_checksum, previous_file, previous_checksum = saved_files(path)
    for current, previous in ((current_file, previous_file), (current_checksum, previous_checksum)):
        if current.exists():
            link_or_move(current, previous)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint, or the compact weights `glmc export` writes (`.safetensors`: no optimiser or run state)."""
    path = Path(path)
    if not path.is_file():
        raise GlmcError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_weights(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # gone between the check and the read (moved aside where there are no hard links)
        raise GlmcError(f"checkpoint not found: {path}") from None
    if checksum_path(path).is_file():
        expected = checksum_path(path).read_text().strip()
        if hashlib.sha256(data).hexdigest() != expected:
            raise CorruptCheckpoint(f"{path} does not match its SHA-256 ({checksum_path(path).name}): the file is damaged")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unsafe content"
        raise GlmcError(f"refusing to load {path}: not a plain-weights checkpoint ({first_line})") from None
    except Exception as error:  # truncated or not a torch file
        raise CorruptCheckpoint(f"cannot read checkpoint {path}: {type(error).__name__}: {str(error)[:120]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CorruptCheckpoint(f"{path} is not a glmc checkpoint")
    return payload


def checkpoint_classifier(checkpoint: dict) -> str:
    """The prediction head a checkpoint's model was built with (checkpoints from before the
    option existed hold a linear one)."""
    return checkpoint["config"].get("model", {}).get("classifier", "linear")


def load_latest_good(path: Path) -> dict:
    """The checkpoint at `path`, or its previous version (with a warning) if it is damaged or gone."""
    previous = previous_path(path)
    try:
        return load_checkpoint(path)
    except CorruptCheckpoint as damage:
        if not previous.is_file():
            raise
        warn(f"{damage}; using the previous checkpoint {previous.name}")
    except GlmcError:
        if path.exists() or not previous.is_file():
            raise
        warn(f"{path.name} is missing (a crash while it was replaced); using {previous.name}")
    return load_checkpoint(previous)


def warn(message: str) -> None:
    print(f"glmc: warning: {message}", file=sys.stderr, flush=True)


def training_payload(kind: str, config: Config, dataset: Dataset, model: nn.Module,
                     optimizer: torch.optim.Optimizer, state: dict, data_digest: dict[str, str]) -> dict:
    """Everything a run needs to continue, and `glmc eval` / `predict` to use the weights alone."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "kind": kind,
        "config": config.to_dict(),
        "backbone": config.model.backbone,
        "num_classes": dataset.num_classes,
        "class_names": dataset.class_names,
        "class_counts": dataset.class_counts,
        "fingerprint": dataset.fingerprint,
        "mean": list(dataset.mean),  # test-time preprocessing, so `glmc predict` needs no dataset
        "std": list(dataset.std),
        "image_size": list(dataset.input_size(config.data)),  # height, width
        "test_resize": dataset.test_resize(config.data),  # shorter side before the centre crop, or None
        "data_digest": data_digest,  # what the images held: resume refuses changed data
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": state,
        "rng": rng,
    }


def restore_training(path: Path, config: Config, dataset: Dataset, model: nn.Module,
                     optimizer: torch.optim.Optimizer, data_digest: dict[str, str]) -> dict:
    """Load the last good checkpoint at `path` into `model` and `optimizer` and the RNG; returns its run state.

    Refuses a checkpoint of another model, class count, classifier or split, and data that changed
    behind the same split (`data_digest`: what `dataset.content_digest()` says now).
    """
    checkpoint = load_latest_good(path)
    check_compatible(checkpoint, config.model.backbone, config.model.classifier, dataset.num_classes, path)
    if checkpoint["fingerprint"] != dataset.fingerprint:
        raise GlmcError(f"{path} was trained on split {checkpoint['fingerprint']}, this config selects {dataset.fingerprint}")
    check_same_data(checkpoint.get("data_digest"), data_digest, path)  # checkpoints before the digest have none
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    return checkpoint["state"]


def check_same_data(held: dict | None, now: dict[str, str], path: Path) -> None:
    for part, name in (("train", "training"), ("test", "test")):
        if held is not None and held.get(part) != now.get(part):
            raise GlmcError(f"the {name} images changed since {path} was written (content digest {str(held.get(part))[:19]}… "
                            f"now {now.get(part, '')[:19]}…): the same split over other pixels or files; resume refuses it")


def check_compatible(checkpoint: dict, backbone: str, classifier: str, num_classes: int, path: Path) -> None:
    held = (checkpoint["backbone"], checkpoint["num_classes"], checkpoint_classifier(checkpoint))
    if held != (backbone, num_classes, classifier):
        raise GlmcError(
            f"{path} holds a {held[0]} with {held[1]} classes ({held[2]} classifier), "
            f"not a {backbone} with {num_classes} classes ({classifier} classifier)"
        )
