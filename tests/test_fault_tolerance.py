"""Fault tolerance at scale: torchrun restarts, time-based checkpoints, another number of processes, changed data."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import glmc.rundir
from conftest import RECORD_TIMINGS, TORCHRUN_ENV, finish_torchrun, run_torchrun, torchrun_command, wait_until, write_image_tree
from glmc.augment import CifarAugment, Normalise
from glmc.checkpoint import check_same_data, load_checkpoint, load_latest_good
from glmc.cli import main
from glmc.config import build_config
from glmc.data.in_memory import array_digest
from glmc.data.loader import TwoStreamLoader
from glmc.distributed import Shard
from glmc.errors import GlmcError
from glmc.trainer import train

# 1236 images, global batch 32: 39 steps an epoch; a checkpoint every 5 steps
DDP_ARGS = ["--preset", "quickstart", "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--set", "train.eval_every=1",
            "--set", "train.checkpoint_every=5", "--quiet", "--resume-if-exists"]


def torchrun_train(*args: str, processes: int = 2, restarts: int = 0) -> list[str]:
    return torchrun_command("-m", "glmc", "train", *args, processes=processes, restarts=restarts)


def progress(run: Path) -> int:
    try:
        return load_checkpoint(run / "checkpoint_last.pt")["state"]["global_step"]
    except GlmcError:
        return -1


def wait_for(run: Path, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    wait_until(lambda: progress(run) >= step, process, timeout, f"step {step}")


def records_of(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in RECORD_TIMINGS} for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    assert records_of(a) == records_of(b)
    weights_a, weights_b = (load_checkpoint(run / "checkpoint_last.pt")["model"] for run in (a, b))
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)


@pytest.fixture(scope="module")
def two_process_reference(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("elastic") / "reference"
    done = run_torchrun(torchrun_train(*DDP_ARGS, "--output", str(output)), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return output


# ---------------------------------------------------------------- torchrun restarts


@pytest.mark.slow
def test_a_rank_killed_under_max_restarts_ends_like_an_uninterrupted_run(two_process_reference, tmp_path):
    run = tmp_path / "killed"
    process = subprocess.Popen(torchrun_train(*DDP_ARGS, "--output", str(run), restarts=1),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV)
    chooser = random.Random(20261123)
    wait_for(run, chooser.randrange(6, 60), process)
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(chooser.choice(workers)), signal.SIGKILL)
    done = finish_torchrun(process, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_run(two_process_reference, run)


@pytest.mark.slow
def test_a_full_disk_during_an_elastic_restart_keeps_the_previous_checkpoint(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk that fills up) needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = disk / "run"
        process = subprocess.Popen(torchrun_train(*DDP_ARGS, "--output", str(run), restarts=1),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV)
        wait_for(run, 5, process)
        kept = load_latest_good(run / "checkpoint_last.pt")["state"]["global_step"]
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as filler:  # fill the disk ...
            while True:
                filler.write(b"\0" * (1 << 16))
        with open(disk / "filler", "r+b") as filler:  # ... leaving room for the small files only
            filler.truncate(max(0, filler.seek(0, 2) - (1 << 16)))
        done = finish_torchrun(process, timeout=600)
        assert done.returncode != 0
        assert done.stderr.count("disk full while saving") >= 2, done.stderr[-3000:]  # the first attempt and the restarted one
        assert load_latest_good(run / "checkpoint_last.pt")["state"]["global_step"] in (kept, kept + 5)
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_resume_if_exists_continues_this_run_and_refuses_another(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "quickstart", "--epochs", "1", "--device", "cpu", "--quiet", "--output", str(run)]
    assert main([*args, "--max-steps", "3"]) == 0
    assert main([*args, "--max-steps", "3", "--resume-if-exists"]) == 0  # a restart of a finished run: nothing to do
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    capsys.readouterr()
    assert main([*args, "--max-steps", "4", "--resume-if-exists"]) == 2
    assert "holds another run (it differs in train.max_steps)" in capsys.readouterr().err
    assert main([*args, "--max-steps", "3"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--preset", "quickstart", "--resume-if-exists"]) == 2
    assert "--resume-if-exists needs --output" in capsys.readouterr().err


# ---------------------------------------------------------------- time-based checkpoints


def test_time_based_checkpoints_come_at_the_sync_points(tmp_path, monkeypatch):
    saved = []
    real_save = glmc.rundir.save_checkpoint

    def recording(path, payload, keep_previous=False):
        saved.append((Path(path).name, payload["state"]["global_step"]))
        real_save(path, payload, keep_previous)

    monkeypatch.setattr(glmc.rundir, "save_checkpoint", recording)
    config = build_config("quickstart", {"train.epochs": "1", "train.batch_size": "16", "train.device": "cpu",
                                         "train.checkpoint_minutes": "1e-9"})  # always due
    train(config, tmp_path / "timed", quiet=True)
    steps = [step for name, step in saved if name == "checkpoint_last.pt"]
    assert steps == [25, 50, 75, 78]  # every sync point inside the epoch (78 steps), then the epoch's end
    saved.clear()
    train(build_config("quickstart", {"train.epochs": "1", "train.batch_size": "16", "train.device": "cpu",
                                      "train.checkpoint_minutes": "none"}), tmp_path / "untimed", quiet=True)
    assert [step for name, step in saved if name == "checkpoint_last.pt"] == [78]


def test_checkpoint_minutes_is_checked():
    with pytest.raises(Exception, match="train.checkpoint_minutes must be > 0"):
        build_config("quickstart", {"train.checkpoint_minutes": "0"})
    assert build_config("quickstart").train.checkpoint_minutes == 10.0


# ---------------------------------------------------------------- another number of processes


def test_shards_of_the_in_memory_loader_are_the_single_process_batch_pixel_for_pixel():
    """Crops are drawn for the global batch and sliced, so resuming on another number of processes reads the same pixels."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(40) % 4
    augment = CifarAugment(Normalise((0.5,) * 3, (0.25,) * 3), padding=2)
    whole = TwoStreamLoader(images, labels, [10] * 4, 12, augment, seed=5)
    shards = [TwoStreamLoader(images, labels, [10] * 4, 12, augment, seed=5, shard=Shard(rank, 3)) for rank in range(3)]
    for batch, *parts in zip(whole.epoch(1), *(shard.epoch(1) for shard in shards)):
        for stream in ("uniform", "resampled"):
            for field in ("view1", "view2", "labels"):
                full = getattr(getattr(batch, stream), field)
                for rank, part in enumerate(parts):
                    assert torch.equal(getattr(getattr(part, stream), field), full[rank::3])


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_run_continues_on_another_number_of_processes(two_process_reference, tmp_path, first, then):
    run = tmp_path / f"{first}-then-{then}"
    start = (torchrun_train(*DDP_ARGS, "--output", str(run), processes=2) if first == 2 else
             [sys.executable, "-m", "glmc", "train", *DDP_ARGS, "--output", str(run)])
    process = subprocess.Popen(start, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV)
    wait_for(run, 45, process)  # into the second epoch: one evaluation recorded
    process.send_signal(signal.SIGTERM)  # torchrun passes it on; every rank saves and stops
    finish_torchrun(process, timeout=300)
    stopped_at = progress(run)
    command = (torchrun_train(*DDP_ARGS, "--output", str(run), processes=2) if then == 2 else
               [sys.executable, "-m", "glmc", "train", *DDP_ARGS, "--output", str(run)])
    done = run_torchrun(command, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary, reference = json.loads((run / "summary.json").read_text()), json.loads((two_process_reference / "summary.json").read_text())
    assert summary["steps"] == reference["steps"] == 78 and summary["processes"] == then and 39 <= stopped_at < 78
    if first == 2:  # the epoch before the stop ran on the same processes as the reference: the same record
        assert records_of(run)[0] == records_of(two_process_reference)[0]
    # after the change, BatchNorm normalises over another local batch: close to the reference, not equal
    assert abs(summary["final"]["top1"] - reference["final"]["top1"]) < 15


# ---------------------------------------------------------------- data that changed under a run


def test_the_content_digest_of_arrays_sees_one_pixel():
    images = np.zeros((4, 3, 2, 2), dtype=np.uint8)
    before = array_digest(images, np.arange(4))
    images[2, 1, 0, 1] = 1
    assert array_digest(images, np.arange(4)) != before
    with pytest.raises(GlmcError, match="the training images changed since ckpt"):
        check_same_data({"train": before, "test": "t"}, {"train": array_digest(images, np.arange(4)), "test": "t"}, Path("ckpt"))


@pytest.mark.parametrize("part, what", [("train", "training"), ("test", "test")])
def test_resume_refuses_image_files_that_changed(tmp_path, capsys, part, what):
    written = write_image_tree(tmp_path / "images")
    run = tmp_path / "run"
    args = ["train", "--set", "data.dataset=folder", "--data-root", str(tmp_path / "images"), "--set", "model.backbone=resnet8",
            "--set", "data.image_size=32", "--set", "data.resize=36", "--set", "data.workers=0", "--set", "data.unreadable=skip",
            "--batch-size", "6", "--epochs", "1", "--max-steps", "1", "--device", "cpu", "--quiet", "--output", str(run)]
    assert main(args) == 0
    touched = tmp_path / "images" / written[part][0][0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # re-synced: a newer file
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=2"]) == 2
    error = capsys.readouterr().err
    assert f"the {what} images changed since" in error and error.count("\n") == 1
