"""Evaluation: a model on held-out batches (training's evaluations and every command's), and a saved checkpoint restored
for it (glmc eval, report, predict, calibrate)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from glmc import distributed
from glmc.augment import Normalise
from glmc.checkpoint import checkpoint_classifier, load_checkpoint
from glmc.config import Config, stored_config
from glmc.data.datasets import Dataset, create_dataset
from glmc.devices import resolve_device
from glmc.errors import GlmcError
from glmc.metrics import ConfusionCounter, Metrics
from glmc.models import create_model
from glmc.precision import autocast, channels_last, predict_logits, resolve_precision
from glmc.shots import SHOT_BOUNDS, ShotBounds



def confusion_counts(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
                     precision: str = "fp32") -> ConfusionCounter:
    """The confusion matrix and top-5 count of `model` on un-augmented test batches, in `precision`.

    batches: (N x C x H x W normalised float, N labels) on the model's device.
    """
    counter = ConfusionCounter(num_classes)
    with in_eval_mode(model):
        for inputs, targets in batches:
            counter.update(predict_logits(model, inputs, precision), targets)
    return counter


@contextlib.contextmanager
def in_eval_mode(*models: nn.Module) -> Iterator[None]:
    """`models` in eval mode for the block, each back in the mode it was in afterwards."""
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, training in reversed(list(zip(models, modes))):
            model.train(training)


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    class_counts: Sequence[int],
    shot_bounds: ShotBounds,
    precision: str = "fp32",
) -> Metrics:
    """Top-1/5, per-class and many/medium/few accuracy on un-augmented test batches.

    Under torchrun each rank passes its slice of the test set; the counts are summed over
    ranks, so every rank returns the metrics of the whole test set.
    """
    counter = confusion_counts(model, batches, len(class_counts), precision)
    return finished_metrics(counter, class_counts, shot_bounds, next(model.parameters()).device)


def finished_metrics(counter: ConfusionCounter, class_counts: Sequence[int], shot_bounds: ShotBounds,
                     device: torch.device) -> Metrics:
    """The counter's metrics; under torchrun its counts are first summed over ranks."""
    if distributed.active():
        counter.reduce(distributed.sum_across, device)
    return counter.finish(class_counts, shot_bounds)


@dataclass(frozen=True)
class Restored:
    """A checkpoint rebuilt for evaluation: its model on `device`, its dataset and normalisation."""

    checkpoint: dict
    config: Config
    dataset: Dataset
    model: nn.Module  # in eval mode, on `device`
    normalise: Normalise
    device: torch.device
    precision: str  # of the evaluation forward (the run's eval.precision, resolved)


def checkpoint_config(checkpoint: dict, data_root: str | None = None) -> Config:
    """The run's config from a checkpoint, optionally reading the data from `data_root`; never downloads."""
    overrides = {"data.data_root": data_root} if data_root else {}
    return stored_config(checkpoint["config"], {**overrides, "data.download": False})


def checkpoint_dataset(checkpoint: dict, path: str | os.PathLike, config: Config) -> Dataset:
    """The checkpoint's dataset, rebuilt from its config; the split must be the one it trained on."""
    dataset = create_dataset(config.data)
    if dataset.fingerprint != checkpoint["fingerprint"]:
        raise GlmcError(f"{path} was trained on split {checkpoint['fingerprint']}, the data found gives {dataset.fingerprint}")
    return dataset


def restore_model(checkpoint: dict, path: str | os.PathLike, device: torch.device) -> nn.Module:
    """The checkpoint's backbone with its weights, in eval mode on `device`."""
    model = create_model(checkpoint["backbone"], checkpoint["num_classes"], classifier=checkpoint_classifier(checkpoint),
                         logit_scale=checkpoint_logit_scale(checkpoint))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise GlmcError(f"{path} does not fit a {checkpoint['backbone']}: {str(error).splitlines()[0]}") from None
    return model.to(device, memory_format=torch.channels_last).eval()


