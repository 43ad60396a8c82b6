"""Calibration metrics (ECE, NLL, per group, reliability bins) and temperature scaling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import write_cosine_checkpoint
from glmc.calibration import fitted_temperature
from glmc.checkpoint import load_checkpoint
from glmc.cli import main
from glmc.metrics import ECE_BINS, evaluate_logits

# (probabilities, true class): confidences 0.9 right, 0.75 wrong, 0.62 right, 0.95 wrong
SAMPLES = [([0.9, 0.1], 0), ([0.75, 0.25], 1), ([0.38, 0.62], 1), ([0.05, 0.95], 0)]
COUNTS = [200, 10]  # class 0 many-shot, class 1 few-shot


def hand_metrics():
    logits = torch.log(torch.tensor([p for p, _ in SAMPLES], dtype=torch.float64))
    labels = torch.tensor([y for _, y in SAMPLES])
    return evaluate_logits(logits, labels, COUNTS)


def test_ece_and_nll_by_hand():
    metrics = hand_metrics()
    # |1 - 0.9| + |0 - 0.75| + |1 - 0.62| + |0 - 0.95| = 2.18 over 4 samples
    assert metrics.ece == pytest.approx(100 * 2.18 / 4)
    assert metrics.nll == pytest.approx(-(math.log(0.9) + math.log(0.25) + math.log(0.62) + math.log(0.05)) / 4)


def test_ece_per_group_counts_the_samples_of_the_groups_classes():
    metrics = hand_metrics()
    assert metrics.ece_many == pytest.approx(100 * (0.1 + 0.95) / 2)  # class 0's samples: 0.9 right, 0.95 wrong
    assert metrics.ece_few == pytest.approx(100 * (0.75 + 0.38) / 2)
    assert metrics.ece_medium is None


def test_reliability_bins_are_equal_width_over_the_top1_confidence():
    bins = hand_metrics().reliability
    assert bins["bins"] == ECE_BINS == 15
    # bin b holds confidences in ((b - 1)/15, b/15]: 0.62 -> 10th, 0.75 -> 12th, 0.9 -> 14th, 0.95 -> 15th
    occupied = {index: (bins["accuracy"][index], bins["confidence"][index]) for index, n in enumerate(bins["count"]) if n}
    assert occupied == {9: (100.0, 62.0), 11: (0.0, 75.0), 13: (100.0, 90.0), 14: (0.0, 95.0)}
    assert all(bins["accuracy"][i] is None for i in range(15) if i not in occupied)


def test_a_perfectly_calibrated_model_has_an_ece_near_zero():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(200_000, 4, generator=generator) * 2
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    assert evaluate_logits(logits, labels, [200, 200, 50, 5]).ece < 0.5  # sampling noise only


def test_temperature_scaling_finds_the_temperature_of_overconfident_logits():
    generator = torch.Generator().manual_seed(1)
    calibrated = torch.randn(40_000, 5, generator=generator)
    labels = torch.multinomial(calibrated.softmax(dim=1), 1, generator=generator).squeeze(1)
    assert fitted_temperature(3.0 * calibrated, labels) == pytest.approx(3.0, rel=0.05)


def test_calibrate_temperature_keeps_top1_lowers_nll_and_warns_when_fitted_on_the_test_set(tiny_run, tmp_path, capsys):
    output = tmp_path / "temperature.pt"
    assert main(["calibrate", str(tiny_run / "checkpoint_last.pt"), "--method", "temperature", "--output", str(output),
                 "--device", "cpu", "--json"]) == 0
    printed = capsys.readouterr()
    record = json.loads(printed.out)
    assert "fitting T on the test set" in printed.err and record["fitted_on"].startswith("test set")
    assert record["after"]["top1"] == record["before"]["top1"] and record["after"]["per_class"] == record["before"]["per_class"]
    assert record["after"]["nll"] <= record["before"]["nll"] and record["temperature"] > 0
    assert main(["eval", str(output), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nll"] == pytest.approx(record["after"]["nll"], abs=1e-4)


def test_temperature_on_a_cosine_head_divides_the_logit_scale_which_eval_and_exports_keep(tiny_run, tmp_path, capsys):
    # LDAM's fc_cb has no bias to fold T into: the calibrated checkpoint records s / T instead
    ldam = write_cosine_checkpoint(tiny_run / "checkpoint_last.pt", tmp_path / "ldam.pt", ldam_scale=30.0)
    checkpoint = load_checkpoint(ldam)
    output = tmp_path / "ldam-temperature.pt"
    assert main(["calibrate", str(ldam), "--method", "temperature", "--output", str(output),
                 "--device", "cpu", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    temperature = record["temperature"]
    assert temperature != pytest.approx(1.0, abs=0.01)
    assert record["after"]["top1"] == record["before"]["top1"] and record["after"]["nll"] < record["before"]["nll"]

    calibrated = load_checkpoint(output)
    assert calibrated["logit_scale"] == pytest.approx(30.0 / temperature, rel=1e-5)
    assert calibrated["config"] == checkpoint["config"]  # the run's LDAM s stays what it trained with
    assert all(torch.equal(calibrated["model"][k], v) for k, v in checkpoint["model"].items())
    weights = tmp_path / "ldam-temperature.safetensors"
    assert main(["export", str(output), "--format", "safetensors", "--dtype", "fp32", "--output", str(weights)]) == 0
    capsys.readouterr()
    for path in (output, weights):
        assert main(["eval", str(path), "--device", "cpu", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["nll"] == pytest.approx(record["after"]["nll"], abs=1e-4)


def test_runs_record_calibration_in_metrics_and_summary(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    record = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[-1])
    for source in (summary["final"], record):
        assert 0 <= source["ece"] <= 100 and source["nll"] > 0 and sum(source["reliability"]["count"]) == 1000
    assert summary["final"]["ece"] == record["ece"]
