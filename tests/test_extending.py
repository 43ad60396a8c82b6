"""A new method, a new in-memory dataset and a new encoder, each one definition outside the package, train end to end;
a new calibration, likewise, calibrates a checkpoint.

This is docs/extending.md's "Adding a method" and "Adding a dataset", word for word in spirit, and its "Adding a
backbone" and "Adding a calibration" blocks themselves: if any needs more than the decorated definition, this test has
to grow, and the docs are wrong.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import write_cosine_checkpoint
from glmc.calibration import CALIBRATIONS
from glmc.checkpoint import load_checkpoint
from glmc.cli import PLUGIN_GROUP, main
from glmc.config import build_config
from glmc.data.datasets import DATASETS, DataConfig
from glmc.data.in_memory import InMemoryDataset
from glmc.data.longtail import exponential_profile, long_tailed_indices
from glmc.errors import ConfigError
from glmc.methods import METHODS, MethodOptions, Needs, StepResult
from glmc.methods.base import SearchRange, require, search_space
from glmc.models import BACKBONES, create_model, with_heads
from glmc.registry import Registry
from glmc.trainer import train


@dataclass(frozen=True)
class SmoothedOptions(MethodOptions):
    smoothing: float = 0.1
    search_space: ClassVar[dict[str, SearchRange]] = {"method.smoothing": SearchRange(0.0, 0.3)}

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.smoothing < 1, f"method.smoothing must be in [0, 1), got {self.smoothing}")


class LabelSmoothing:
    """Cross-entropy with label smoothing on the uniform stream's view 1."""

    Options = SmoothedOptions
    needs = Needs()

    def __init__(self, options: SmoothedOptions, class_counts: Sequence[int], total_epochs: int) -> None:
        self.smoothing = options.smoothing

    def __call__(self, model, batch, epoch, rng) -> StepResult:
        loss = F.cross_entropy(model(batch.uniform.view1).logits, batch.uniform.labels, label_smoothing=self.smoothing)
        return StepResult(loss, {"smoothed_ce": loss.detach()})


