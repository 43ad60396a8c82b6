"""End to end on the embedded dataset: learning, the run folder, resume, eval, bad input."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from glmc.checkpoint import load_checkpoint, save_checkpoint
from glmc.cli import main
from glmc.config import OptimConfig, build_config
from glmc.optim import learning_rate
from glmc.errors import GlmcError
from glmc.machine import busy_cpu_seconds, cpu_model
from glmc.records import epoch_line
from glmc.rundir import Resume, RunFolder
from glmc.trainer import train

from conftest import refusal

TINY = {"data.dataset": "synthetic-lt", "model.backbone": "resnet8", "optim.lr": "0.05",
        "optim.weight_decay": "5e-4", "train.epochs": "3", "train.device": "cpu"}


def tiny_config(**changes):
    return build_config(None, {**TINY, **{k.replace("__", "."): str(v) for k, v in changes.items()}})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    summary = train(tiny_config(train__epochs=8, data__imbalance_factor=10), output, quiet=True)
    return output, summary


def test_glmc_learns_the_embedded_dataset(finished_run):
    output, summary = finished_run
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 9))
    assert records[-1]["losses"]["ce"] < records[0]["losses"]["ce"]
    assert summary["final"]["top1"] > 40.0  # chance is 10%


def test_run_folder_is_complete(finished_run):
    output, summary = finished_run
    assert {p.name for p in output.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "checkpoint_last.pt", "checkpoint_best.pt"}
    config = yaml.safe_load((output / "config.yaml").read_text())
    assert config["model"]["backbone"] == "resnet8" and config["train"]["epochs"] == 8
    record = json.loads((output / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"epoch", "top1", "top5", "many", "medium", "few", "losses", "lr", "seconds"} <= set(record)
    if busy_cpu_seconds() is None:  # not Linux: nothing says what other work took
        assert "other_cpu_share" not in record
    else:
        assert 0.0 <= record["other_cpu_share"] <= 1.0
    assert {"loss", "ce", "cb", "sim", "alpha"} <= set(record["losses"])
    on_disk = json.loads((output / "summary.json").read_text())
    assert on_disk == summary
    assert summary["fingerprint"] == summary["dataset"]["fingerprint"] and summary["fingerprint"].startswith("sha256:")
    assert summary["best"]["label"] == "best epoch, selected on the test set"
    assert summary["best"]["top1"] >= summary["final"]["top1"]
    assert {"wall_seconds", "version", "git_commit", "device", "dataset"} <= set(summary)
    best = load_checkpoint(output / "checkpoint_best.pt")
    assert best["kind"] == summary["best"]["label"] and best["state"]["best"]["top1"] == summary["best"]["top1"]


def test_eval_of_the_last_checkpoint_reproduces_the_final_metrics(finished_run, capsys):
    output, summary = finished_run
    assert main(["eval", str(output / "checkpoint_last.pt"), "--device", "cpu", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["top1"] == pytest.approx(summary["final"]["top1"], abs=1e-9)
    assert metrics["per_class"] == summary["final"]["per_class"]


def test_eval_on_the_training_images_counts_every_one_of_them(finished_run, capsys):
    output, summary = finished_run
    assert main(["eval", str(output / "checkpoint_last.pt"), "--device", "cpu", "--on", "train", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["num_samples"] == sum(summary["dataset"]["class_counts"]) != summary["final"]["num_samples"]
    assert fit["top1"] != summary["final"]["top1"]
    assert main(["eval", str(output / "checkpoint_last.pt"), "--device", "cpu", "--on", "val"]) == 2
    assert "has no validation set" in capsys.readouterr().err


def test_eval_with_authors_bounds_regroups_classes(tmp_path, capsys):
    # IF 25 on synthetic-lt: the rarest class has exactly 20 images, few-shot only under the authors' bounds
    summary = train(tiny_config(data__imbalance_factor=25, train__max_steps=2), tmp_path, quiet=True)
    counts = summary["dataset"]["class_counts"]
    assert counts[-1] == 20 and min(counts[:-1]) > 20
    results = {}
    for bounds in ("standard", "authors"):
        assert main(["eval", str(tmp_path / "checkpoint_last.pt"), "--device", "cpu", "--json", "--shot-bounds", bounds]) == 0
        results[bounds] = json.loads(capsys.readouterr().out)
    per_class = results["standard"]["per_class"]
    assert results["standard"]["few"] is None and results["authors"]["few"] == pytest.approx(per_class[-1])
    medium = [acc for acc, n in zip(per_class, counts) if 20 < n <= 100]
    assert results["authors"]["medium"] == pytest.approx(sum(medium) / len(medium), abs=1e-3)
    assert results["standard"]["medium"] == pytest.approx((sum(medium) + per_class[-1]) / (len(medium) + 1), abs=1e-3)


def state_of(path):
    return load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The tiny config trained in one go, evaluated after every epoch: what a run in pieces must equal."""
    output = tmp_path_factory.mktemp("straight")
    return output, train(tiny_config(), output, quiet=True)


