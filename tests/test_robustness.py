"""Nothing lost, nothing trusted blindly: kills, signals, damaged checkpoints, NaNs, bad input."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from glmc import checkpoint as checkpoint_module
from glmc.checkpoint import load_checkpoint, save_checkpoint
from glmc.config import build_config
from glmc.engine import NonFiniteLoss
from glmc.errors import GlmcError
from glmc.methods import METHODS
from glmc.methods.ce import CrossEntropy
from glmc.rundir import Resume, RunFolder
from glmc.trainer import train

from conftest import RECORD_TIMINGS, refusal, write_small_cifar10

# 6 epochs x 20 steps of resnet8 on the embedded dataset; a checkpoint every 7 steps as well
RUN_ARGS = ["--set", "data.dataset=synthetic-lt", "--set", "model.backbone=resnet8", "--epochs", "6",
            "--lr", "0.05", "--device", "cpu", "--set", "train.checkpoint_every=7", "--quiet"]


def glmc(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "glmc.cli", *args], capture_output=True, text=True, **kwargs)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "glmc.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_state(run: Path) -> tuple[dict, dict]:
    summary = json.loads((run / "summary.json").read_text())
    return summary, load_checkpoint(run / "checkpoint_last.pt")["model"]


def assert_same_run(a: Path, b: Path) -> None:
    (summary_a, weights_a), (summary_b, weights_b) = final_state(a), final_state(b)
    assert summary_a["final"] == summary_b["final"] and summary_a["best"] == summary_b["best"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    records = [[{k: v for k, v in json.loads(line).items() if k not in RECORD_TIMINGS}
                for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b)]
    assert records[0] == records[1]  # same evaluations, same loss means


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = glmc("train", *RUN_ARGS, "--output", str(run))
    assert done.returncode == 0, done.stderr
    return run


def progress(run: Path) -> int:
    """The global step of the run's last checkpoint (-1 before the first, or mid-replacement)."""
    try:
        return load_checkpoint(run / "checkpoint_last.pt")["state"]["global_step"]
    except GlmcError:
        return -1


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_like_an_uninterrupted_run(uninterrupted, tmp_path):
    run = tmp_path / "run"
    chooser = random.Random(20261122)
    kill_after = sorted(chooser.sample(range(3, 110), 3))  # of 120 steps, checkpoints every 7
    process = start("train", *RUN_ARGS, "--output", str(run))
    for target in kill_after:
        while process.poll() is None and progress(run) < target:
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(chooser.uniform(0.0, 0.3))  # somewhere between two checkpoints, or inside one
        process.send_signal(signal.SIGKILL)
        process.wait()
        process = start("train", "--resume", str(run), "--quiet")
    assert process.wait(timeout=300) == 0, process.stderr.read()
    assert_same_run(uninterrupted, run)
    sessions = RunFolder(run).read_sessions()
    assert [s["session"] for s in sessions] == [1, 2, 3, 4]
    assert all("ended" not in s for s in sessions[:3])  # a SIGKILL leaves its session begun, never ended
    assert sessions[3]["outcome"] == "finished" and sessions[3]["reached"]["global_step"] == 120
    resumed_from = [s["from"]["global_step"] for s in sessions[1:]]
    assert all(step >= target for step, target in zip(resumed_from, kill_after))  # killed once the checkpoint passed it
    assert not [p.name for p in run.iterdir() if p.name.endswith((".tmp", ".link"))]  # a save killed midway leaves none


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_a_checkpoint_and_exit(uninterrupted, tmp_path, sig):
    run = tmp_path / "run"
    process = start("train", *RUN_ARGS, "--output", str(run))
    deadline = time.time() + 60
    while not (run / "checkpoint_last.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + sig, stderr
    assert f"{signal.Signals(sig).name}: stopped at epoch" in stderr and "glmc train --resume" in stderr
    assert glmc("train", "--resume", str(run), "--quiet").returncode == 0
    assert_same_run(uninterrupted, run)
    stopped, finished = RunFolder(run).read_sessions()
    assert stopped["outcome"] == signal.Signals(sig).name and finished["from"] == stopped["reached"]
    assert finished["command"] == f"glmc train --resume {run} --quiet" and finished["outcome"] == "finished"


@pytest.mark.slow
def test_damaged_last_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path):
    run = tmp_path / "run"
    assert glmc("train", *RUN_ARGS, "--output", str(run), "--max-steps", "30").returncode == 0
    last = run / "checkpoint_last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit-pattern: torch.load would not notice
    last.write_bytes(bytes(data))
    with pytest.raises(GlmcError, match="does not match its SHA-256"):
        load_checkpoint(last)
    done = glmc("train", "--resume", str(run), "--set", "train.max_steps=none", "--quiet")
    assert done.returncode == 0 and "using the previous checkpoint checkpoint_last.pt.prev" in done.stderr
    assert_same_run(uninterrupted, run)


