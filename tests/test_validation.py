"""Validation sets held out of the training images (data.validation): disjoint by construction, evaluated by
training, read by `glmc eval --on val`, and what the calibrations that fit something fit on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_image_tree
from glmc.calibration import TauNorm, TauNormParams, balanced_accuracy, tau_normalised, validation_features
from glmc.checkpoint import load_checkpoint
from glmc.cli import main
from glmc.config import build_config
from glmc.data.datasets import DataConfig, create_dataset
from glmc.data.validation import balanced_hold_out, stratified_hold_out
from glmc.errors import ConfigError, DataError
from glmc.evaluation import restore_for_evaluation
from glmc.models.heads import prediction_head
from glmc.rundir import BEST_ON_VALIDATION_LABEL
from glmc.trainer import train

HELD_OUT = {"data.validation": "held-out"}
TINY = {"train.epochs": "2", "train.batch_size": "128", "train.device": "cpu", "train.eval_every": "1"}


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory):
    """Two epochs of the quickstart with its validation set."""
    output = tmp_path_factory.mktemp("held-out") / "run"
    train(build_config("quickstart", {**HELD_OUT, **TINY}), output, quiet=True)
    return output


# ---------------------------------------------------------------- the hold-outs


def test_the_balanced_hold_out_comes_from_unused_images_first_and_says_what_training_lost():
    labels = np.repeat(np.arange(3), 10)  # an original training set of 10 images per class
    training = np.concatenate([np.arange(0, 10), np.arange(10, 16), np.arange(20, 22)])  # long-tailed: 10, 6, 2
    held = balanced_hold_out(labels, training, per_class=4, num_classes=3)
    assert np.bincount(labels[held.val_indices], minlength=3).tolist() == [4, 4, 4]
    assert held.taken_from_training == (4, 0, 0)  # the head class has no unused image; the others have 4 and 8
    assert not set(held.val_indices) & set(held.train_indices)
    assert set(held.val_indices[4:]) <= set(range(16, 20)) | set(range(22, 30))  # classes 1 and 2: unused ones
    assert sorted(held.train_indices.tolist() + held.val_indices[:4].tolist()) == sorted(training.tolist())
    again = balanced_hold_out(labels, training, per_class=4, num_classes=3)
    assert np.array_equal(again.val_indices, held.val_indices)  # a fixed seed of its own
    roomy = balanced_hold_out(labels, training[training != 9], per_class=1, num_classes=3)  # every class has unused images
    assert roomy.taken_from_training == (0, 0, 0) and np.array_equal(roomy.train_indices, training[training != 9])
    with pytest.raises(DataError, match="class 0 cannot give 10 validation images"):
        balanced_hold_out(labels, training, per_class=10, num_classes=3)


def test_the_stratified_hold_out_keeps_every_class_in_both_parts():
    labels = np.array([0] * 20 + [1] * 5 + [2] * 2)
    kept, val = stratified_hold_out(labels, 0.1)
    assert np.bincount(labels[val]).tolist() == [2, 1, 1]
    assert np.bincount(labels[kept]).tolist() == [18, 4, 1]
    assert sorted(kept.tolist() + val.tolist()) == list(range(len(labels)))


def test_synthetic_lt_held_out_is_disjoint_from_training_and_changes_the_fingerprint_only_when_it_takes_images():
    plain = create_dataset(DataConfig(dataset="synthetic-lt"))
    held = create_dataset(DataConfig(dataset="synthetic-lt", validation="held-out"))
    assert np.bincount(held.val_labels).tolist() == [50] * 10
    assert not set(held.val_indices.tolist()) & set(held.train_indices.tolist())
    assert held.val_taken == (50,) + (0,) * 9  # the head class uses all 500 of its own images
    assert held.class_counts == [450] + plain.class_counts[1:]
    assert held.fingerprint != plain.fingerprint
    card = held.card().to_json()["validation"]
    assert card["class_counts"] == [50] * 10 and card["taken_from_training"][0] == 50 and len(card["indices"]) == 500


@pytest.mark.real_data
def test_cifar10_lt_held_out_uses_official_training_images_the_split_leaves_unused(cifar10_root):
    from glmc.data.cifar import CIFAR10, load_cifar

    held = create_dataset(DataConfig(data_root=str(cifar10_root), validation="held-out"))
    official = load_cifar(CIFAR10, str(cifar10_root)).train.labels
    assert np.bincount(held.val_labels).tolist() == [100] * 10
    assert np.array_equal(official[held.val_indices], held.val_labels)
    assert not set(held.val_indices.tolist()) & set(held.train_indices.tolist())
    assert held.val_taken == (100,) + (0,) * 9 and held.class_counts[0] == 4900


def test_image_folders_use_their_val_folder_or_a_stratified_hold_out(tmp_path):
    root = tmp_path / "images"
    write_image_tree(root)  # train counts 9, 5, 3 (+ one corrupt) per class
    config = DataConfig(dataset="folder", data_root=str(root), validation="held-out", val_fraction=0.25, unreadable="skip")
    held = create_dataset(config)
    assert held.validation_card()["class_counts"] == [2, 1, 1] and "stratified" in held.validation_card()["kind"]
    assert not set(held.val.paths) & set(held.train.paths)
    (root / "val").mkdir()
    for name in ("circle", "cross", "square"):
        (root / "val" / name).mkdir()
        (root / "val" / name / "a.png").write_bytes((next((root / "test" / name).iterdir())).read_bytes())
    own = create_dataset(config)
    assert own.validation_card()["class_counts"] == [1, 1, 1] and "val" in own.validation_card()["kind"]
    assert len(own.train.paths) == 9 + 5 + 4  # nothing held out of training
    assert create_dataset(DataConfig(dataset="folder", data_root=str(root))).validation_card() is None


def test_glmc_data_shows_the_validation_set(capsys):
    assert main(["data", "--dataset", "synthetic-lt", "--validation", "held-out", "--val-per-class", "30", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["validation"]["class_counts"] == [30] * 10 and card["validation"]["fingerprint"].startswith("sha256:")
    assert main(["data", "--dataset", "synthetic-lt", "--validation", "held-out"]) == 0
    assert "50 of them out of the long-tailed training set, which lost them (stripes-0deg-red 50)" in capsys.readouterr().out
    assert main(["data", "--dataset", "synthetic-lt", "--validation", "held-out", "--val-per-class", "0"]) == 2
    assert "data.val_per_class must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("values, message", [
    ({"data.validation": "test"}, "unknown validation protocol 'test'"),
    ({"data.val_fraction": "1.5"}, "data.val_fraction must be in"),
    ({"eval.test": "false"}, "eval.test=false evaluates nothing"),
])
def test_bad_validation_settings_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config("quickstart", values)


# ---------------------------------------------------------------- training, evaluation, calibration


def test_training_evaluates_the_validation_set_and_selects_the_best_epoch_on_it(held_out_run, capsys):
    records = [json.loads(line) for line in (held_out_run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        val = record["val"]
        assert val["num_samples"] == 500 and "top1" in record  # the test set too, as always
        assert val["balanced"] == pytest.approx(np.mean(val["per_class"]), abs=1e-3)
    summary = json.loads((held_out_run / "summary.json").read_text())
    assert summary["best"]["label"] == BEST_ON_VALIDATION_LABEL
    assert summary["best"]["val"]["balanced"] == max(r["val"]["balanced"] for r in records)
    assert summary["dataset"]["validation"]["total"] == 500
    assert main(["eval", str(held_out_run / "checkpoint_last.pt"), "--on", "val", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(records[-1]["val"]["top1"], abs=1e-3)


def test_a_run_that_never_looks_at_the_test_set(tmp_path):
    summary = train(build_config("quickstart", {**HELD_OUT, **TINY, "eval.test": "false"}), tmp_path / "run", quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("top1" not in record and "val" in record for record in records)
    assert summary["final"]["top1"] is None and summary["final"]["val"]["top1"] == records[-1]["val"]["top1"]
    assert main(["compare", str(tmp_path / "run")]) == 2  # nothing tested, nothing to compare


def test_the_validation_setting_is_part_of_the_runs_identity(held_out_run, capsys):
    args = ["train", "--preset", "quickstart", *[f"--set={k}={v}" for k, v in TINY.items()], "--output", str(held_out_run),
            "--resume-if-exists", "--quiet"]
    assert main(args) == 2
    assert "differs in data.validation" in capsys.readouterr().err


def test_temperature_and_tau_are_fitted_on_the_validation_set(held_out_run, tmp_path, capsys):
    output = tmp_path / "t.pt"
    assert main(["calibrate", str(held_out_run / "checkpoint_last.pt"), "--method", "temperature", "--output", str(output),
                 "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fitted_on"] == "validation set"
    assert main(["calibrate", str(held_out_run / "checkpoint_last.pt"), "--method", "tau-norm", "--set", "fit=true",
                 "--output", str(tmp_path / "tau.pt"), "--device", "cpu", "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    restored = restore_for_evaluation(held_out_run / "checkpoint_last.pt", device="cpu")
    features, labels = validation_features(restored.model, restored)
    head = prediction_head(restored.model)

    def score(tau: float) -> float:
        return balanced_accuracy(features @ tau_normalised(head.weight.detach(), tau).T + head.bias.detach(), labels)

    assert fitted["fitted_on"] == "validation set" and 0 <= fitted["tau"] <= TauNorm.GRID_END
    assert fitted["validation_balanced_accuracy"] == pytest.approx(score(fitted["tau"]), abs=1e-3)
    assert all(fitted["validation_balanced_accuracy"] >= score(tau) - 1e-9 for tau in (0.0, 0.5, 1.0, 1.5))
    assert load_checkpoint(tmp_path / "tau.pt")["calibrations"][-1]["tau"] == fitted["tau"]


def test_fitting_tau_without_a_validation_set_is_one_line(tiny_run, tmp_path, capsys):
    assert main(["calibrate", str(tiny_run / "checkpoint_last.pt"), "--method", "logit-adjustment", "--set", "fit=true",
                 "--output", str(tmp_path / "la.pt"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "fit=true chooses tau on a validation set, and this run has none" in error and error.count("\n") == 1
    assert not (tmp_path / "la.pt").exists()
    assert TauNormParams(fit=True).fit
