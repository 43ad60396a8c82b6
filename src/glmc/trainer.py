"""A training run and its folder: config.yaml, metrics.jsonl, summary.json, checkpoints.

The state of a run is its epoch, the next step inside it and the global step; randomness is
derived from (seed, epoch, step), so resuming from a checkpoint continues exactly.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

import glmc
from glmc.augment import CifarAugment, Normalise
from glmc.checkpoint import load_checkpoint, save_checkpoint
from glmc.config import Config, config_from_dict, dump_config, flatten
from glmc.data.datasets import LongTailedDataset, create_dataset
from glmc.data.loader import TwoStreamLoader
from glmc.engine import (
    LossMeter,
    create_optimizer,
    evaluate,
    learning_rate,
    limited,
    resolve_device,
    set_learning_rate,
    step_rng,
    train_step,
)
from glmc.errors import GlmcError
from glmc.methods import create_method
from glmc.metrics import Metrics
from glmc.models import create_model
from glmc.shots import SHOT_BOUNDS

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
BEST_LABEL = "best epoch, selected on the test set"


@dataclass
class RunState:
    epoch: int = 0  # the epoch being trained (from 0)
    step: int = 0  # the next step inside it
    global_step: int = 0
    seconds: float = 0.0  # training + evaluation time over all sessions of the run
    best: dict | None = None  # the best evaluation record so far (test-selected)
    records: list[dict] = field(default_factory=list)


def train(config: Config, output: str | os.PathLike, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> dict:
    """Train, evaluate and write the run folder; returns the summary."""
    output = Path(output)
    device = resolve_device(config.train.device)
    torch.manual_seed(config.train.seed)
    dataset = create_dataset(config.data)
    bounds = SHOT_BOUNDS[config.train.shot_bounds]
    counts = dataset.class_counts

    model = create_model(config.model.backbone, dataset.num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    normalise = Normalise(dataset.mean, dataset.std)
    loader = TwoStreamLoader(
        torch.from_numpy(dataset.train_images).to(device),
        torch.from_numpy(dataset.train_labels).to(device),
        counts,
        config.train.batch_size,
        CifarAugment(normalise),
        sampler=config.train.sampler,
        resample_weighting=config.train.resample_weighting,
        seed=config.train.seed,
        drop_last=config.train.drop_last,
    )
    method = create_method(config.method, counts, config.train.epochs)
    optimizer = create_optimizer(model, config.optim, device)
    test_images = torch.from_numpy(dataset.test_images).to(device)
    test_labels = torch.from_numpy(dataset.test_labels).to(device)

    prepare_output(output, resume, overwrite)  # only once every input has been checked
    state = RunState()
    if resume:
        state = restore(output / LAST_CHECKPOINT, config, dataset, model, optimizer)
    (output / CONFIG_FILE).write_text(dump_config(config))
    keep_records(output / METRICS_FILE, state.records)

    epochs, max_steps = config.train.epochs, config.train.max_steps
    log(quiet, f"training {config.model.backbone} with {config.method.name} on {dataset.name} "
        f"({len(dataset.train_labels)} images, {dataset.fingerprint[:19]}…) on {device}, {len(loader)} steps per epoch")
    while state.epoch < epochs and (max_steps is None or state.global_step < max_steps):
        started = time.time()
        epoch = state.epoch
        set_learning_rate(optimizer, learning_rate(epoch, epochs, config.optim))
        meter = LossMeter()
        steps_left = None if max_steps is None else max_steps - state.global_step
        batches = limited(loader.epoch(epoch, state.step), steps_left)
        total = len(loader) - state.step if steps_left is None else min(len(loader) - state.step, steps_left)
        bar = tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{epochs}", disable=quiet, leave=False, file=sys.stderr)
        for batch in bar:
            parts = train_step(model, method, optimizer, batch, epoch, step_rng(config.train.seed, epoch, state.step))
            meter.add(parts)
            state.step += 1
            state.global_step += 1
            if state.step % 25 == 0:
                bar.set_postfix(loss=f"{parts['loss'].item():.3f}")  # a sync every 25 steps only
        bar.close()

        epoch_done = state.step >= len(loader)
        stopping = max_steps is not None and state.global_step >= max_steps
        if epoch_done:
            state.epoch, state.step = epoch + 1, 0
        if stopping or (epoch_done and (state.epoch % config.train.eval_every == 0 or state.epoch == epochs)):
            metrics = evaluate(model, test_images, test_labels, counts, normalise, config.train.eval_batch_size, bounds)
            record = evaluation_record(epoch, state, metrics, meter, optimizer, time.time() - started)
            state.records.append(record)
            append_record(output / METRICS_FILE, record)
            log(quiet, evaluation_line(record, epochs))
            if state.best is None or record["top1"] > state.best["top1"]:
                state.best = record
                save_checkpoint(output / BEST_CHECKPOINT, checkpoint_payload(config, dataset, model, optimizer, state, BEST_LABEL))
        state.seconds += time.time() - started
        save_checkpoint(output / LAST_CHECKPOINT, checkpoint_payload(config, dataset, model, optimizer, state, "last"))

    summary = make_summary(config, dataset, state, device)
    (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    log(quiet, shots_table(summary))
    return summary


def log(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


def prepare_output(output: Path, resume: bool, overwrite: bool) -> None:
    holds_run = (output / CONFIG_FILE).exists() or (output / LAST_CHECKPOINT).exists()
    if resume and not (output / LAST_CHECKPOINT).exists():
        raise GlmcError(f"nothing to resume: {output / LAST_CHECKPOINT} does not exist")
    if holds_run and not (resume or overwrite):
        raise GlmcError(f"{output} already holds a run; pass --resume to continue it or --overwrite to replace it")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GlmcError(f"cannot create output folder {output}: {error.strerror}") from None
    if not os.access(output, os.W_OK):
        raise GlmcError(f"output folder {output} is not writable")
    if overwrite and not resume:
        for name in (METRICS_FILE, SUMMARY_FILE, LAST_CHECKPOINT, BEST_CHECKPOINT):
            (output / name).unlink(missing_ok=True)


def checkpoint_payload(config: Config, dataset: LongTailedDataset, model, optimizer, state: RunState, kind: str) -> dict:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "kind": kind,
        "config": config.to_dict(),
        "backbone": config.model.backbone,
        "num_classes": dataset.num_classes,
        "class_names": dataset.class_names,
        "class_counts": dataset.class_counts,
        "fingerprint": dataset.fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": {
            "epoch": state.epoch,
            "step": state.step,
            "global_step": state.global_step,
            "seconds": state.seconds,
            "best": state.best,
            "records": state.records,
        },
        "rng": rng,
    }


def restore(path: Path, config: Config, dataset: LongTailedDataset, model, optimizer) -> RunState:
    checkpoint = load_checkpoint(path)
    check_compatible(checkpoint, config.model.backbone, dataset.num_classes, path)
    if checkpoint["fingerprint"] != dataset.fingerprint:
        raise GlmcError(f"{path} was trained on split {checkpoint['fingerprint']}, this config selects {dataset.fingerprint}")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    return RunState(**checkpoint["state"])


def check_compatible(checkpoint: dict, backbone: str, num_classes: int, path: Path) -> None:
    if (checkpoint["backbone"], checkpoint["num_classes"]) != (backbone, num_classes):
        raise GlmcError(
            f"{path} holds a {checkpoint['backbone']} with {checkpoint['num_classes']} classes, "
            f"not a {backbone} with {num_classes} classes"
        )


def keep_records(path: Path, records: list[dict]) -> None:
    """metrics.jsonl holds exactly the checkpoint's records (drops any written after it)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def append_record(path: Path, record: dict) -> None:
    with open(path, "a") as file:
        file.write(json.dumps(record) + "\n")


