"""The weights file: a model's weights as safetensors, with what `glmc eval` and `predict` need in its metadata.

This module owns the format (`glmc-weights/1`) and nothing else: glmc.checkpoint reads such a
file as it reads a checkpoint, glmc.export writes one from a checkpoint. The weights are fp32,
or fp16 for a file half the size, and always come back in fp32; the metadata holds the run's
config, class names and counts, split fingerprint and preprocessing, JSON-encoded. There is no
optimiser or run state, so a weights file cannot resume a run.

Committed results hold their final weights in the compact form (`<checkpoint stem>-fp16.safetensors`)
with `<name>-eval.json` beside it: that file's fp32 evaluation, which tests/test_results.py re-checks.
Reading and writing need the optional extra: `pip install "glmc[export]"`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch

from glmc.errors import GlmcError
from glmc.files import write_bytes_atomically

FORMAT = "glmc-weights/1"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
INSTALL_HINT = 'pip install "glmc[export]"'
# checkpoint entries kept in a weights file's metadata (JSON-encoded)
METADATA_KEYS = ("kind", "config", "backbone", "num_classes", "class_names", "class_counts", "fingerprint", "mean", "std",
                 "image_size", "test_resize", "calibrations", "logit_scale")
COMPACT_SUFFIX = "-fp16.safetensors"


def require(module: str):
    """The optional package `module`, or a one-line error saying how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise GlmcError(f"weights files and exports need the {module} package: {INSTALL_HINT}") from None


def save_weights(checkpoint: Mapping, output: str | os.PathLike, dtype: str = "fp16", source: str = "") -> Path:
    """`checkpoint`'s model weights in `dtype`, with its facts in the metadata, as a safetensors file."""
    require("safetensors")
    from safetensors.torch import save

    if dtype not in DTYPES:
        raise GlmcError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    tensors = {name: (value.to(DTYPES[dtype]) if value.is_floating_point() else value).contiguous()
               for name, value in checkpoint["model"].items()}
    metadata = {"format": FORMAT, "dtype": dtype, "source": source,
                **{key: json.dumps(checkpoint[key]) for key in METADATA_KEYS if key in checkpoint}}
    output = Path(output)
    write_bytes_atomically(output, save(tensors, metadata=metadata))  # a killed export leaves any earlier file whole
    return output


def load_weights(path: str | os.PathLike) -> dict:
    """A weights file as a checkpoint payload (weights in fp32, no optimiser or run state)."""
    require("safetensors")
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise GlmcError(f"cannot read weights file {path}: {error}") from None
    if metadata.get("format") != FORMAT:
        raise GlmcError(f"{path} is not a glmc weights file (no {FORMAT!r} in its metadata)")
    payload = {key: json.loads(metadata[key]) for key in METADATA_KEYS if key in metadata}
    payload["model"] = {name: value.float() if value.is_floating_point() else value for name, value in tensors.items()}
    return payload


def compact_path(checkpoint: str | os.PathLike) -> Path:
    """Where a checkpoint's compact weights go, the form results are committed in: `<stem>-fp16.safetensors` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + COMPACT_SUFFIX)


def evaluation_path(weights: str | os.PathLike) -> Path:
    """Where the fp32 evaluation of a weights file is recorded: `<name>-eval.json` beside it."""
    weights = Path(weights)
    return weights.with_name(weights.name.replace(".safetensors", "-eval.json"))


def write_evaluation(weights: str | os.PathLike, metrics: Mapping) -> dict:
    """Record `metrics` (`glmc eval --json` of `weights`, evaluated in fp32) beside the weights file, the
    record tests/test_results.py re-checks on a CPU."""
    record = {"weights": Path(weights).name, "precision": "fp32", **metrics}
    evaluation_path(weights).write_text(json.dumps(record) + "\n")
    return record
