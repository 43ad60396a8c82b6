"""torchrun with 2 CPU processes (gloo): sharded streams, one writer, gathered metrics, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_torchrun, torchrun_command, write_image_tree
from glmc.cli import main
from glmc.rundir import RunFolder

TRAIN_ARGS = ["--set", "data.dataset=folder", "--set", "model.backbone=resnet10", "--set", "data.image_size=24",
              "--set", "data.resize=28", "--set", "data.workers=1", "--set", "data.unreadable=skip",
              "--batch-size", "6", "--epochs", "2", "--device", "cpu"]


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    done = run_torchrun(torchrun_command("-m", "glmc", *args, processes=processes), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    write_image_tree(root)
    return root


@pytest.fixture(scope="module")
def two_process_run(tree, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    output = tmp_path_factory.mktemp("runs") / "ddp"
    done = torchrun("train", "--data-root", str(tree), "--output", str(output), *TRAIN_ARGS)
    return output, done


def test_two_processes_write_one_run(two_process_run):
    output, done = two_process_run
    summary = json.loads((output / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2 * 3  # 18 images, global batch 6
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # one writer: each evaluation recorded once
    assert done.stdout.count("run folder:") == 1 and done.stdout.count("epoch   2/2") == 1
    assert summary["unreadable_images"]["count"] == 1  # skipped by whichever rank drew it, counted once
    # the other rank and both ranks' data workers are the run's own work, not other work sharing the CPUs
    shared = RunFolder(output).read_sessions()[-1].get("other_cpu_share")
    assert shared is None or shared < 0.25, shared


def test_gathered_evaluation_equals_one_process_evaluating_the_checkpoint(two_process_run, capsys):
    output, _ = two_process_run
    summary = json.loads((output / "summary.json").read_text())
    for checkpoint, record in (("checkpoint_last.pt", summary["final"]), ("checkpoint_best.pt", summary["best"])):
        assert main(["eval", str(output / checkpoint), "--device", "cpu", "--json"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        for key in ("top1", "top5", "per_class", "many", "medium", "few", "num_samples"):
            assert metrics[key] == record[key], key


@pytest.mark.slow  # over 20 s on 2 cores of an AMD EPYC without AVX-512 (pytest --durations, 2026-12-06)
def test_resume_under_torchrun_continues_exactly(tree, two_process_run, tmp_path):
    uninterrupted, _ = two_process_run
    output = tmp_path / "stopped"
    torchrun("train", "--data-root", str(tree), "--output", str(output), *TRAIN_ARGS, "--max-steps", "4")
    assert json.loads((output / "summary.json").read_text())["steps"] == 4
    torchrun("train", "--resume", str(output), "--set", "train.max_steps=none")
    resumed = torch.load(output / "checkpoint_last.pt", weights_only=True)["model"]
    expected = torch.load(uninterrupted / "checkpoint_last.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed[name], expected[name]) for name in expected)


def test_a_hung_torchrun_fails_the_test_and_leaves_no_process_behind():
    """As torchrun does with its ranks, the command starts a child in a session of its own."""
    hang = ("import subprocess, sys, time; child = subprocess.Popen(['sleep', '600'], start_new_session=True); "
            "print(child.pid, file=sys.stderr, flush=True); time.sleep(600)")
    with pytest.raises(pytest.fail.Exception, match="ran past 3 s and was aborted") as failure:
        run_torchrun([sys.executable, "-c", hang], timeout=3)
    stderr = str(failure.value).split("its stderr ends:\n")[1]
    assert "Fatal Python error: Aborted" in stderr and 'File "<string>"' in stderr  # where it waited
    child = int(stderr.split()[0])
    assert not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"


def test_sync_batchnorm_on_cpu_processes_is_a_clear_error(tree, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "glmc",
               "train", "--data-root", str(tree), "--output", str(tmp_path / "sync"), *TRAIN_ARGS,
               "--set", "train.sync_batchnorm=true"]
    done = run_torchrun(command, timeout=300)
    assert done.returncode != 0
    assert "train.sync_batchnorm needs CUDA devices" in done.stderr
    assert not (tmp_path / "sync" / "config.yaml").exists()  # refused before the run folder was written


def test_every_registered_method_trains_under_torchrun():
    """DDP sees only the parameters a method trains: no 'Expected to have finished reduction' for any method."""
    from glmc.methods import METHODS

    script = Path(__file__).parent / "helpers" / "every_method_ddp.py"
    done = run_torchrun(torchrun_command(str(script)), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["method"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert sorted(results) == METHODS.names()
    for name, result in results.items():
        assert result["spread"] < 1e-6, name  # the replicas stayed equal
        assert result["moved"] > 0, name  # and trained


def test_a_baseline_trains_under_torchrun_with_glmc_train(tmp_path):
    output = tmp_path / "ce"
    torchrun("train", "--preset", "quickstart", "--set", "method.name=ce", "--device", "cpu", "--max-steps", "4",
             "--batch-size", "16", "--output", str(output))
    summary = json.loads((output / "summary.json").read_text())
    assert summary["method"] == "ce" and summary["processes"] == 2 and summary["steps"] == 4
