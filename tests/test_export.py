"""`glmc export`: safetensors weights that eval and predict read, and ONNX checked with onnxruntime."""

from __future__ import annotations

import errno
import json
import os
import sys

import numpy as np
import pytest
import torch

from glmc.checkpoint import load_checkpoint
from glmc.cli import main
from glmc.errors import GlmcError
from glmc.evaluation import restore_model
from glmc.export import export_weights


def eval_json(capsys, checkpoint) -> dict:
    assert main(["eval", str(checkpoint), "--device", "cpu", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_fp32_weights_evaluate_exactly_like_the_checkpoint(tiny_run, tmp_path, capsys):
    weights = tmp_path / "model.safetensors"
    assert main(["export", str(tiny_run / "checkpoint_last.pt"), "--format", "safetensors", "--output", str(weights)]) == 0
    summary = json.loads((tiny_run / "summary.json").read_text())
    capsys.readouterr()
    metrics = eval_json(capsys, weights)
    assert metrics["top1"] == summary["final"]["top1"] and metrics["per_class"] == summary["final"]["per_class"]


def test_fp16_weights_are_half_the_size_and_evaluate_within_a_point(tiny_run, tmp_path, capsys):
    fp32, fp16 = tmp_path / "fp32.safetensors", tmp_path / "fp16.safetensors"
    export_weights(tiny_run / "checkpoint_last.pt", fp32, "fp32")
    export_weights(tiny_run / "checkpoint_last.pt", fp16, "fp16")
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    payload = load_checkpoint(fp16)
    assert payload["backbone"] == "resnet8" and payload["class_names"] == load_checkpoint(tiny_run / "checkpoint_last.pt")["class_names"]
    assert all(value.dtype != torch.float16 for value in payload["model"].values())  # read back as fp32
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert eval_json(capsys, fp16)["top1"] == pytest.approx(summary["final"]["top1"], abs=1.0)


def test_predict_reads_exported_weights(tiny_run, tmp_path, capsys):
    from PIL import Image

    weights = tmp_path / "model.safetensors"
    export_weights(tiny_run / "checkpoint_last.pt", weights, "fp16")
    Image.fromarray(np.full((32, 32, 3), 120, dtype=np.uint8)).save(tmp_path / "grey.png")
    assert main(["predict", str(weights), str(tmp_path / "grey.png"), "--device", "cpu", "--json", "--topk", "2"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert len(top) == 2 and 0 < top[0]["probability"] <= 1


def test_a_weights_file_is_not_a_resumable_checkpoint_and_a_stranger_is_refused(tiny_run, tmp_path):
    from safetensors.torch import save_file

    stranger = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(stranger))
    with pytest.raises(GlmcError, match="not a glmc weights file"):
        load_checkpoint(stranger)
    weights = tmp_path / "w.safetensors"
    export_weights(tiny_run / "checkpoint_last.pt", weights)
    assert "optimizer" not in load_checkpoint(weights) and "state" not in load_checkpoint(weights)


def test_onnx_logits_equal_pytorchs(tiny_run, tmp_path):
    import onnx
    import onnxruntime

    model_file = tmp_path / "model.onnx"
    assert main(["export", str(tiny_run / "checkpoint_last.pt"), "--format", "onnx", "--output", str(model_file)]) == 0
    checkpoint = load_checkpoint(tiny_run / "checkpoint_last.pt")
    model = restore_model(checkpoint, "ckpt", torch.device("cpu"))
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images).logits.numpy()
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)  # fp32 through both runtimes
    metadata = {entry.key: json.loads(entry.value) for entry in onnx.load(str(model_file)).metadata_props}
    assert metadata["glmc_class_names"] == checkpoint["class_names"]
    assert metadata["glmc_preprocessing"]["mean"] == checkpoint["mean"] and metadata["glmc_preprocessing"]["image_size"] == [32, 32]


def test_without_the_extra_the_message_says_how_to_install_it(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import fails as when the package is absent
    with pytest.raises(GlmcError, match=r'pip install "glmc\[export\]"'):
        export_weights(tiny_run / "checkpoint_last.pt", tmp_path / "w.safetensors")


@pytest.mark.parametrize("fmt, name", [("safetensors", "weights.safetensors"), ("onnx", "model.onnx")])
def test_an_export_that_fails_midway_leaves_the_earlier_file_whole_and_no_partial_one(tiny_run, tmp_path, monkeypatch,
                                                                                       capsys, fmt, name):
    output = tmp_path / name
    assert main(["export", str(tiny_run / "checkpoint_last.pt"), "--format", fmt, "--output", str(output)]) == 0
    earlier = output.read_bytes()

    def full_disk(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # the new file's bytes never reach the disk
    dtype = ["--dtype", "fp16"] if fmt == "safetensors" else []  # another file than the earlier one, where it can be
    assert main(["export", str(tiny_run / "checkpoint_last.pt"), "--format", fmt, "--output", str(output), *dtype]) == 2
    assert "disk full while writing" in capsys.readouterr().err
    assert output.read_bytes() == earlier
    assert sorted(path.name for path in tmp_path.iterdir()) == [name]  # its temporary removed
