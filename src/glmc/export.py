"""`glmc export CKPT --format safetensors|onnx`: a trained model outside the lab.

- **safetensors**: the model's weights (fp32, or fp16 for a file half the size) with everything
  `glmc eval` and `glmc predict` need in the metadata (the format is glmc.weights');
  `glmc.checkpoint.load_checkpoint` reads such a file as it reads a checkpoint (weights back in
  fp32); it holds no optimiser state, so it cannot resume.
- **onnx**: the prediction path only, backbone and prediction head `fc_cb` (input
  N x 3 x H x W normalised images, output N x K logits), with the preprocessing and the class
  names in the model's metadata (`metadata_props`).

Both need the optional extra: `pip install "glmc[export]"`.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from glmc.checkpoint import load_checkpoint
from glmc.errors import GlmcError
from glmc.evaluation import restore_model
from glmc.files import write_bytes_atomically
from glmc.models import use_heads
from glmc.weights import require, save_weights

FORMATS = ("safetensors", "onnx")


def export_weights(checkpoint_path: str | os.PathLike, output: str | os.PathLike, dtype: str = "fp16") -> Path:
    """The checkpoint's weights in `dtype` with its facts in the metadata, as a safetensors file (glmc.weights)."""
    require("safetensors")
    return save_weights(load_checkpoint(checkpoint_path), output, dtype, source=str(checkpoint_path))


class PredictionPath(nn.Module):
    """The model as deployed: normalised images N x 3 x H x W -> logits of the prediction head, N x K."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).logits


def export_onnx(checkpoint_path: str | os.PathLike, output: str | os.PathLike, dtype: str = "fp32") -> Path:
    """The prediction path as ONNX (opset 17, dynamic batch), preprocessing and classes in its metadata."""
    onnx = require("onnx")
    if dtype != "fp32":
        raise GlmcError("ONNX export is fp32 (`--dtype fp32`); the runtime may convert it")
    checkpoint = load_checkpoint(checkpoint_path)
    model = restore_model(checkpoint, checkpoint_path, torch.device("cpu")).to(memory_format=torch.contiguous_format)
    use_heads(model, {"fc_cb"})
    height, width = checkpoint["image_size"]
    output = Path(output)
    example = torch.zeros(1, 3, height, width)
    graph = io.BytesIO()  # built in memory, written once complete: a killed export leaves any earlier file whole
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and constant-folding notes
        warnings.simplefilter("ignore")
        # dynamo=False: the TorchScript exporter, which needs no onnxscript; a plain CNN exports the same either way
        torch.onnx.export(PredictionPath(model).eval(), (example,), graph, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    exported = onnx.load_model_from_string(graph.getvalue())
    preprocessing = {"input": "N x 3 x H x W float32, RGB on the [0, 1] scale, then (x - mean) / std per channel",
                     "mean": checkpoint["mean"], "std": checkpoint["std"], "image_size": [height, width],
                     "test_resize": checkpoint.get("test_resize"),
                     "resize_rule": ("shorter side to test_resize, then centre crop image_size" if checkpoint.get("test_resize")
                                     else "the whole image resized to image_size")}
    for key, value in {"glmc_preprocessing": preprocessing, "glmc_class_names": checkpoint["class_names"],
                       "glmc_backbone": checkpoint["backbone"], "glmc_fingerprint": checkpoint["fingerprint"]}.items():
        entry = exported.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    write_bytes_atomically(output, exported.SerializeToString())
    return output


def export(checkpoint_path: str | os.PathLike, fmt: str, output: str | os.PathLike, dtype: str = "fp32") -> Path:
    if fmt not in FORMATS:
        raise GlmcError(f"--format must be one of {', '.join(FORMATS)}, got {fmt}")
    if Path(output).resolve() == Path(checkpoint_path).resolve():
        raise GlmcError(f"--output {output} is the checkpoint being exported; choose another path")
    return export_weights(checkpoint_path, output, dtype) if fmt == "safetensors" else export_onnx(checkpoint_path, output, dtype)
