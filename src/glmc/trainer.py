"""A training run: building its parts from the config, and the loop that trains and evaluates it.

The state of a run is its epoch, the next step inside it and the global step; randomness is
derived from (seed, epoch, step), so resuming from a checkpoint continues exactly. The run
folder's files are glmc.rundir's; what its records hold and how they print, glmc.records';
checkpoint payloads and their restore, glmc.checkpoint's.
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
from typing import Callable, Iterator, NamedTuple

import torch
from tqdm import tqdm

import glmc
from glmc import distributed
from glmc.checkpoint import restore_training, training_payload
from glmc.config import Config
from glmc.data.batch import HeldOutBatches, TrainingBatches
from glmc.data.datasets import Dataset, create_dataset
from glmc.distributed import SINGLE, Shard
from glmc.devices import resolve_device
from glmc.engine import LossMeter, NonFiniteWatch, at_most, step_rng, train_step
from glmc.evaluation import evaluate
from glmc.machine import OtherWork
from glmc.errors import ConfigError, RunInterrupted
from glmc.methods import create_method
from glmc.methods.base import Method
from glmc.models import create_model, use_heads
from glmc.optim import create_optimizer, learning_rate, set_learning_rate
from glmc.precision import MixedPrecision, resolve_precision
from glmc.provenance import device_name, git_commit
from glmc.records import best_label, epoch_line, evaluation_line, evaluation_record, make_summary, selection_score, shots_table
from glmc.rundir import TENSORBOARD_DIR, Resume, RunFolder
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

    def position(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "global_step": self.global_step}

    def count_step(self, parts: dict | None, meter: LossMeter, watch: NonFiniteWatch) -> None:
        """A step trained: its loss parts go to the epoch's sums and to the non-finite watch (None: skipped)."""
        self.step += 1
        self.global_step += 1
        if parts is None:
            self.skipped_steps += 1
        else:
            meter.add(parts)
            watch.observe(parts, self.global_step - 1)

    def end_epoch_if_done(self, steps_per_epoch: int) -> bool:
        """Move on to the next epoch if this one's steps are done; whether it was."""
        if self.step < steps_per_epoch:
            return False
        self.epoch, self.step = self.epoch + 1, 0
        return True


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
            resumes = resume is Resume.ALWAYS or (resume is Resume.IF_SAME_RUN and folder.holds_run())
        return train_folder(run, folder, resumes, quiet, tensorboard, command)
    finally:
        folder.release()


def train_folder(run: Run, folder: RunFolder, resumes: bool, quiet: bool, tensorboard: bool, command: str | None) -> dict:
    """Train the run in its prepared folder, from its last checkpoint if `resumes`: epochs -> steps -> evaluate ->
    checkpoint. What cuts across the loop is named around it: the sessions.jsonl record, stop requests (SIGINT,
    SIGTERM), TensorBoard, the last checkpoint and its timer, the non-finite loss watch, the ranks' votes."""
    config, shard = run.config, run.shard
    state = restore(folder, run) if resumes and folder.has_checkpoint() else RunState()
    if resumes and finished(state, config) and folder.holds_summary():
        log(quiet, f"nothing to do: {folder.path} holds this run, finished")
        return folder.read_summary()
    if shard.is_main:
        folder.write_config(config)
        folder.write_classes(run.dataset.class_names)
        folder.rewrite_records(state.records)
    log(quiet, describe(run))
    last = LastCheckpoint(run, state, folder)
    board = TensorBoardLog(folder.path / TENSORBOARD_DIR, resumes) if tensorboard else None
    ranks_parent = os.getppid() if shard.world > 1 else None  # the launcher: the ranks beside this one are its children
    with folder.session(session_facts(run, state, command), lambda: last.position, writes=shard.is_main,
                        work_root=ranks_parent), stop_requests() as stop:
        while not finished(state, config):
            epoch, started, other_work = state.epoch, time.time(), OtherWork.start(ranks_parent)
            set_learning_rate(run.optimizer, learning_rate(epoch, config.train.epochs, config.optim))
            meter, watch = LossMeter(this_ranks_totals(state.epoch_loss_totals, shard), state.epoch_loss_steps), NonFiniteWatch()
            decision = Decision(stop=False, checkpoint=False)
            with progress_bar(run, state, quiet) as bar:
                for batch in bar:
                    rng = step_rng(config.train.seed, epoch, state.step)
                    parts = train_step(run.step_model, run.method, run.optimizer, batch, epoch, rng,
                                       skip_nonfinite=config.train.nonfinite == "skip")
                    state.count_step(parts, meter, watch)
                    if state.step % SYNC_EVERY == 0:
                        watch.check()
                        show_loss(bar, meter)
                    decision = decide_after_step(run, state, stop, last)
                    if decision.stop:
                        break
                    if decision.checkpoint:
                        last.save(watch, meter)
            if decision.stop:
                last.save(watch, meter)
                raise interrupted(stop, state, folder)
            watch.check()
            epoch_done = state.end_epoch_if_done(len(run.loader))
            if finished(state, config) or (epoch_done and evaluated_epoch(state.epoch, config)):
                record = evaluate_and_record(run, state, folder, meter, time.time() - started, other_work.share(), quiet)
                if board:
                    board.log(record)
            elif epoch_done and bar.disable and not quiet:  # no bar showed this epoch: a line in its place
                print(epoch_line(state.epoch, config.train.epochs, meter.means(), run.optimizer.param_groups[0]["lr"],
                                 time.time() - started, other_cpu_share=other_work.share()), file=sys.stderr, flush=True)
            last.save(watch, LossMeter() if epoch_done else meter)
        if board:
            board.close()
        summary = make_summary(config, run.dataset, state.records[-1], state.best, state.global_step, state.seconds,
                               state.unreadable, run.device, shard.world,
                               {"train": run.precision, "eval": run.eval_precision, "interim_eval": run.interim_precision})
        if shard.is_main:
            folder.write_summary(summary)
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
    model = create_model(config.model.backbone, dataset.num_classes, classifier=config.model.classifier,
                         logit_scale=config.method.logit_scale)
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


