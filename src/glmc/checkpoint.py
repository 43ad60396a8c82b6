"""Checkpoints: written atomically, read with `weights_only=True`.

A checkpoint is a dict of tensors and plain values (the resolved config included), so it
loads without unpickling arbitrary objects; a file that would run code is refused.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from glmc.errors import GlmcError

FORMAT = "glmc-checkpoint/1"


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename over `path`."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save({"format": FORMAT, **payload}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GlmcError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unsafe content"
        raise GlmcError(f"refusing to load {path}: not a plain-weights checkpoint ({first_line})") from None
    except Exception as error:  # truncated or not a torch file
        raise GlmcError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GlmcError(f"{path} is not a glmc checkpoint")
    return payload