# mid-epoch, and an epoch boundary (20 steps an epoch), which the slow tests add
@pytest.mark.parametrize("stop_after", [10, pytest.param(20, marks=pytest.mark.slow)])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, straight_run, stop_after):
    straight_folder, straight = straight_run
    train(tiny_config(train__max_steps=stop_after), tmp_path / "split", quiet=True)
    assert load_checkpoint(tmp_path / "split" / "checkpoint_last.pt")["state"]["global_step"] == stop_after
    assert main(["train", "--resume", str(tmp_path / "split"), "--set", "train.max_steps=none", "--quiet"]) == 0
    resumed = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert resumed["final"]["top1"] == straight["final"]["top1"]
    assert resumed["final"]["per_class"] == straight["final"]["per_class"]
    a, b = state_of(straight_folder / "checkpoint_last.pt"), state_of(tmp_path / "split" / "checkpoint_last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    first, second = RunFolder(tmp_path / "split").read_sessions()
    assert first["from"] == {"epoch": 0, "step": 0, "global_step": 0} and first["outcome"] == "finished"
    assert first["reached"]["global_step"] == second["from"]["global_step"] == stop_after
    assert second["reached"] == {"epoch": 3, "step": 0, "global_step": 60} and second["outcome"] == "finished"
    assert second["command"] == f"glmc train --resume {tmp_path / 'split'} --set train.max_steps=none --quiet"
    assert "command" not in first  # train() called from Python: no command line to record
    assert {"started", "ended", "seconds", "host", "device", "git_commit", "version", "precision"} <= set(second)
    assert cpu_model() in second["device"]  # the CPU model, not only "x86_64": the time a session took means little without it


def test_how_often_a_run_is_evaluated_changes_nothing_it_trains(tmp_path, straight_run):
    # seeds evaluated at different cadences pool into one row (`glmc compare --aggregate-seeds`)
    every_folder, every = straight_run
    sparse = train(tiny_config(train__eval_every=3), tmp_path / "sparse", quiet=True)
    assert len((every_folder / "metrics.jsonl").read_text().splitlines()) == 3
    assert len((tmp_path / "sparse" / "metrics.jsonl").read_text().splitlines()) == 1
    a, b = state_of(every_folder / "checkpoint_last.pt"), state_of(tmp_path / "sparse" / "checkpoint_last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sparse["final"]["per_class"] == every["final"]["per_class"]


def test_in_a_log_file_each_epoch_left_unevaluated_gets_a_progress_line_on_stderr(tmp_path, straight_run, capsys):
    # under pytest stderr is not a terminal, as in a log file: no progress bar, so a line per epoch takes its place
    every_folder, _ = straight_run
    every = [json.loads(line) for line in (every_folder / "metrics.jsonl").read_text().splitlines()]
    train(tiny_config(train__eval_every=3, train__max_steps=41), tmp_path / "sparse")  # 20 steps an epoch
    out, err = capsys.readouterr()
    expected = [f"epoch   {r['epoch']}/3  loss {r['losses']['loss']:.4f}  lr {r['lr']:.5f}  " for r in every[:2]]
    assert [line[:len(expected[0])] for line in err.splitlines()] == expected  # the same run evaluated each epoch
    assert [line.split("  loss")[0] for line in out.splitlines() if line.startswith("epoch")] == ["epoch   3/3"]

    train(tiny_config(train__eval_every=3, train__max_steps=21), tmp_path / "quiet", quiet=True)
    assert capsys.readouterr().err == ""


def test_an_epoch_line_says_when_other_work_took_enough_of_the_cpu_to_slow_the_epoch():
    line = epoch_line(4, 10, {"loss": 0.5}, 0.01, 93.8, other_cpu_share=0.45)
    assert line.endswith("  93.8s (other work took 45% of the CPU time)")
    assert epoch_line(4, 10, {"loss": 0.5}, 0.01, 93.8, other_cpu_share=0.04).endswith("  93.8s")
    assert epoch_line(4, 10, {"loss": 0.5}, 0.01, 93.8).endswith("  93.8s")


@pytest.mark.slow  # over 20 s on 2 cores of an AMD EPYC without AVX-512 (pytest --durations, 2026-12-06)
def test_a_sparse_cadence_set_on_resume_still_evaluates_each_of_the_last_epochs(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train__epochs=7, train__eval_every=4, train__max_steps=40), run, quiet=True)  # 20 steps an epoch
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=none", "--set", "train.eval_last_epochs=2",
                 "--quiet"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [2, 4, 6, 7]  # where the first piece stopped, every 4th, the last 2
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["eval_last_epochs"] == 2


def test_overwrite_starts_the_sessions_afresh(tmp_path):
    train(tiny_config(train__max_steps=2), tmp_path, quiet=True)
    train(tiny_config(train__max_steps=3), tmp_path, resume=Resume.ALWAYS, quiet=True)
    assert len(RunFolder(tmp_path).read_sessions()) == 2
    train(tiny_config(train__max_steps=3), tmp_path, resume=Resume.ALWAYS, quiet=True)  # finished: nothing to do, nothing recorded
    assert len(RunFolder(tmp_path).read_sessions()) == 2
    train(tiny_config(train__max_steps=4), tmp_path, overwrite=True, quiet=True)
    (only,) = RunFolder(tmp_path).read_sessions()
    assert only["session"] == 1 and only["reached"]["global_step"] == 4


def test_max_steps_stops_a_smoke_run(tmp_path):
    summary = train(tiny_config(train__max_steps=5), tmp_path, quiet=True)
    assert summary["steps"] == 5 and summary["final"]["epoch"] == 1


def test_cosine_schedules():
    cosine = OptimConfig(lr=0.1)
    assert learning_rate(0, 200, cosine) == 0.1
    assert learning_rate(100, 200, cosine) == pytest.approx(0.05)
    assert learning_rate(199, 200, cosine) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 199 / 200)))
    warm = OptimConfig(lr=0.1, schedule="warmup-cosine", warmup_epochs=10)
    assert [learning_rate(e, 100, warm) for e in (0, 4, 9)] == pytest.approx([0.01, 0.05, 0.1])
    assert learning_rate(11, 100, warm) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 2 / 91)))