def toy_npz(config: DataConfig) -> InMemoryDataset:
    """Arrays from `data_root/toy.npz` (train_x, train_y, test_x, test_y), cut to the long-tailed profile."""
    arrays = np.load(f"{config.data_root}/toy.npz")
    counts = exponential_profile(int(np.bincount(arrays["train_y"]).min()), 4, config.imbalance_factor)
    indices = long_tailed_indices(arrays["train_y"], counts, config.split)
    return InMemoryDataset(name="toy-npz", split=config.split, imbalance_factor=config.imbalance_factor,
                           class_names=["a", "b", "c", "d"], train_images=arrays["train_x"][indices],
                           train_labels=arrays["train_y"][indices], train_indices=indices, test_images=arrays["test_x"],
                           test_labels=arrays["test_y"], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(autouse=True)
def registered():
    """What a user's module does at import: `@METHODS.register(...)` and `@DATASETS.register(...)` on the
    two definitions above. Here they are removed afterwards, so other tests see only the package's entries."""
    METHODS.register("toy-label-smoothing")(LabelSmoothing)
    DATASETS.register("toy-npz")(toy_npz)
    yield
    METHODS.unregister("toy-label-smoothing")
    DATASETS.unregister("toy-npz")


def write_toy_npz(folder) -> None:
    rng = np.random.default_rng(0)

    def part(per_class):
        labels = np.repeat(np.arange(4), per_class)
        images = (rng.integers(0, 60, (len(labels), 3, 16, 16)) + 60 * labels[:, None, None, None]).astype(np.uint8)
        return images, labels

    (train_x, train_y), (test_x, test_y) = part(40), part(10)
    np.savez(folder / "toy.npz", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


def test_a_method_and_a_dataset_defined_outside_the_package_train_and_evaluate(tmp_path, capsys):
    write_toy_npz(tmp_path)
    output = tmp_path / "run"
    args = ["train", "--set", "data.dataset=toy-npz", "--data-root", str(tmp_path), "--set", "data.imbalance_factor=4",
            "--set", "method.name=toy-label-smoothing", "--set", "method.smoothing=0.2", "--set", "model.backbone=resnet8",
            "--epochs", "3", "--batch-size", "16", "--device", "cpu", "--output", str(output), "--quiet"]
    assert main(args) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["method"] == "toy-label-smoothing" and summary["dataset"]["class_counts"] == [40, 25, 15, 10]
    record = json.loads((output / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["losses"]) == {"loss", "smoothed_ce"}
    assert main(["eval", str(output / "checkpoint_last.pt"), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["top1"] == pytest.approx(summary["final"]["top1"])


def test_the_new_methods_options_are_typed_and_checked():
    assert build_config(None, {"method.name": "toy-label-smoothing", "method.smoothing": "0.3"}).method.smoothing == 0.3
    with pytest.raises(ConfigError, match="method toy-label-smoothing has no option 'beta'.*its options: smoothing"):
        build_config(None, {"method.name": "toy-label-smoothing", "method.beta": "0.5"})
    with pytest.raises(ConfigError, match="method.smoothing must be in"):
        build_config(None, {"method.name": "toy-label-smoothing", "method.smoothing": "1.5"})
    space = search_space("toy-label-smoothing")  # what glmc tune searches: its own option and the common values
    assert space["method.smoothing"] == SearchRange(0.0, 0.3) and {"optim.lr", "optim.weight_decay"} <= set(space)


# ---------------------------------------------------------------- docs/extending.md's blocks, as a user's plugin

DOCS = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def documented_block(section: str) -> str:
    """The Python block of a section of docs/extending.md, which the docs say this test runs."""
    text = DOCS.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return text.split("```python\n", 1)[1].split("```", 1)[0]


@contextlib.contextmanager
def documented_plugin(section: str, registry: Registry, name: str, folder: Path, monkeypatch):
    """The section's block as a user's package would ship it: a module declared in the `glmc.plugins` entry points,
    which registers `name` in `registry` when glmc imports it; unregistered afterwards."""
    module = name.replace("-", "_") + "_glmc_plugin"
    (folder / "plugins").mkdir()
    (folder / "plugins" / f"{module}.py").write_text(documented_block(section))
    monkeypatch.syspath_prepend(str(folder / "plugins"))
    entry = importlib.metadata.EntryPoint(name=name, value=module, group=PLUGIN_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [entry] if group == PLUGIN_GROUP else [])
    try:
        yield
    finally:
        if name in registry:
            registry.unregister(name)
        sys.modules.pop(module, None)


# ---------------------------------------------------------------- an encoder of the user's own


@pytest.fixture
def tiny_plugin(tmp_path, monkeypatch):
    with documented_plugin("Adding a backbone", BACKBONES, "tiny-encoder", tmp_path, monkeypatch):
        yield


def test_the_documented_encoder_trains_with_glmc_from_the_command_line_and_a_baseline_from_python(tmp_path, tiny_plugin):
    write_toy_npz(tmp_path)
    common = {"data.dataset": "toy-npz", "data.data_root": str(tmp_path), "data.imbalance_factor": "4",
              "model.backbone": "tiny-encoder", "train.epochs": "2", "train.batch_size": "16", "train.device": "cpu"}
    glmc_run = tmp_path / "glmc"
    assert main(["train", *[arg for key, value in common.items() for arg in ("--set", f"{key}={value}")],
                 "--output", str(glmc_run), "--quiet"]) == 0  # the plugin registers the encoder as glmc starts
    losses = json.loads((glmc_run / "metrics.jsonl").read_text().splitlines()[-1])["losses"]
    assert {"ce", "cb", "sim"} <= set(losses)  # GLMC's heads, projection and predictor included, on the encoder
    summary = train(build_config(None, {**common, "method.name": "ldam-drw", "model.classifier": "cosine"}),
                    tmp_path / "ldam", quiet=True)
    assert summary["backbone"] == "tiny-encoder" and summary["final"]["epoch"] == 2
    model = create_model("tiny-encoder", 4)
    encoder_class = type(model.encoder)
    assert encoder_class.__name__ == "TinyEncoder" and model.heads.projection.in_features == encoder_class.feature_dim


def test_a_plugin_that_fails_to_import_is_one_line(tmp_path, monkeypatch, capsys):
    entry = importlib.metadata.EntryPoint(name="broken", value="no_such_glmc_plugin", group=PLUGIN_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [entry] if group == PLUGIN_GROUP else [])
    assert main(["presets"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("glmc: error: plugin broken (no_such_glmc_plugin) failed to import: ModuleNotFoundError")
    assert "\n" not in err


def test_an_encoder_must_say_its_feature_size():
    class Nameless(nn.Module):
        def forward(self, x):
            return x.flatten(1)

    with pytest.raises(ConfigError, match="feature_dim"):
        with_heads(Nameless(), 4)


def test_a_state_dict_of_the_networks_that_held_their_heads_loads(tmp_path):
    """Weights written before encoders and heads were apart have the encoder's keys at the top level."""
    torch.manual_seed(0)
    model = create_model("resnet8", 10)
    legacy = {key.removeprefix("encoder."): value for key, value in model.state_dict().items()}
    assert "stem.0.weight" in legacy and "heads.fc_cb.weight" in legacy
    fresh = create_model("resnet8", 10)
    fresh.load_state_dict(legacy)  # strict: every key placed
    for (name, want), got in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(want, got), name


# ---------------------------------------------------------------- a calibration of the user's own


@pytest.fixture
def bias_scale_plugin(tmp_path, monkeypatch):
    with documented_plugin("Adding a calibration", CALIBRATIONS, "bias-scale", tmp_path, monkeypatch):
        yield


def test_the_documented_calibration_calibrates_a_checkpoint_from_the_command_line(tiny_run, tmp_path, bias_scale_plugin,
                                                                                   capsys):
    source = tiny_run / "checkpoint_last.pt"
    output = tmp_path / "halved.pt"
    assert main(["calibrate", str(source), "--method", "bias-scale", "--set", "scale=0.5", "--output", str(output),
                 "--device", "cpu"]) == 0
    before, after = load_checkpoint(source)["model"], load_checkpoint(output)["model"]
    assert torch.allclose(after["heads.fc_cb.bias"], 0.5 * before["heads.fc_cb.bias"])
    assert torch.equal(after["heads.fc_cb.weight"], before["heads.fc_cb.weight"])
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["calibration"] == "bias-scale" and record["params"] == {"scale": 0.5}
    assert record["bias_norm"] == pytest.approx(float(after["heads.fc_cb.bias"].norm()), abs=1e-6)
    assert load_checkpoint(output)["calibrations"][-1]["calibration"] == "bias-scale"
    capsys.readouterr()
    assert main(["eval", str(output), "--device", "cpu", "--json"]) == 0  # the calibrated checkpoint is a checkpoint
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["top1"] == pytest.approx(record["after"]["top1"])


def test_the_documented_calibration_is_listed_typed_and_refuses_a_cosine_head(tiny_run, tmp_path, bias_scale_plugin,
                                                                              capsys):
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    assert "bias-scale:scale=0.0" in "".join(capsys.readouterr().out.split())  # argparse wraps lines at hyphens too
    source = tiny_run / "checkpoint_last.pt"
    assert main(["calibrate", str(source), "--method", "bias-scale", "--set", "scale=half", "--output",
                 str(tmp_path / "x.pt"), "--device", "cpu"]) == 2
    assert "bias-scale.scale" in capsys.readouterr().err
    cosine = write_cosine_checkpoint(source, tmp_path / "cosine.pt")
    assert main(["calibrate", str(cosine), "--method", "bias-scale", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "calibration bias-scale needs a linear classifier with a bias" in err and "\n" not in err
    assert not (tmp_path / "cosine-bias-scale.pt").exists() and not (tmp_path / "x.pt").exists()
