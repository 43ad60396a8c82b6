"""A training run: building its parts from the config, and the loop that trains and evaluates it.

The state of a run is its epoch, the next step inside it and the global step; randomness is
derived from (seed, epoch, step), so resuming from a checkpoint continues exactly. The run
folder's files are glmc.rundir's; checkpoint payloads and their restore, glmc.checkpoint's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

import glmc
from glmc import distributed
from glmc.checkpoint import restore_training, training_payload
from glmc.config import Config
from glmc.data.batch import HeldOutBatches, TrainingBatches
from glmc.data.datasets import Dataset, create_dataset
from glmc.distributed import SINGLE, Shard
from glmc.engine import (
    LossMeter,
    NonFiniteWatch,
    create_optimizer,
    evaluate,
    learning_rate,
    limited,
    resolve_device,
    set_learning_rate,
    step_rng,
    train_step,
)
from glmc.errors import ConfigError, GlmcError, RunInterrupted
from glmc.methods import create_method
from glmc.methods.base import Method
from glmc.metrics import SHOT_GROUPS, Metrics, format_percent, format_shots
from glmc.models import create_model, use_heads
from glmc.precision import MixedPrecision, resolve_precision
from glmc.provenance import device_name, git_commit
from glmc.rundir import BEST_LABEL, BEST_ON_VALIDATION_LABEL, TENSORBOARD_DIR, Resume, RunFolder
from glmc.shots import SHOT_BOUNDS
from glmc.tensorboard import TensorBoardLog, summary_writer_class


@dataclass
class RunState:
    epoch: int = 0  # the epoch being trained (from 0)
    step: int = 0  # the next step inside it
    global_step: int = 0
    seconds: float = 0.0  # training + evaluation time over all sessions of the run
    best: dict | None = None  # the best evaluation record so far (test-selected)
    records: list[dict] = field(default_factory=list)
    skipped_steps: int = 0  # steps skipped for a non-finite loss (train.nonfinite=skip)
    # loss sums of the unfinished epoch, one per process (name -> W tensor), so its means survive a resume
    epoch_loss_totals: dict | None = None
    epoch_loss_steps: int = 0
    unreadable: list[str] = field(default_factory=list)  # images (training or test) skipped as undecodable (data.unreadable=skip)


@dataclass
class Run:
    """Everything a run trains and evaluates with, built (and so checked) before any file is written."""

    config: Config
    device: torch.device
    dataset: Dataset
    model: torch.nn.Module  # the module whose state is saved and evaluated
    step_model: torch.nn.Module  # what the training step calls: `model` in its precision, wrapped by DDP and/or torch.compile
    loader: TrainingBatches  # builds only the streams and views the method reads
    method: Method
    optimizer: torch.optim.Optimizer
    test_set: HeldOutBatches | None  # None with eval.test=false: the test set is never looked at
    val_set: HeldOutBatches | None  # the validation set (data.validation=held-out), or None
    precision: str  # of the training forward, resolved: "fp32" or "bf16"
    eval_precision: str  # of the evaluation forward, resolved
    interim_precision: str  # of the evaluations during training before the last one, resolved
    data_digest: dict[str, str]  # the dataset's content digest when the run was built
    shard: Shard = SINGLE  # this process's rank among the torchrun processes
    # called with every evaluation's record (glmc tune reports it to its pruner, which may stop the run by raising)
    on_evaluation: Callable[[dict], None] | None = None


def train(config: Config, output: str | os.PathLike, resume: Resume = Resume.NEVER, overwrite: bool = False,
          quiet: bool = False, tensorboard: bool = False, command: str | None = None,
          on_evaluation: Callable[[dict], None] | None = None) -> dict:
    """Train, evaluate and write the run folder; returns the summary.

    `resume`: ALWAYS continues the run `output` holds, NEVER starts one there (refused if it holds a run,
    unless `overwrite`), IF_SAME_RUN continues it if it is this very run and starts it otherwise. Decided once
    this process holds the folder's lease: a folder another live process writes is refused (`FolderInUse`).
    `tensorboard`: also log every metrics.jsonl record's scalars under `output/tensorboard/`.
    `command`: the command line that started this session, for the run's sessions.jsonl and lock.json.
    `on_evaluation`: called with every evaluation's metrics.jsonl record, after it is written.
    """
    output = Path(output)
    shard, device = distributed.start(config.train.device)
    try:
        return train_process(config, output, shard, device, resume, overwrite, quiet or not shard.is_main,
                             tensorboard and shard.is_main, command, on_evaluation)
    finally:
        distributed.stop()


def train_process(config: Config, output: Path, shard: Shard, device: str, resume: Resume, overwrite: bool,
                  quiet: bool, tensorboard: bool, command: str | None = None,
                  on_evaluation: Callable[[dict], None] | None = None) -> dict:
    """`train` in one process: the only one, or one rank of a torchrun job (only rank 0 writes, holding the lease)."""
    folder = RunFolder(output)
    if shard.is_main:
        folder.check_writable(resume, overwrite, config)  # before the slow part: a refusal costs nothing
    if tensorboard:
        summary_writer_class()  # no package: one line now, not after the folder is made
    run = build_run(config, shard=shard, device=device)
    run.on_evaluation = on_evaluation
    try:
        # rank 0 decides under the lease, once every input has been checked; the others after it, as it has not
        # written since
        resumes = folder.prepare(resume, overwrite, config, command or "") if shard.is_main else None
        distributed.barrier()
        if resumes is None:
            resumes = resume is Resume.ALWAYS or (resume is Resume.IF_SAME_RUN and folder.holds_this_run(config))
        return train_folder(run, folder, resumes, quiet, tensorboard, command)
    finally:
        folder.release()


def train_folder(run: Run, folder: RunFolder, resume: bool, quiet: bool, tensorboard: bool, command: str | None) -> dict:
    """Train the run in its prepared folder, from its last checkpoint if `resume`."""
    config, shard = run.config, run.shard
    state = RunState()
    if resume and folder.has_checkpoint():
        state = restore(folder, run)
    if resume and finished(state, config) and folder.holds_summary():
        log(quiet, f"nothing to do: {folder.path} holds this run, finished")
        return folder.read_summary()
    board = TensorBoardLog(folder.path / TENSORBOARD_DIR, resume) if tensorboard else None
    if shard.is_main:
        folder.write_config(config)
        folder.write_classes(run.dataset.class_names)
        folder.keep_records(state.records)
    log(quiet, f"training {config.model.backbone} with {config.method.name} on {run.dataset.name} "
        f"({len(run.dataset.train_labels)} images, {run.dataset.fingerprint[:19]}…) on {run.device}, "
        f"{len(run.loader)} steps per epoch" + (f", {shard.world} processes" if shard.world > 1 else ""))
    session = Session(run, state, command)
    if shard.is_main:
        folder.begin_session(session.beginning())
    clock = Clock(state)
    try:
        with stop_requests() as stop:
            while not finished(state, config):
                logged = len(state.records)
                train_epoch(run, state, folder, clock, stop, quiet)
                if board:
                    board.log_all(state.records[logged:])
    except BaseException as error:
        if shard.is_main:
            with contextlib.suppress(GlmcError):  # a full disk is already the error being raised
                folder.end_session(session.ending(clock, error))
        raise
    if board:
        board.close()
    summary = make_summary(config, run.dataset, state, run.device, shard.world,
                           {"train": run.precision, "eval": run.eval_precision, "interim_eval": run.interim_precision})
    if shard.is_main:
        folder.write_summary(summary)
        folder.end_session(session.ending(clock))
    log(quiet, shots_table(summary))
    return summary


def build_run(config: Config, dataset: Dataset | None = None, shard: Shard = SINGLE,
              device: str | None = None) -> Run:
    """The run's parts; `dataset` replaces the configured one (benchmarks on stand-in data).

    `device` replaces config.train.device (a torchrun rank's own GPU).
    """
    device = resolve_device(device or config.train.device)
    torch.manual_seed(config.train.seed)
    dataset = dataset or create_dataset(config.data)
    train = config.train
    method = create_method(config.method, dataset.class_counts, train.epochs)
    model = create_model(config.model.backbone, dataset.num_classes, classifier=config.model.classifier)
    model = model.to(device, memory_format=torch.channels_last)
    use_heads(model, method.needs.heads)  # the others are not computed and get no gradient
    precision = resolve_precision(train.precision, device)
    loader = dataset.train_loader(config.data, train.batch_size, device, sampler=train.sampler,
                                  resample_weighting=train.resample_weighting, seed=train.seed,
                                  drop_last=train.drop_last, shard=shard, spec=method.needs.batch)
    return Run(
        config=config,
        device=device,
        dataset=dataset,
        model=model,
        step_model=step_model(model, config, shard, device, precision),
        loader=loader,
        method=method,
        optimizer=create_optimizer(model, config.optim, device),
        test_set=dataset.test_set(config.data, train.eval_batch_size, device, shard) if config.eval.test else None,
        val_set=(dataset.test_set(config.data, train.eval_batch_size, device, shard, part="val")
                 if config.data.validation == "held-out" else None),
        precision=precision,
        eval_precision=resolve_precision(config.eval.precision, device),
        interim_precision=resolve_precision(config.eval.interim_precision, device),
        data_digest=dataset.content_digest(),
        shard=shard,
    )


def step_model(model: torch.nn.Module, config: Config, shard: Shard, device: torch.device, precision: str) -> torch.nn.Module:
    """What the training step calls: `model` with its forward in `precision` and fp32 outputs; under torchrun
    in a DDP wrapper (SyncBatchNorm first if asked); compiled if asked."""
    wrapped = model
    if shard.world > 1:
        if config.train.sync_batchnorm and device.type != "cuda":
            raise ConfigError("train.sync_batchnorm needs CUDA devices: PyTorch's SyncBatchNorm only runs on GPUs")
        if config.train.sync_batchnorm:
            # converts in place where it can; the returned module shares every parameter and buffer with `model`
            wrapped = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    wrapped = MixedPrecision(wrapped, precision, device)
    if shard.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(wrapped, mode=config.train.compile_mode) if config.train.compile else wrapped


def finished(state: RunState, config: Config) -> bool:
    max_steps = config.train.max_steps
    return state.epoch >= config.train.epochs or (max_steps is not None and state.global_step >= max_steps)


class Session:
    """One `glmc train` working on a run, as sessions.jsonl records it: where it began, and how it ended."""

    def __init__(self, run: Run, state: RunState, command: str | None) -> None:
        self.run, self.command, self.started = run, command, time.time()
        self.start = position(state)

    def beginning(self) -> dict:
        run = self.run
        return {
            "started": utc(self.started),
            **({"command": self.command} if self.command else {}),
            "from": self.start,
            "host": platform.node(),
            "pid": os.getpid(),
            "device": device_name(run.device),
            "processes": run.shard.world,
            "precision": {"train": run.precision, "eval": run.eval_precision},
            "version": glmc.__version__,
            "git_commit": git_commit(),
            "torch": torch.__version__,
        }

    def ending(self, clock: Clock, error: BaseException | None = None) -> dict:
        """`reached`: where the run's last checkpoint stands, which is where the next session goes on
        from (after an error, steps trained since that checkpoint are not counted)."""
        ended = time.time()
        return {"ended": utc(ended), "seconds": round(ended - self.started, 1), "reached": clock.saved_position,
                "outcome": outcome(error)}


def position(state: RunState) -> dict:
    return {"epoch": state.epoch, "step": state.step, "global_step": state.global_step}


def utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def outcome(error: BaseException | None) -> str:
    """How a session ended: finished, the signal that stopped it after a checkpoint, or the error."""
    if error is None:
        return "finished"
    if isinstance(error, RunInterrupted):
        return signal.Signals(error.exit_code - 128).name
    if isinstance(error, KeyboardInterrupt):
        return "stopped at once by a second signal; the steps since the last checkpoint are lost"
    first_line = (str(error).splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


class Clock:
    """Training seconds over all sessions of a run (those before this one plus this one's), and the
    time since the last checkpoint and where it stands."""

    def __init__(self, state: RunState) -> None:
        self.earlier, self.started = state.seconds, time.time()
        self.saved_at = time.monotonic()
        self.saved_position = position(state)  # of the checkpoint this session began from, then of its own

    def total(self) -> float:
        return self.earlier + time.time() - self.started

    def checkpoint_due(self, minutes: float | None) -> bool:
        return minutes is not None and time.monotonic() - self.saved_at >= 60 * minutes

    def mark_saved(self, state: RunState) -> None:
        self.saved_at, self.saved_position = time.monotonic(), position(state)


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Turns SIGINT/SIGTERM into a request the loop honours after the current step.

    A second signal stops at once (KeyboardInterrupt).
    """
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def request(signum: int, frame: object) -> None:
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


SYNC_EVERY = 25  # steps between the loop's host-device syncs (progress bar, non-finite check, stop requests under torchrun)


def train_epoch(run: Run, state: RunState, folder: RunFolder, clock: Clock, stop: list[int], quiet: bool) -> None:
    """Train the rest of `state.epoch`, evaluate if due, checkpoint; honours stop requests."""
    config, epoch = run.config, state.epoch
    started = time.time()
    set_learning_rate(run.optimizer, learning_rate(epoch, config.train.epochs, config.optim))
    meter = LossMeter(this_ranks_totals(state.epoch_loss_totals, run.shard), state.epoch_loss_steps)
    watch = NonFiniteWatch()
    steps_left = None if config.train.max_steps is None else config.train.max_steps - state.global_step
    total = len(run.loader) - state.step if steps_left is None else min(len(run.loader) - state.step, steps_left)
    batches = limited(run.loader.epoch(epoch, state.step), steps_left)
    # disable=None: no bar when stderr is not a terminal, so a log file gets clean evaluation lines
    bar = tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{config.train.epochs}", disable=True if quiet else None,
               leave=False, file=sys.stderr)
    skip = config.train.nonfinite == "skip"
    for batch in bar:
        rng = step_rng(config.train.seed, epoch, state.step)
        parts = train_step(run.step_model, run.method, run.optimizer, batch, epoch, rng, skip_nonfinite=skip)
        state.step += 1
        state.global_step += 1
        if parts is None:
            state.skipped_steps += 1
        else:
            meter.add(parts)
            watch.observe(parts, state.global_step - 1)
        sync_point = state.step % SYNC_EVERY == 0 or state.step == len(run.loader)
        if state.step % SYNC_EVERY == 0:
            watch.check()
            if meter.steps:
                bar.set_postfix(loss=f"{meter.totals['loss'].item() / meter.steps:.3f}")  # the epoch's running mean
        stop_now, checkpoint_due = agreed(run, stop, clock, sync_point)
        if stop_now:
            bar.close()
            save_last(run, state, folder, clock, watch, meter)
            signum = stop[0] if stop else signal.SIGTERM  # another rank was asked
            raise RunInterrupted(f"{signal.Signals(signum).name}: stopped at epoch {epoch + 1}, step {state.step}; "
                                 f"checkpoint saved, continue with: glmc train --resume {folder.path}", 128 + signum)
        every = config.train.checkpoint_every
        step_due = every is not None and state.global_step % every == 0
        if (checkpoint_due or step_due) and state.step < len(run.loader):  # the epoch's end checkpoints anyway
            save_last(run, state, folder, clock, watch, meter)
    bar.close()
    watch.check()

    epoch_done = state.step >= len(run.loader)
    if epoch_done:
        state.epoch, state.step = epoch + 1, 0
    if finished(state, config) or (epoch_done and state.epoch % config.train.eval_every == 0):
        evaluate_and_record(run, state, folder, meter, time.time() - started, quiet)
    save_last(run, state, folder, clock, watch, LossMeter() if epoch_done else meter)


def agreed(run: Run, stop: list[int], clock: Clock, sync_point: bool) -> tuple[bool, bool]:
    """Whether to stop after this step, and whether a time-based checkpoint is due.

    One process stops as soon as asked. Under torchrun all ranks decide both together at the
    sync points (every SYNC_EVERY steps and at the end of an epoch), in one all-reduce. The clock
    is read at sync points only.
    """
    due = sync_point and clock.checkpoint_due(run.config.train.checkpoint_minutes)
    if run.shard.world == 1:
        return bool(stop), due
    if not sync_point:
        return False, False
    stop_now, due = distributed.any_across_each([bool(stop), due], run.device)
    return stop_now, due


def save_last(run: Run, state: RunState, folder: RunFolder, clock: Clock, watch: NonFiniteWatch, meter: LossMeter) -> None:
    """Checkpoint the run as it stands, with the loss sums of the unfinished epoch (rank 0 writes)."""
    watch.check()  # never checkpoint a model that has seen a non-finite loss
    state.epoch_loss_totals = None if meter.totals is None else {
        name: distributed.gather_across(value) for name, value in meter.totals.items()}  # every rank's, for an exact resume
    state.epoch_loss_steps = meter.steps
    state.seconds = clock.total()
    note_unreadable(run, state)
    if run.shard.is_main:
        folder.save_last(payload(run, state, "last"))
    clock.mark_saved(state)


def payload(run: Run, state: RunState, kind: str) -> dict:
    return training_payload(kind, run.config, run.dataset, run.model, run.optimizer, dataclasses.asdict(state), run.data_digest)


def this_ranks_totals(saved: dict | None, shard: Shard) -> dict | None:
    """This rank's running loss sums from a checkpoint's per-process ones. Resumed on another number of
    processes, rank 0 takes their sum (the epoch's means stay right; only the order of additions changes)."""
    if saved is None:
        return None
    totals = {}
    for name, value in saved.items():
        if value.dim() == 0:  # checkpoints of glmc before per-process sums: one process
            value = value[None]
        if len(value) == shard.world:
            totals[name] = value[shard.rank].clone()
        else:
            totals[name] = value.sum() if shard.is_main else torch.zeros_like(value[0])
    return totals


def note_unreadable(run: Run, state: RunState) -> None:
    """Add the images skipped as undecodable (data.unreadable=skip), by any rank, to the run's list."""
    skipped = set(run.loader.unreadable_paths()).union(*(held_out.unreadable_paths() for held_out in (run.test_set, run.val_set)
                                                          if held_out is not None))
    state.unreadable = sorted(distributed.union_across(set(state.unreadable) | skipped))


def evaluate_and_record(run: Run, state: RunState, folder: RunFolder, meter: LossMeter, seconds: float, quiet: bool) -> None:
    config = run.config
    bounds = SHOT_BOUNDS[config.train.shot_bounds]
    distributed.share_buffers(run.model)  # every rank evaluates the weights rank 0 saves
    precision = run.eval_precision if finished(state, config) else run.interim_precision
    test, val = (None if held_out is None else
                 evaluate(run.model, held_out.batches(), run.dataset.class_counts, bounds, precision)
                 for held_out in (run.test_set, run.val_set))
    note_unreadable(run, state)
    epoch = state.epoch if state.step == 0 else state.epoch + 1  # 1-based: the epoch this evaluation ends or stops in
    record = evaluation_record(epoch, state, test, val, precision, epoch_losses(meter, run.shard), run.optimizer, seconds)
    state.records.append(record)
    if run.shard.is_main:
        folder.append_record(record)
    log(quiet, evaluation_line(record, config.train.epochs))
    if run.on_evaluation is not None:
        run.on_evaluation(record)
    if state.best is None or selection_score(record) > selection_score(state.best):
        state.best = record
        if run.shard.is_main:
            folder.save_best(payload(run, state, best_label(record)))


def selection_score(record: dict) -> float:
    """What the best epoch is chosen on: the validation set's balanced accuracy where the run has one, else the
    test top-1 (labelled as such: glmc's headline is always the final epoch)."""
    return record["val"]["balanced"] if "val" in record else record["top1"]


def best_label(record: dict) -> str:
    return BEST_ON_VALIDATION_LABEL if "val" in record else BEST_LABEL


def epoch_losses(meter: LossMeter, shard: Shard) -> dict[str, float]:
    """The epoch's mean loss parts, averaged over ranks."""
    if shard.world == 1 or not meter.totals:
        return meter.means()
    names = list(meter.totals)
    totals = distributed.sum_across(torch.stack([meter.totals[name] for name in names])).cpu().tolist()
    return {name: total / (meter.steps * shard.world) for name, total in zip(names, totals)}


def log(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


def restore(folder: RunFolder, run: Run) -> RunState:
    """The run's last good checkpoint loaded into its model and optimiser; returns its state."""
    state = RunState(**restore_training(folder.last_checkpoint, run.config, run.dataset, run.model, run.optimizer,
                                        run.data_digest))
    if state.epoch_loss_totals is not None:
        state.epoch_loss_totals = {name: value.to(run.device) for name, value in state.epoch_loss_totals.items()}
    return state


# what a record keeps of the validation set's metrics (`balanced`: the mean per-class accuracy, what glmc tune maximises)
VALIDATION_KEYS = ("top1", "balanced", "many", "medium", "few", "per_class", "ece", "nll", "num_samples")


def validation_json(metrics: Metrics) -> dict:
    values = metrics.to_json()
    tested = [accuracy for accuracy in values["per_class"] if accuracy is not None]
    values["balanced"] = round(sum(tested) / len(tested), 4)
    return {key: values[key] for key in VALIDATION_KEYS}


def evaluation_record(epoch: int, state: RunState, test: Metrics | None, val: Metrics | None, precision: str,
                      losses: dict[str, float], optimizer, seconds: float) -> dict:
    """One metrics.jsonl line: the test set's metrics at the top (unless eval.test=false), the validation set's
    under `val` (where the run has one), and the precision they were evaluated in."""
    return {
        "epoch": epoch,
        "global_step": state.global_step,
        "partial_epoch": state.step != 0,
        **(test.to_json() if test is not None else {}),
        **({"val": validation_json(val)} if val is not None else {}),
        "precision": precision,
        "losses": losses,
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": round(seconds, 3),
        "skipped_steps": state.skipped_steps,
    }


def evaluation_line(record: dict, epochs: int) -> str:
    loss = record["losses"].get("loss", float("nan"))
    test = (f"top1 {record['top1']:.2f}  top5 {record['top5']:.2f}  {format_shots(record, width=5)}  "
            f"ece {format_percent(record.get('ece'))}  ") if "top1" in record else ""
    val = record.get("val")
    validation = f"val {val['top1']:.2f} (balanced {val['balanced']:.2f})  " if val else ""
    return f"epoch {record['epoch']:>3}/{epochs}  loss {loss:.4f}  {test}{validation}lr {record['lr']:.5f}  {record['seconds']:.1f}s"


def shots_table(summary: dict) -> str:
    final, best = summary["final"], summary["best"]
    chosen = "validation-selected" if best.get("label") == BEST_ON_VALIDATION_LABEL else "test-selected"
    rows = [("final", final), (f"best (epoch {best['epoch']}, {chosen})", best)]
    if final.get("top1") is None:  # eval.test=false: only the validation set was evaluated
        rows = [("final, validation set", final["val"]), (f"best (epoch {best['epoch']}), validation set", best["val"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':<{width}}  {'top1':>6} {'many':>6} {'medium':>6} {'few':>6}"]
    for name, record in rows:
        lines.append(f"{name:<{width}}  " + " ".join(format_percent(record[key], width=6) for key in ("top1", *SHOT_GROUPS)))
    return "\n".join(lines)


METRIC_KEYS = ("epoch", "global_step", "top1", "top5", "many", "medium", "few", "per_class", "shot_bounds", "num_samples",
               "ece", "nll", "ece_many", "ece_medium", "ece_few", "reliability", "val")


def make_summary(config: Config, dataset: Dataset, state: RunState, device: torch.device, processes: int = 1,
                 precision: dict[str, str] | None = None) -> dict:
    final = state.records[-1]
    return {
        "final": {k: final.get(k) for k in METRIC_KEYS},  # .get: records of a run begun by an older glmc lack ECE
        "best": {k: state.best.get(k) for k in METRIC_KEYS} | {"label": best_label(state.best)},
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
        "precision": precision,  # resolved: {"train": ..., "eval": ...}
        "processes": processes,
        "unreadable_images": {"count": len(state.unreadable), "files": state.unreadable[:100]},
        "torch": torch.__version__,
        "config": config.to_dict(),
    }