def test_warmup_step_schedule_is_cao_et_al_s():
    """LDAM-DRW's CIFAR schedule: 0.02 ... 0.1 over epochs 0-4, 0.1 to epoch 159, then x0.01 at 160 and again at 180."""
    step = OptimConfig(lr=0.1, schedule="warmup-step", warmup_epochs=5, decay_at=[0.8, 0.9], decay_factor=0.01)
    epochs = [0, 1, 4, 5, 159, 160, 179, 180, 199]
    assert [learning_rate(e, 200, step) for e in epochs] == pytest.approx(
        [0.02, 0.04, 0.1, 0.1, 0.1, 1e-3, 1e-3, 1e-5, 1e-5])
    # the milestones are fractions of the run, so a shorter run decays at the same share of it
    assert [learning_rate(e, 10, step) for e in (7, 8, 9)] == pytest.approx([0.1, 1e-3, 1e-5])
    no_warmup = OptimConfig(lr=0.1, schedule="warmup-step", warmup_epochs=0, decay_at=[0.5], decay_factor=0.1)
    assert [learning_rate(e, 10, no_warmup) for e in (0, 4, 5)] == pytest.approx([0.1, 0.1, 0.01])


def test_ramp_cosine_schedule_is_ren_et_al_s():
    """Balanced Softmax's CIFAR schedule (CosineAnnealingLRWarmup stepped before each epoch t = e + 1): 0.05 rising by
    0.05 / (W - 1) an epoch, 0.1 at epoch W - 1, cosine after, 0 in the last epoch."""
    ramp = OptimConfig(lr=0.1, schedule="ramp-cosine", warmup_epochs=32, warmup_start=0.5)
    reference = [0.05 + 0.05 * (t - 1) / 31 if t < 32 else 0.1 * (1 + math.cos(math.pi * (t - 32) / (520 - 32))) / 2
                 for t in range(1, 521)]
    assert [learning_rate(e, 520, ramp) for e in range(520)] == pytest.approx(reference, abs=1e-15)
    assert learning_rate(0, 520, ramp) == pytest.approx(0.05) and learning_rate(31, 520, ramp) == pytest.approx(0.1)
    assert learning_rate(519, 520, ramp) == pytest.approx(0.0, abs=1e-15)
    no_ramp = OptimConfig(lr=0.1, schedule="ramp-cosine", warmup_epochs=0)
    assert [learning_rate(e, 5, no_ramp) for e in (0, 4)] == pytest.approx([0.1, 0.0])