def test_truncated_checkpoint_without_a_previous_one_is_one_clear_error(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}})
    path.write_bytes(path.read_bytes()[:300])
    checkpoint_module.checksum_path(path).unlink()
    with pytest.raises(GlmcError, match="cannot read checkpoint .*checkpoint_last.pt"):
        load_checkpoint(path)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(3)}}, keep_previous=True)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.os, "fsync", full_disk)
    with pytest.raises(GlmcError, match="disk full while saving .*; the previous checkpoint is kept"):
        save_checkpoint(path, {"model": {"w": torch.ones(3)}}, keep_previous=True)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt", "checkpoint_last.pt.sha256"]


def saved_weight(path: Path) -> float:
    return load_checkpoint(path)["model"]["w"].item()


def test_replacing_a_checkpoint_never_leaves_its_name_missing(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(1)}}, keep_previous=True)
    real_replace, seen = os.replace, []

    def replace_and_look(source, target):
        real_replace(source, target)
        seen.append(path.is_file())

    monkeypatch.setattr(checkpoint_module.os, "replace", replace_and_look)
    save_checkpoint(path, {"model": {"w": torch.ones(1)}}, keep_previous=True)
    monkeypatch.undo()
    assert len(seen) == 4 and all(seen)  # .prev, its checksum, the new file, the new checksum
    assert saved_weight(path) == 1.0 and saved_weight(checkpoint_module.previous_path(path)) == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_last.pt", "checkpoint_last.pt.prev", "checkpoint_last.pt.prev.sha256", "checkpoint_last.pt.sha256"]


def test_without_hard_links_the_previous_checkpoint_is_moved_aside(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(1)}}, keep_previous=True)

    def no_hard_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(checkpoint_module.os, "link", no_hard_links)
    save_checkpoint(path, {"model": {"w": torch.ones(1)}}, keep_previous=True)
    monkeypatch.undo()
    assert saved_weight(path) == 1.0 and saved_weight(checkpoint_module.previous_path(path)) == 0.0
    assert len(list(tmp_path.iterdir())) == 4  # no link or temporary file left behind


def test_a_checkpoint_removed_while_it_is_read_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(1)}})
    real_read = Path.read_bytes

    def removed_first(self):
        self.unlink()
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", removed_first)
    with pytest.raises(GlmcError, match="checkpoint not found: .*checkpoint_last.pt"):
        load_checkpoint(path)


def test_resuming_removes_the_temporary_files_of_a_save_that_was_killed(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "checkpoint_last.pt", {"model": {"w": torch.zeros(1)}})
    leftovers = [".checkpoint_last.pt.k3j9x.tmp", ".checkpoint_last.pt.sha256.a1b2.tmp",
                 ".checkpoint_last.pt.prev.4242.link", ".metrics.jsonl.zz81.tmp"]
    others = [".lock.json.7.tmp", ".my-notes.tmp", "checkpoint_last.pt.tmp"]  # not a glmc save's, or another writer's
    for name in leftovers + others:
        (run / name).write_bytes(b"x" * 1_000_000)
    folder = RunFolder(run)
    assert folder.prepare(Resume.ALWAYS, False, None) is True
    folder.release()
    assert sorted(p.name for p in run.iterdir()) == sorted(["checkpoint_last.pt", "checkpoint_last.pt.sha256", *others])
    assert f"removed 4 temporary file(s) (4.0 MB) that an interrupted save left in {run}" in capsys.readouterr().err
    assert saved_weight(run / "checkpoint_last.pt") == 0.0