def evaluated_epoch(epoch: int, config: Config) -> bool:
    """Whether the end of `epoch` (from 1) is evaluated: every `eval_every`-th epoch and each of the last
    `eval_last_epochs` (the end of the run always is)."""
    return epoch % config.train.eval_every == 0 or epoch > config.train.epochs - config.train.eval_last_epochs


def describe(run: Run) -> str:
    """The line a run begins with: what trains, on what, where."""
    config, shard = run.config, run.shard
    return (f"training {config.model.backbone} with {config.method.name} on {run.dataset.name} "
            f"({len(run.dataset.train_labels)} images, {run.dataset.fingerprint[:19]}…) on {run.device}, "
            f"{len(run.loader)} steps per epoch" + (f", {shard.world} processes" if shard.world > 1 else ""))


def session_facts(run: Run, state: RunState, command: str | None) -> dict:
    """What sessions.jsonl records of this `glmc train` when it begins (glmc.rundir.RunFolder.session)."""
    return {
        **({"command": command} if command else {}),
        "from": state.position(),
        "host": platform.node(),
        "pid": os.getpid(),
        "device": device_name(run.device),
        "processes": run.shard.world,
        "precision": {"train": run.precision, "eval": run.eval_precision},
        "version": glmc.__version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
    }


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


class Decision(NamedTuple):
    """What the loop does after a step, besides the next one."""

    stop: bool  # save and stop after this step: a SIGINT/SIGTERM here, or on another rank
    checkpoint: bool  # save after this step: train.checkpoint_minutes have passed, or train.checkpoint_every steps


def decide_after_step(run: Run, state: RunState, stop: list[int], last: LastCheckpoint) -> Decision:
    """One process decides at once, reading the clock at sync points only. Under torchrun the ranks decide both
    together at the sync points (every SYNC_EVERY steps and at the end of an epoch), in one all-reduce, so no
    step waits for the others."""
    steps_per_epoch = len(run.loader)
    sync_point = state.step % SYNC_EVERY == 0 or state.step == steps_per_epoch
    timed = sync_point and last.time_due()
    if run.shard.world == 1:
        stop_now = bool(stop)
    elif sync_point:
        stop_now, timed = distributed.any_across_each([bool(stop), timed], run.device)
    else:
        stop_now, timed = False, False
    every = run.config.train.checkpoint_every
    counted = every is not None and state.global_step % every == 0
    return Decision(stop_now, (timed or counted) and state.step < steps_per_epoch)  # the epoch's end saves anyway


