"""tools/finish_run.py: a run folder made into a committed result, finished or to be continued."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glmc.checkpoint import load_checkpoint
from glmc.cli import main
from glmc.config import build_config
from glmc.weights import evaluation_path
from glmc.rundir import RECORD_FILES
from glmc.trainer import train

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "finish_run.py"


def finish_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_a_finished_run_becomes_records_fp16_weights_with_their_evaluation_and_report_pictures(tiny_run, tmp_path):
    dest = tmp_path / "result"
    done = finish_run(str(tiny_run), str(dest), "--data-root", str(tmp_path))  # synthetic data: the root is not read
    assert done.returncode == 0, done.stderr
    assert {path.name for path in dest.iterdir()} == {*RECORD_FILES, "checkpoint_last-fp16.safetensors",
                                                      "checkpoint_last-fp16-eval.json", "training-fit.json", "report"}
    assert {path.suffix for path in (dest / "report").iterdir()} == {".png"}
    summary = json.loads((dest / "summary.json").read_text())
    recorded = json.loads(evaluation_path(dest / "checkpoint_last-fp16.safetensors").read_text())
    assert abs(recorded["top1"] - summary["final"]["top1"]) <= 1.0  # fp16 weights, evaluated in fp32
    assert "| session | started (UTC) |" in done.stdout and "| end of epoch 2 | finished |" in done.stdout
    fit = json.loads((dest / "training-fit.json").read_text())  # the training images, not the 1,000 test ones
    assert (fit["part"], fit["num_samples"]) == ("train", sum(load_checkpoint(tiny_run / "checkpoint_last.pt")["class_counts"]))
    assert f"fits {fit['top1']:.2f}% of its {fit['num_samples']:,} training images" in done.stdout


def test_an_unfinished_run_is_committed_with_its_checkpoint_and_continues_from_the_copy(tmp_path):
    run = tmp_path / "run"
    config = build_config(None, {"data.dataset": "synthetic-lt", "model.backbone": "resnet8", "train.epochs": "2",
                                 "train.batch_size": "128", "train.device": "cpu", "train.max_steps": "5"})
    train(config, run, quiet=True)
    (run / "summary.json").unlink()  # as a run stopped before its end has none
    refused = finish_run(str(run), str(tmp_path / "refused"), "--data-root", str(tmp_path))
    assert refused.returncode != 0 and "has not finished" in refused.stderr and "--unfinished" in refused.stderr
    dest = tmp_path / "partial"
    done = finish_run(str(run), str(dest), "--unfinished")
    assert done.returncode == 0, done.stderr
    assert {"checkpoint_last.pt", "checkpoint_last.pt.sha256", "sessions.jsonl", "metrics.jsonl"} <= {p.name for p in dest.iterdir()}
    assert not (dest / "checkpoint_last-fp16.safetensors").exists() and "| epoch 1, step 5 | finished |" in done.stdout
    assert main(["train", "--resume", str(dest), "--set", "train.max_steps=none", "--quiet"]) == 0
    assert json.loads((dest / "summary.json").read_text())["final"]["epoch"] == 2


@pytest.mark.slow  # over 20 s on 2 cores of an AMD EPYC without AVX-512 (pytest --durations, 2026-12-06)
def test_a_calibration_is_committed_beside_the_final_weights_with_only_the_classifier_changed(tiny_run, tmp_path):
    dest = tmp_path / "result"
    done = finish_run(str(tiny_run), str(dest), "--data-root", str(tmp_path), "--calibration", "maxnorm")
    assert done.returncode == 0, done.stderr
    calibration = json.loads((dest / "checkpoint_last-maxnorm.json").read_text())
    recorded = json.loads(evaluation_path(dest / "checkpoint_last-maxnorm-fp16.safetensors").read_text())
    assert calibration["calibration"] == "maxnorm" and abs(recorded["top1"] - calibration["after"]["top1"]) <= 1.0
    assert f"with maxnorm, top-1 {recorded['top1']:.2f}" in done.stdout
    final, calibrated = (load_file(dest / name) for name in ("checkpoint_last-fp16.safetensors",
                                                              "checkpoint_last-maxnorm-fp16.safetensors"))
    changed = {name for name in final if not torch.equal(final[name], calibrated[name])}
    assert changed == {"heads.fc_cb.weight", "heads.fc_cb.bias"}


def test_a_calibration_of_an_unfinished_run_is_refused(tmp_path):
    done = finish_run(str(tmp_path), str(tmp_path / "dest"), "--unfinished", "--calibration", "maxnorm")
    assert done.returncode == 2 and "--calibration needs a finished run" in done.stderr
    assert not (tmp_path / "dest").exists()
