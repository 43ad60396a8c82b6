"""tools/compare_heads.py: a GLMC checkpoint's test metrics through fc_cb and through fc, on one pass of the images."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from glmc.config import build_config
from glmc.evaluation import evaluate_restored, restore_for_evaluation
from glmc.metrics import format_shots
from glmc.trainer import train

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "compare_heads.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("compare_heads", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    config = build_config(None, {"data.dataset": "synthetic-lt", "model.backbone": "resnet8", "optim.lr": "0.05",
                                 "train.epochs": "2", "train.device": "cpu", "train.max_steps": "6"})
    train(config, output, quiet=True)
    return output / "checkpoint_last.pt"


def test_each_head_line_is_the_model_evaluated_through_that_head(checkpoint, capsys):
    assert load_tool().main([str(checkpoint), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    restored = restore_for_evaluation(checkpoint, device="cpu")
    with_fc = copy.deepcopy(restored.model)
    with torch.no_grad():  # fc's weights in fc_cb, a linear head of the same shape here
        with_fc.heads.fc_cb.weight.copy_(with_fc.heads.fc.weight)
        with_fc.heads.fc_cb.bias.copy_(with_fc.heads.fc.bias)
    for line, model in zip(lines, (restored.model, with_fc)):
        metrics = evaluate_restored(restored, model=model)
        assert f"top1 {metrics.top1:6.2f}  {format_shots(metrics)}  ece {metrics.ece:.2f}" in line
    assert lines[0].startswith("fc_cb") and lines[1].startswith("fc ") and lines[0][33:] != lines[1][33:]