def evaluation_record(epoch: int, state: RunState, metrics: Metrics, meter: LossMeter, optimizer, seconds: float) -> dict:
    return {
        "epoch": epoch + 1,
        "global_step": state.global_step,
        "partial_epoch": state.step != 0,
        **metrics.to_json(),
        "losses": meter.means(),
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": round(seconds, 3),
    }


def evaluation_line(record: dict, epochs: int) -> str:
    shots = " / ".join(f"{name} {fmt(record[name])}" for name in ("many", "medium", "few"))
    loss = record["losses"].get("loss", float("nan"))
    return (f"epoch {record['epoch']:>3}/{epochs}  loss {loss:.4f}  top1 {record['top1']:.2f}  "
            f"top5 {record['top5']:.2f}  {shots}  lr {record['lr']:.5f}  {record['seconds']:.1f}s")


def fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:5.2f}"


def shots_table(summary: dict) -> str:
    rows = [("final", summary["final"]), (f"best (epoch {summary['best']['epoch']}, test-selected)", summary["best"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':<{width}}  {'top1':>6} {'many':>6} {'medium':>6} {'few':>6}"]
    for name, record in rows:
        lines.append(f"{name:<{width}}  {record['top1']:6.2f} " + " ".join(f"{fmt(record[g]):>6}" for g in ("many", "medium", "few")))
    return "\n".join(lines)


METRIC_KEYS = ("epoch", "global_step", "top1", "top5", "many", "medium", "few", "per_class", "shot_bounds", "num_samples")


def make_summary(config: Config, dataset: LongTailedDataset, state: RunState, device: torch.device) -> dict:
    final = state.records[-1]
    return {
        "final": {k: final[k] for k in METRIC_KEYS},
        "best": {k: state.best[k] for k in METRIC_KEYS} | {"label": BEST_LABEL},
        "fingerprint": dataset.fingerprint,
        "dataset": dataset.card(SHOT_BOUNDS[config.train.shot_bounds]).to_json(),
        "method": config.method.name,
        "backbone": config.model.backbone,
        "epochs": config.train.epochs,
        "steps": state.global_step,
        "wall_seconds": round(state.seconds, 2),
        "version": glmc.__version__,
        "git_commit": git_commit(),
        "device": device_name(device),
        "torch": torch.__version__,
        "config": config.to_dict(),
    }


def git_commit() -> str | None:
    """The commit of the glmc source tree this run used, `-dirty` if it had local changes."""
    source = Path(glmc.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_run_config(run_dir: Path, overrides: dict) -> Config:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise GlmcError(f"{run_dir} holds no run to resume ({CONFIG_FILE} missing)")
    return config_from_dict({**flatten(yaml.safe_load(path.read_text())), **overrides})
