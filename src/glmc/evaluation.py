"""Re-evaluate a saved checkpoint on its dataset's test set."""

from __future__ import annotations


import torch

from glmc.augment import Normalise
from glmc.checkpoint import load_checkpoint
from glmc.config import config_from_dict, flatten
from glmc.data.datasets import create_dataset
from glmc.engine import evaluate, resolve_device
from glmc.errors import GlmcError
from glmc.metrics import Metrics
from glmc.models import create_model
from glmc.shots import SHOT_BOUNDS


def evaluate_checkpoint(path: str, data_root: str | None = None, device: str = "auto", shot_bounds: str | None = None) -> Metrics:
    checkpoint = load_checkpoint(path)
    overrides = {"data.data_root": data_root} if data_root else {}
    config = config_from_dict({**flatten(checkpoint["config"]), **overrides, "data.download": False})
    dataset = create_dataset(config.data)
    if dataset.fingerprint != checkpoint["fingerprint"]:
        raise GlmcError(f"{path} was trained on split {checkpoint['fingerprint']}, the data found gives {dataset.fingerprint}")
    target = resolve_device(device)
    model = create_model(checkpoint["backbone"], checkpoint["num_classes"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise GlmcError(f"{path} does not fit a {checkpoint['backbone']}: {str(error).splitlines()[0]}") from None
    model = model.to(target)
    if target.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    bounds = SHOT_BOUNDS[shot_bounds or config.train.shot_bounds]
    return evaluate(
        model,
        torch.from_numpy(dataset.test_images).to(target),
        torch.from_numpy(dataset.test_labels).to(target),
        checkpoint["class_counts"],
        Normalise(dataset.mean, dataset.std),
        config.train.eval_batch_size,
        bounds,
    )
