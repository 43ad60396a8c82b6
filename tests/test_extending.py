"""A new method and a new in-memory dataset, each one definition outside the package, train end to end.

This is the README's "Adding a method" and "Adding a dataset", word for word in spirit: if it
needs more than the decorated definition, this test has to grow, and the README is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import pytest
import torch.nn.functional as F

from glmc.cli import main
from glmc.config import build_config
from glmc.data.datasets import DATASETS, DataConfig
from glmc.data.in_memory import InMemoryDataset
from glmc.data.longtail import exponential_profile, long_tailed_indices
from glmc.errors import ConfigError
from glmc.methods import METHODS, MethodOptions, Needs, StepResult
from glmc.methods.base import SearchRange, require, search_space


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