class NanAtStepThree(CrossEntropy):
    """Cross-entropy whose fourth step's loss is NaN (a stand-in for a diverging run)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.calls = 0

    def __call__(self, model, batch, epoch, rng):
        result = super().__call__(model, batch, epoch, rng)
        self.calls += 1
        if self.calls == 4:
            return result._replace(loss=result.loss * float("nan"), parts={"ce": result.parts["ce"] * float("nan")})
        return result


@pytest.fixture(autouse=True)
def nan_method(monkeypatch):
    """Registered only while a test of this file runs, so other tests see the real registry."""
    monkeypatch.setitem(METHODS._entries, "test-nan-at-step-3", NanAtStepThree)


def nan_config(**changes):
    values = {"data.dataset": "synthetic-lt", "model.backbone": "resnet8", "method.name": "test-nan-at-step-3",
              "train.epochs": "2", "train.device": "cpu", **changes}
    return build_config(None, values)


def test_a_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    train(nan_config(**{"train.max_steps": "2"}), tmp_path, quiet=True)
    before = (tmp_path / "checkpoint_last.pt").read_bytes()
    # the resumed session's fourth step is the run's sixth
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 6 \(loss=nan, ce=nan\)"):
        train(nan_config(), tmp_path, resume=Resume.ALWAYS, quiet=True)
    assert (tmp_path / "checkpoint_last.pt").read_bytes() == before
    first, second = RunFolder(tmp_path).read_sessions()
    assert first["outcome"] == "finished" and second["from"] == first["reached"] == {"epoch": 0, "step": 2, "global_step": 2}
    assert second["outcome"].startswith("NonFiniteLoss: non-finite loss at step 6")
    assert second["reached"] == second["from"]  # where its last checkpoint stands: the steps after it are lost


def test_non_finite_steps_can_be_skipped(tmp_path):
    summary = train(nan_config(**{"train.nonfinite": "skip"}), tmp_path, quiet=True)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["skipped_steps"] == 1 and summary["steps"] == 40
    assert all(value == value for value in record["losses"].values())  # no NaN in the means


def snapshot(folder: Path) -> dict:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def corrupt_batch(root: Path, edit, batches=("data_batch_1",)) -> None:
    import pickle

    for name in batches:
        path = root / "cifar-10-batches-py" / name
        with open(path, "rb") as file:
            entry = pickle.load(file, encoding="bytes")
        edit(entry)
        with open(path, "wb") as file:
            pickle.dump(entry, file)


def without_class_3(entry: dict) -> None:
    entry[b"labels"] = [0 if label == 3 else label for label in entry[b"labels"]]


BAD_DATA = {
    "missing data folder": (lambda root: None, "--data-root={root}/absent", "CIFAR-10 not found"),
    "truncated pickle": (lambda root: (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02}q"),
                         "--data-root={root}", "test_batch is not a readable CIFAR pickle"),
    "wrong array shape": (lambda root: corrupt_batch(root, lambda e: e.update({b"data": e[b"data"][:, :99]})),
                          "--data-root={root}", "'data' has shape (60, 99)"),
    "labels out of range": (lambda root: corrupt_batch(root, lambda e: e.update({b"labels": [12] * 60})),
                            "--data-root={root}", "60 labels outside [0, 10)"),
    "empty class": (lambda root: corrupt_batch(root, without_class_3, [f"data_batch_{k}" for k in range(1, 6)]),
                    "--data-root={root}", "1 classes have no training images: 3 (c3)"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_one_line_exit_2_and_nothing_is_written(tmp_path, capsys, case):
    prepare, root_arg, message = BAD_DATA[case]
    root = write_small_cifar10(tmp_path / "data", per_class=6)
    prepare(root)
    before = snapshot(tmp_path)
    assert message in refusal(capsys, "train", "--preset", "cifar10-lt-if100", root_arg.format(root=root), "--set",
                              "data.imbalance_factor=1", "--output", str(tmp_path / "run"), "--device", "cpu")
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


BAD_ARGS = {
    "imbalance factor < 1": (["--set", "data.imbalance_factor=0.5"], "data.imbalance_factor must be >= 1"),
    "non-numeric override": (["--set", "optim.weight_decay=lots"], "optim.weight_decay expects a finite number, got 'lots'"),
    "infinite learning rate": (["--set", "optim.lr=inf"], "optim.lr expects a finite number, got 'inf'"),
    "unknown config key": (["--set", "optim.nesterov=true"], "unknown config key 'optim.nesterov'"),
    "malformed override": (["--set", "optim.lr"], "is not of the form section.field=value"),
    "unknown non-finite policy": (["--set", "train.nonfinite=ignore"], "unknown non-finite policy 'ignore'"),
}


@pytest.mark.parametrize("case", BAD_ARGS)
def test_bad_arguments_are_one_line_exit_2_and_nothing_is_written(tmp_path, capsys, case):
    args, message = BAD_ARGS[case]
    assert message in refusal(capsys, "train", "--preset", "quickstart", *args, "--output", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_output_inside_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    done = glmc("train", "--preset", "quickstart", "--output", str(tmp_path / "file" / "run"), "--max-steps", "1")
    assert done.returncode == 2 and "cannot create output folder" in done.stderr
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_unwritable_output_folder_is_refused(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o500)
    done = glmc("train", "--preset", "quickstart", "--output", str(tmp_path / "locked"), "--max-steps", "1")
    assert done.returncode == 2 and "is not writable" in done.stderr


def test_resume_of_a_folder_without_a_run_is_refused(tmp_path):
    done = glmc("train", "--resume", str(tmp_path))
    assert done.returncode == 2 and "holds no run to resume" in done.stderr
    assert list(tmp_path.iterdir()) == []