@pytest.mark.slow  # over 20 s on 2 cores of an AMD EPYC without AVX-512 (pytest --durations, 2026-12-06)
def test_balanced_softmax_at_ren_et_al_s_recipe_trains_with_its_schedule_and_augmentation(tmp_path):
    """The recipe's pieces in one run: the epochs' lr follow ramp-cosine, the partial batch is dropped, and AutoAugment
    with Cutout changes what the model sees (the same run without them ends elsewhere), deterministically."""
    recipe = {"method.name": "balanced-softmax", "optim.schedule": "ramp-cosine", "optim.warmup_epochs": 3,
              "optim.warmup_start": 0.5, "train.epochs": 4, "train.batch_size": 64, "train.drop_last": True,
              "data.autoaugment": "cifar10", "data.cutout": 16}
    config = tiny_config(**{key.replace(".", "__"): value for key, value in recipe.items()})
    first, again = (train(config, tmp_path / name, quiet=True) for name in ("first", "again"))
    plain = train(tiny_config(**{key.replace(".", "__"): value for key, value in recipe.items()
                                 if not key.startswith("data.")}), tmp_path / "plain", quiet=True)
    records = [json.loads(line) for line in (tmp_path / "first" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == pytest.approx([learning_rate(e, 4, config.optim) for e in range(4)])
    assert [r["lr"] for r in records] == pytest.approx([0.025, 0.0375, 0.05, 0.0])
    assert first["steps"] == 4 * (first["dataset"]["total"] // 64)
    assert first["final"] == again["final"] and first["final"] != plain["final"]


def glmc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "glmc.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "quickstrat"], "unknown preset 'quickstrat'; did you mean 'quickstart'"),
        (["--preset", "quickstart", "--set", "model.backbone=resnet33"], "unknown backbone 'resnet33'"),
        (["--preset", "quickstart", "--set", "method.name=focall"], "unknown method 'focall'; did you mean 'focal'"),
        (["--preset", "quickstart", "--lr", "0"], "optim.lr must be > 0"),
        (["--preset", "quickstart", "--epochs", "-1"], "train.epochs must be > 0"),
        (["--preset", "quickstart", "--batch-size", "0"], "train.batch_size must be > 0"),
        (["--preset", "quickstart", "--set", "train.resample_weighting=-1"], "must be >= 0"),
        (["--preset", "quickstart", "--set", "method.label_weighting=-0.1"], "tau) must be >= 0"),
        (["--preset", "quickstart", "--batch-size", "100000"], "batch size must be in [1, 1236]"),
        (["--preset", "quickstart", "--epochs", "many"], "train.epochs expects an integer, got 'many'"),
    ],
)
def test_bad_train_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert message in refusal(capsys, "train", *args, "--output", str(tmp_path / "out"), "--device", "cpu")
    assert not (tmp_path / "out").exists()


def test_an_existing_run_is_not_overwritten_unless_asked(finished_run, tmp_path):
    output, _ = finished_run
    before = (output / "summary.json").read_bytes()
    done = glmc("train", "--preset", "quickstart", "--output", str(output), cwd=tmp_path)
    assert done.returncode == 2 and "already holds a run; pass --resume" in done.stderr
    assert (output / "summary.json").read_bytes() == before


def test_resume_refuses_a_checkpoint_of_another_model(finished_run, tmp_path):
    output = tmp_path / "edited"
    shutil.copytree(finished_run[0], output)
    config = (output / "config.yaml").read_text()
    for key, value, message in (("backbone", "resnet20", "holds a resnet8 with 10 classes (linear classifier), not a "
                                                         "resnet20 with 10 classes"),
                                ("classifier", "cosine", "not a resnet8 with 10 classes (cosine classifier)")):
        edited = re.sub(rf"(?m)^(  {key}: ).*$", rf"\g<1>{value}", config)
        assert edited != config
        (output / "config.yaml").write_text(edited)
        done = glmc("train", "--resume", str(output), cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr


def test_resume_changes_where_and_how_a_run_goes_on_never_its_recipe(finished_run, tmp_path):
    output, _ = finished_run
    before = {name: (output / name).read_bytes() for name in ("config.yaml", "summary.json", "metrics.jsonl")}
    for flags in (["--set", "optim.lr=0.1"], ["--lr", "0.1"], ["--set", "model.backbone=resnet20", "--set", "train.seed=3"]):
        done = glmc("train", "--resume", str(output), *flags, cwd=tmp_path)
        assert done.returncode == 2 and "a resumed run keeps its recipe, so " in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert "model.backbone, train.seed cannot change" in done.stderr and "glmc train --config" in done.stderr
    assert {name: (output / name).read_bytes() for name in before} == before
    done = glmc("train", "--resume", str(output), "--set", "train.precision=fp32", "--set", "train.max_steps=none",
                "--device", "cpu", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # a finished run: nothing to train, nothing written
    assert {name: (output / name).read_bytes() for name in before} == before


def test_eval_refuses_weights_of_another_architecture(finished_run, tmp_path):
    checkpoint = load_checkpoint(finished_run[0] / "checkpoint_last.pt")
    checkpoint["backbone"] = "resnet20"
    save_checkpoint(tmp_path / "mislabelled.pt", checkpoint)
    done = glmc("eval", str(tmp_path / "mislabelled.pt"), "--device", "cpu")
    assert done.returncode == 2 and "does not fit a resnet20" in done.stderr


class RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    torch.save({"format": "glmc-checkpoint/1", "model": RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(GlmcError, match="refusing to load"):
        load_checkpoint(tmp_path / "evil.pt")
    done = glmc("eval", str(tmp_path / "evil.pt"))
    assert done.returncode == 2 and "pwned" not in done.stdout


@pytest.mark.slow
@pytest.mark.real_data
def test_short_real_cifar10_lt_run_records_its_split_and_beats_chance(cifar10_root, tmp_path):
    # One epoch (194 steps) of the standard ResNet-32 at batch 64. Plain cross-entropy: GLMC
    # predicts with its re-balanced head, which alpha = 1 - (T/T_max)^2 leaves untrained in
    # the first epochs, so a short GLMC run says little about the pipeline.
    config = build_config("cifar10-lt-if100", {"data.data_root": str(cifar10_root), "train.epochs": "1",
                                               "train.device": "cpu", "method.name": "ce"})
    summary = train(config, tmp_path, quiet=True)
    assert summary["fingerprint"] == "sha256:f7669c469c9dd" + summary["fingerprint"][20:]
    assert summary["dataset"]["total"] == 12406 and summary["steps"] == 194
    assert summary["final"]["top1"] > 18.0  # chance: 10%; measured 26.8
    assert summary["final"]["many"] > summary["final"]["medium"]  # the long tail shows