class LastCheckpoint:
    """checkpoint_last.pt: saving it (rank 0 writes, every rank takes part), the time since, and where it stands.
    It records the run's seconds over all its sessions: those before this one, and this one's so far."""

    def __init__(self, run: Run, state: RunState, folder: RunFolder) -> None:
        self.run, self.state, self.folder = run, state, folder
        self.earlier_seconds, self.started = state.seconds, time.time()
        self.saved_at = time.monotonic()
        self.position = state.position()  # of the checkpoint this session began from, then of its own

    def time_due(self) -> bool:
        minutes = self.run.config.train.checkpoint_minutes
        return minutes is not None and time.monotonic() - self.saved_at >= 60 * minutes

    def save(self, watch: NonFiniteWatch, meter: LossMeter) -> None:
        """The run as it stands, with the loss sums of the unfinished epoch."""
        run, state = self.run, self.state
        watch.check()  # never checkpoint a model that has seen a non-finite loss
        state.epoch_loss_totals = None if meter.totals is None else {
            name: distributed.gather_across(value) for name, value in meter.totals.items()}  # every rank's, for an exact resume
        state.epoch_loss_steps = meter.steps
        state.seconds = self.earlier_seconds + time.time() - self.started
        note_unreadable(run, state)
        if run.shard.is_main:
            self.folder.save_last(checkpoint_contents(run, state, "last"))
        self.saved_at, self.position = time.monotonic(), state.position()


def checkpoint_contents(run: Run, state: RunState, kind: str) -> dict:
    return training_payload(kind, run.config, run.dataset, run.model, run.optimizer, dataclasses.asdict(state), run.data_digest)


def progress_bar(run: Run, state: RunState, quiet: bool) -> tqdm:
    """The rest of the epoch's batches (train.max_steps in all at most), with a progress bar on a terminal."""
    config = run.config
    steps_left = None if config.train.max_steps is None else config.train.max_steps - state.global_step
    rest = len(run.loader) - state.step
    batches = at_most(steps_left, run.loader.epoch(state.epoch, state.step))
    # disable=None: no bar when stderr is not a terminal, so a log file gets clean evaluation lines
    return tqdm(batches, total=rest if steps_left is None else min(rest, steps_left),
                desc=f"epoch {state.epoch + 1}/{config.train.epochs}", disable=True if quiet else None, leave=False,
                file=sys.stderr)


def show_loss(bar: tqdm, meter: LossMeter) -> None:
    if meter.steps:
        bar.set_postfix(loss=f"{meter.totals['loss'].item() / meter.steps:.3f}")  # the epoch's running mean


def interrupted(stop: list[int], state: RunState, folder: RunFolder) -> RunInterrupted:
    signum = stop[0] if stop else signal.SIGTERM  # another rank was asked
    return RunInterrupted(f"{signal.Signals(signum).name}: stopped at epoch {state.epoch + 1}, step {state.step}; "
                          f"checkpoint saved, continue with: glmc train --resume {folder.path}", 128 + signum)


def this_ranks_totals(saved: dict | None, shard: Shard) -> dict | None:
    """This rank's running loss sums from a checkpoint's per-process ones. Resumed on another number of
    processes, rank 0 takes their sum (the epoch's means stay right; only the order of additions changes)."""
    if saved is None:
        return None
    totals = {}
    for name, value in saved.items():
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


def evaluate_and_record(run: Run, state: RunState, folder: RunFolder, meter: LossMeter, seconds: float,
                        other_cpu_share: float | None, quiet: bool) -> dict:
    """Evaluate the test and validation sets, append the record to metrics.jsonl, keep the best epoch; the record.
    `seconds` trained the epoch while other work took `other_cpu_share` of the CPU time (None: not measured)."""
    config = run.config
    bounds = SHOT_BOUNDS[config.train.shot_bounds]
    distributed.share_buffers(run.model)  # every rank evaluates the weights rank 0 saves
    precision = run.eval_precision if finished(state, config) else run.interim_precision
    test, val = (None if held_out is None else
                 evaluate(run.model, held_out.batches(), run.dataset.class_counts, bounds, precision)
                 for held_out in (run.test_set, run.val_set))
    note_unreadable(run, state)
    epoch = state.epoch if state.step == 0 else state.epoch + 1  # 1-based: the epoch this evaluation ends or stops in
    record = evaluation_record(epoch, state.global_step, state.step != 0, state.skipped_steps, test, val, precision,
                               epoch_losses(meter, run.shard), run.optimizer.param_groups[0]["lr"], seconds, other_cpu_share)
    state.records.append(record)
    if run.shard.is_main:
        folder.append_record(record)
    log(quiet, evaluation_line(record, config.train.epochs))
    if run.on_evaluation is not None:
        run.on_evaluation(record)
    if state.best is None or selection_score(record) > selection_score(state.best):
        state.best = record
        if run.shard.is_main:
            folder.save_best(checkpoint_contents(run, state, best_label(record)))
    return record


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