def checkpoint_logit_scale(checkpoint: dict) -> float:
    """The factor on fc_cb's outputs: the method's (LDAM's s), unless a calibration recorded its own (temperature
    scaling of a cosine head: s / T)."""
    if "logit_scale" in checkpoint:
        return float(checkpoint["logit_scale"])
    return checkpoint_config(checkpoint).method.logit_scale


def checkpoint_eval_precision(checkpoint: dict, device: torch.device) -> str:
    """The precision of evaluation forwards for a checkpoint: its run's eval.precision (fp32 unless set), resolved."""
    return resolve_precision(checkpoint["config"].get("eval", {}).get("precision", "fp32"), device)


def restore_for_evaluation(path: str | os.PathLike, data_root: str | None = None, device: str = "auto") -> Restored:
    """Load a checkpoint and rebuild what evaluating it needs: model, test set, normalisation."""
    checkpoint = load_checkpoint(path)
    config = checkpoint_config(checkpoint, data_root)
    dataset = checkpoint_dataset(checkpoint, path, config)
    target = resolve_device(device)
    model = restore_model(checkpoint, path, target)
    return Restored(checkpoint, config, dataset, model, Normalise(dataset.mean, dataset.std), target,
                    checkpoint_eval_precision(checkpoint, target))


def evaluate_checkpoint(path: str, data_root: str | None = None, device: str = "auto", shot_bounds: str | None = None,
                        part: str = "test") -> Metrics:
    return evaluate_restored(restore_for_evaluation(path, data_root, device), shot_bounds, part=part)


def evaluate_restored(restored: Restored, shot_bounds: str | None = None, model: nn.Module | None = None,
                      part: str = "test") -> Metrics:
    """Metrics of the restored model (or of `model`, e.g. a calibrated copy of it) on the
    test set, or on the validation set (`part="val"`) where the dataset has one."""
    config = restored.config
    bounds = SHOT_BOUNDS[shot_bounds or config.train.shot_bounds]
    test_set = restored.dataset.test_set(config.data, config.train.eval_batch_size, restored.device, part=part)
    return evaluate(restored.model if model is None else model, test_set.batches(), restored.checkpoint["class_counts"], bounds,
                    restored.precision)


def same_encoder(model: nn.Module, other: nn.Module) -> bool:
    """Whether two models (`GLMCModel`s) have the same encoder, weight for weight and buffer for buffer,
    as a checkpoint and its calibrations have: they differ in their heads only."""
    mine, theirs = model.encoder.state_dict(), other.encoder.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)


@torch.no_grad()
def evaluate_heads(restored: Restored, models: Sequence[nn.Module], shot_bounds: str | None = None,
                   part: str = "test") -> list[Metrics]:
    """The metrics of each of `models`, which share the restored model's encoder (`same_encoder`): the test
    set passes through that encoder once, then through each model's heads. Each model's metrics are
    `evaluate_restored(restored, model=model)`'s (the same forward in the same precision), for the time
    of about one evaluation instead of one each: the encoder is almost all of it."""
    for model in models:
        if model is not restored.model and not same_encoder(restored.model, model):
            raise ValueError("evaluate_heads takes models with the restored model's encoder; evaluate_restored "
                             "evaluates any other")
    config, class_counts = restored.config, restored.checkpoint["class_counts"]
    test_set = restored.dataset.test_set(config.data, config.train.eval_batch_size, restored.device, part=part)
    counters = [ConfusionCounter(len(class_counts)) for _ in models]
    with in_eval_mode(restored.model, *models):
        for inputs, targets in test_set.batches():
            with autocast(restored.precision, inputs.device):
                features = restored.model.encoder(channels_last(inputs))  # N x d
                logits = [model.heads(features).logits.float() for model in models]  # as predict_logits gives them
            for counter, model_logits in zip(counters, logits):
                counter.update(model_logits, targets)
    bounds = SHOT_BOUNDS[shot_bounds or config.train.shot_bounds]
    return [finished_metrics(counter, class_counts, bounds, restored.device) for counter in counters]
