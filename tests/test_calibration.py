"""Post-hoc calibration: the pure functions by hand, and `glmc calibrate` on a tiny run."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import write_cosine_checkpoint
from glmc.calibration import (
    CALIBRATIONS,
    calibrate_checkpoint,
    calibration_params,
    class_balanced_softmax_bce,
    logit_adjusted_bias,
    max_norm_projection,
    max_norm_threshold,
    tau_normalised,
)
from glmc.checkpoint import load_checkpoint
from glmc.cli import main
from glmc.config import build_config
from glmc.errors import ConfigError, GlmcError
from glmc import calibration
from glmc.evaluation import evaluate_heads, evaluate_restored, restore_for_evaluation, same_encoder
from glmc.methods.losses import log_prior
from glmc.trainer import train

# ---------------------------------------------------------------- pure functions


def test_tau_zero_is_the_identity_and_tau_one_gives_unit_rows():
    weight = torch.tensor([[3.0, 4.0], [0.3, 0.4], [1.0, 0.0]])
    assert torch.equal(tau_normalised(weight, 0.0), weight)
    assert torch.allclose(torch.linalg.vector_norm(tau_normalised(weight, 1.0), dim=1), torch.ones(3))
    # tau = 0.5: row norms 5, 0.5, 1 -> divided by sqrt of them
    assert torch.allclose(tau_normalised(weight, 0.5)[0], torch.tensor([3.0, 4.0]) / math.sqrt(5.0))


def test_logit_adjusted_bias_subtracts_tau_log_prior():
    bias, counts = torch.tensor([0.1, -0.2]), [3, 1]
    adjusted = logit_adjusted_bias(bias, log_prior(counts), 2.0)
    assert adjusted.tolist() == pytest.approx([0.1 - 2 * math.log(0.75), -0.2 - 2 * math.log(0.25)], rel=1e-6)
    assert torch.equal(logit_adjusted_bias(bias, log_prior(counts), 0.0), bias)


def test_max_norm_threshold_by_hand():
    weight = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])  # norms 5, 1, 2
    assert max_norm_threshold(weight, 0.1).item() == pytest.approx(1.0 + 0.1 * (5.0 - 1.0))
    assert max_norm_threshold(weight, 0.0).item() == pytest.approx(1.0)


def test_max_norm_projection_leaves_no_row_above_the_threshold_and_short_rows_untouched():
    weight = torch.randn(20, 8, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3.0, 20)[:, None]
    threshold = max_norm_threshold(weight, 0.3)
    projected = max_norm_projection(weight, threshold)
    norms, before = torch.linalg.vector_norm(projected, dim=1), torch.linalg.vector_norm(weight, dim=1)
    assert bool((norms <= threshold * (1 + 1e-6)).all())
    short = before <= threshold
    assert short.any() and (~short).any()
    assert torch.equal(projected[short], weight[short])  # exactly untouched
    assert torch.allclose(norms[~short], threshold.expand(int((~short).sum())))  # scaled onto the ball
    directions = F.cosine_similarity(projected[~short], weight[~short], dim=1)
    assert torch.allclose(directions, torch.ones_like(directions))


def test_class_balanced_softmax_bce_by_hand():
    logits, labels, weights = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1]), torch.tensor([0.5, 2.0])
    # softmax [1/4, 3/4], onehot [0, 1]: BCE terms -log(3/4) and -log(3/4), both weighted by w_1 = 2, mean over 2
    assert class_balanced_softmax_bce(logits, labels, weights).item() == pytest.approx(2 * -math.log(0.75), rel=1e-6)


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("maxnorm", ["epochs=0"], "maxnorm epochs must be > 0"),
        ("maxnorm", ["threshold=1.5"], "threshold must be in [0, 1]"),
        ("maxnorm", ["projection=batch"], "projection must be one of epoch, step"),
        ("maxnorm", ["loss=ce"], "loss must be one of"),
        ("maxnorm", ["epoch=3"], "unknown maxnorm parameter 'epoch'; did you mean 'epochs'"),
        ("maxnorm", ["epochs=many"], "maxnorm.epochs expects an integer"),
        ("tau-norm", ["tau=-1"], "tau-norm tau must be >= 0"),
        ("logit-adjustment", ["tau=-1"], "logit-adjustment tau must be >= 0"),
        ("tau-normm", [], "unknown calibration 'tau-normm'; did you mean 'tau-norm'"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(name, overrides, message):
    with pytest.raises(ConfigError) as error:
        calibration_params(name, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_maxnorm_defaults_are_alshammari_et_al_second_stage():
    params = calibration_params("maxnorm")
    assert (params.epochs, params.lr, params.momentum, params.weight_decay, params.threshold) == (10, 0.01, 0.9, 0.1, 0.1)
    assert (params.cb_beta, params.focal_gamma, params.loss, params.projection) == (0.9999, 2.0, "focal-softmax", "epoch")
    assert calibration_params("maxnorm", ["batch_size=32", "projection=step"]).batch_size == 32
    assert CALIBRATIONS.names() == ["logit-adjustment", "maxnorm", "tau-norm", "temperature"]


# ---------------------------------------------------------------- on a trained checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    config = build_config(None, {"data.dataset": "synthetic-lt", "model.backbone": "resnet8", "optim.lr": "0.05",
                                 "train.epochs": "2", "train.device": "cpu", "train.max_steps": "4", "method.name": "ce"})
    train(config, output, quiet=True)
    return output / "checkpoint_last.pt"


def fc_cb(path):
    model = load_checkpoint(path)["model"]
    return model["heads.fc_cb.weight"], model["heads.fc_cb.bias"]


def test_calibrate_maxnorm_writes_a_checkpoint_and_its_metrics(checkpoint, tmp_path, capsys):
    output = tmp_path / "maxnorm.pt"
    assert main(["calibrate", str(checkpoint), "--method", "maxnorm", "--set", "epochs=1", "--output", str(output),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["params"]["epochs"] == 1 and record["params"]["weight_decay"] == 0.1
    assert {"before", "after", "threshold", "epoch_losses", "fingerprint"} <= set(record)

    weight, bias = fc_cb(output)
    original_weight, original_bias = fc_cb(checkpoint)
    threshold = max_norm_threshold(original_weight, 0.1).item()
    assert record["threshold"] == pytest.approx(threshold)
    assert torch.linalg.vector_norm(weight, dim=1).max().item() <= threshold * (1 + 1e-5)
    assert not torch.equal(bias, original_bias)  # the bias trains, unconstrained
    calibrated, original = load_checkpoint(output), load_checkpoint(checkpoint)
    backbone = [k for k in original["model"] if not k.startswith("heads.fc_cb")]
    assert all(torch.equal(calibrated["model"][k], original["model"][k]) for k in backbone)  # BN statistics too
    assert calibrated["calibrations"][-1]["calibration"] == "maxnorm"
    assert calibrated["fingerprint"] == original["fingerprint"] and calibrated["config"] == original["config"]

    assert main(["eval", str(output), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(record["after"]["top1"])


@pytest.fixture(scope="module")
def small(checkpoint):
    """The checkpoint restored, its training set cut to at most 4 images per class (fast MaxNorm runs)."""
    restored = restore_for_evaluation(checkpoint, device="cpu")
    labels = restored.dataset.train_labels
    keep = np.concatenate([np.flatnonzero(labels == k)[:4] for k in range(restored.dataset.num_classes)])
    dataset = dataclasses.replace(restored.dataset, train_images=restored.dataset.train_images[keep],
                                  train_labels=labels[keep], train_indices=restored.dataset.train_indices[keep])
    return dataclasses.replace(restored, dataset=dataset)


def calibrated_head(restored, name, overrides=()):
    model = copy.deepcopy(restored.model)
    CALIBRATIONS.get(name)(calibration_params(name, overrides))(model, restored)
    return model.heads.fc_cb.weight.detach(), model.heads.fc_cb.bias.detach(), model


def test_maxnorm_options_change_the_result(small):
    base = ["epochs=1", "batch_size=20"]
    default, _, model = calibrated_head(small, "maxnorm", base)
    assert not any(p.requires_grad is False for p in model.parameters())  # nothing left frozen
    for extra in (["projection=step"], ["loss=softmax-bce"], ["focal_gamma=0"], ["cb_beta=0"], ["threshold=0.5"]):
        assert not torch.equal(calibrated_head(small, "maxnorm", base + extra)[0], default), extra


def test_maxnorm_projects_after_every_epoch_or_step(small):
    weight = small.model.heads.fc_cb.weight.detach()
    for projection in ("epoch", "step"):
        calibrated, _, _ = calibrated_head(small, "maxnorm", ["epochs=1", "batch_size=20", f"projection={projection}"])
        limit = max_norm_threshold(weight, 0.1).item() * (1 + 1e-5)
        assert torch.linalg.vector_norm(calibrated, dim=1).max().item() <= limit


def test_tau_norm_and_logit_adjustment_change_only_the_classifier(small):
    weight, bias = small.model.heads.fc_cb.weight.detach(), small.model.heads.fc_cb.bias.detach()
    tau_weight, tau_bias, model = calibrated_head(small, "tau-norm", ["tau=1"])
    assert torch.allclose(torch.linalg.vector_norm(tau_weight, dim=1), torch.ones(len(tau_weight)))
    assert torch.equal(tau_bias, bias)
    untouched = [k for k in model.state_dict() if k != "heads.fc_cb.weight"]
    assert all(torch.equal(model.state_dict()[k], small.model.state_dict()[k]) for k in untouched)
    assert torch.equal(calibrated_head(small, "tau-norm", ["tau=0"])[0], weight)

    counts = small.checkpoint["class_counts"]
    la_weight, la_bias, _ = calibrated_head(small, "logit-adjustment", ["tau=0.5"])
    assert torch.equal(la_weight, weight)
    assert torch.allclose(la_bias, bias - 0.5 * log_prior(counts))


def test_heads_scored_on_one_pass_through_the_encoder_give_each_model_its_own_metrics(small):
    models = [small.model, calibrated_head(small, "tau-norm", ["tau=1"])[2], calibrated_head(small, "logit-adjustment")[2]]
    shared = [metrics.to_json() for metrics in evaluate_heads(small, models)]
    alone = [evaluate_restored(small, model=model).to_json() for model in models]
    assert shared == alone
    assert shared[0] != shared[1] and shared[0] != shared[2]  # three different heads, scored each by its own

    other = copy.deepcopy(small.model)
    other.encoder.state_dict()[next(k for k in other.encoder.state_dict() if k.endswith("running_mean"))].add_(1.0)
    assert same_encoder(small.model, models[1]) and not same_encoder(small.model, other)
    with pytest.raises(ValueError, match="encoder"):
        evaluate_heads(small, [small.model, other])


def test_calibrate_passes_the_test_images_through_the_backbone_once(checkpoint, tmp_path, monkeypatch):
    encoder_batches = []

    def counted(*args, **kwargs):
        restored = restore_for_evaluation(*args, **kwargs)
        restored.model.encoder.register_forward_hook(lambda module, inputs, output: encoder_batches.append(len(output)))
        return restored  # the calibration's copy of the model counts too: deepcopy keeps the hook

    monkeypatch.setattr(calibration, "restore_for_evaluation", counted)
    record = calibrate_checkpoint(checkpoint, "logit-adjustment", output=tmp_path / "la.pt", device="cpu")
    assert sum(encoder_batches) == record["before"]["num_samples"] == record["after"]["num_samples"]
    assert record["before"]["top1"] == evaluate_restored(restore_for_evaluation(checkpoint, device="cpu")).top1
    assert record["after"]["top1"] == evaluate_restored(restore_for_evaluation(tmp_path / "la.pt", device="cpu")).top1


def test_calibrate_refuses_to_overwrite_and_a_cosine_head(checkpoint, tmp_path):
    (tmp_path / "a.pt").write_bytes(b"")
    with pytest.raises(GlmcError, match="a.pt already exists; pass --overwrite"):
        calibrate_checkpoint(checkpoint, "tau-norm", output=tmp_path / "a.pt", device="cpu")
    with pytest.raises(GlmcError, match="is the checkpoint being calibrated"):
        calibrate_checkpoint(checkpoint, "tau-norm", output=checkpoint, device="cpu", overwrite=True)

    write_cosine_checkpoint(checkpoint, tmp_path / "cosine.pt")
    with pytest.raises(GlmcError, match="needs a linear classifier with a bias"):
        calibrate_checkpoint(tmp_path / "cosine.pt", "maxnorm", device="cpu")
    assert not (tmp_path / "cosine-maxnorm.pt").exists()


def test_bad_calibrate_input_is_one_line_and_exit_2(checkpoint, tmp_path):
    for args, message in [
        (["--method", "maxnrom"], "unknown calibration 'maxnrom'; did you mean 'maxnorm'"),
        (["--method", "maxnorm", "--set", "lr=0"], "maxnorm lr must be > 0"),
    ]:
        done = subprocess.run([sys.executable, "-m", "glmc.cli", "calibrate", str(checkpoint), *args, "--output",
                               str(tmp_path / "x.pt")], capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1
        assert not (tmp_path / "x.pt").exists()
    assert main(["calibrate", str(tmp_path / "missing.pt"), "--method", "tau-norm"]) == 2
