"""`glmc tune`: trials chosen on the validation set, never tested; a study that continues and is shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

import glmc.tune
from glmc.cli import main
from glmc.errors import ConfigError
from glmc.methods.base import SearchRange, search_space
from glmc.rundir import RunFolder
from glmc.tune import load_space, rank_agreement, spearman, tune

from conftest import refusal

SHORT = ["--set", "train.epochs=2"]  # quickstart trials of two epochs, evaluated at each


def tune_args(output: Path, *args: str) -> list[str]:
    return ["tune", "--preset", "quickstart", "--output", str(output), *SHORT, *args]


def tune_command(output: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "glmc", *tune_args(output, *args)]


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def study_of(output: Path) -> optuna.Study:
    return optuna.load_study(study_name=glmc.tune.STUDY_NAME, storage=f"sqlite:///{output / 'study.db'}")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    """Three trials of the quickstart."""
    output = tmp_path_factory.mktemp("tune") / "study"
    tune("quickstart", 3, output, overrides={"train.epochs": "2"}, sampler_seed=0, log=lambda message: None)
    return output


def test_trials_choose_on_the_validation_set_and_never_test(study_dir):
    study = study_of(study_dir)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in study.trials:
        folder = study_dir / "trials" / str(trial.number)
        config = json.loads((folder / "summary.json").read_text())["config"]
        assert (config["data"]["validation"], config["eval"]["test"]) == ("held-out", False)
        assert all("top1" not in record for record in records(folder))  # the test set was never evaluated
        assert trial.value == records(folder)[-1]["val"]["balanced"]
        assert trial.intermediate_values == {r["epoch"]: r["val"]["balanced"] for r in records(folder)}
        assert set(trial.params) == set(search_space("glmc"))
        assert config["method"]["label_weighting"] == trial.params["method.label_weighting"]
    assert (study_dir / "report" / "optimisation_history.png").is_file()
    assert (study_dir / "report" / "param_importances.png").is_file()
    assert (study_dir / "report" / "trials.md").read_text().count("| complete |") == 3


def test_best_yaml_trains_the_final_model_without_validation_and_tests_it_once(study_dir, tmp_path):
    study = study_of(study_dir)
    assert main(["train", "--config", str(study_dir / "best.yaml"), "--output", str(tmp_path / "final"), "--device", "cpu",
                 "--quiet"]) == 0
    summary = json.loads((tmp_path / "final" / "summary.json").read_text())
    assert summary["config"]["data"]["validation"] == "none" and summary["config"]["eval"]["test"] is True
    assert summary["config"]["optim"]["lr"] == study.best_trial.params["optim.lr"]
    assert summary["config"]["train"]["epochs"] == 2 and "val" not in records(tmp_path / "final")[-1]
    assert summary["final"]["top1"] is not None


def test_the_same_command_continues_the_study(study_dir, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in (study_dir / "trials").glob("*/summary.json")}
    assert main(["tune", "--preset", "quickstart", "--trials", "4", "--output", str(study_dir), *SHORT]) == 0
    assert len(study_of(study_dir).trials) == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the three finished trials stay as they are
    assert "trial 3: validation balanced accuracy" in capsys.readouterr().out
    assert main(["tune", "--preset", "quickstart", "--trials", "4", "--output", str(study_dir), "--set", "train.epochs=3"]) == 2
    assert "the study there differs in overrides (it tunes quickstart with {'train.epochs': '2'})" in capsys.readouterr().err


@pytest.mark.slow  # over 20 s on 2 CPU cores (pytest --durations, 2026-12-01)
def test_two_processes_share_one_study_in_a_journal_file(tmp_path):
    output = tmp_path / "shared"  # as on a cluster: one folder on a shared file system, the study a file in it
    journal = output / "study.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    both = [subprocess.Popen(tune_command(output, "--trials", "4", "--storage", f"journal:{journal}"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in both]
    assert [process.returncode for process in both] == [0, 0], [err[-2000:] for _, err in outputs]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name=glmc.tune.STUDY_NAME, storage=storage).trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials) and 4 <= len(trials) <= 5
    folders = sorted(path.parent for path in (output / "trials").glob("*/summary.json"))
    assert sorted(int(folder.name) for folder in folders) == [t.number for t in trials]  # each trial ran once
    assert all(len(RunFolder(folder).read_sessions()) == 1 for folder in folders)
    assert not (output / "study.db").exists()


@pytest.mark.slow  # over 20 s on 2 CPU cores (pytest --durations, 2026-12-01)
def test_a_killed_trial_is_taken_up_again_from_its_checkpoint(tmp_path):
    output = tmp_path / "study"
    process = subprocess.Popen(tune_command(output, "--trials", "2", "--set", "train.epochs=6"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    first = output / "trials" / "0" / "checkpoint_last.pt"
    deadline = time.time() + 120
    while not first.exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = subprocess.run(tune_command(output, "--trials", "2", "--set", "train.epochs=6"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trial 0 (left running by process" in done.stdout and "the process is gone) queued again" in done.stdout
    states = [t.state.name for t in study_of(output).trials]
    assert states.count("COMPLETE") == 2 and states[0] == "FAIL"
    killed, resumed = RunFolder(output / "trials" / "0").read_sessions()
    assert "outcome" not in killed and resumed["from"]["global_step"] > 0 and resumed["outcome"] == "finished"


def test_a_pruned_trial_stops_and_is_recorded_pruned(tmp_path, monkeypatch):
    monkeypatch.setattr(glmc.tune, "make_pruner", lambda name, epochs: optuna.pruners.ThresholdPruner(lower=101.0))  # prunes at once
    lines = []
    study = tune("quickstart", 2, tmp_path, overrides={"train.epochs": "4", "train.eval_every": "2"}, log=lines.append)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert "pruned at epoch 2" in lines[0]
    (session,) = RunFolder(tmp_path / "trials" / "0").read_sessions()
    assert session["outcome"].startswith("TrialPruned") and session["reached"]["epoch"] < 4
    assert not (tmp_path / "best.yaml").exists()  # no complete trial, no best


@pytest.mark.parametrize("space, message", [
    ({"optim.lrr": {"low": 0.1, "high": 1}}, "unknown config key 'optim.lrr'"),
    ({"method.focal_gamma": {"low": 0, "high": 2}}, "method glmc has no option 'focal_gamma'"),
    ({"optim.lr": {"low": 0.5, "high": 0.1}}, "optim.lr needs finite low < high"),
    ({"optim.lr": {"low": 0, "high": 0.1, "log": True}}, "on a log scale needs low > 0"),
    ({"train.epochs": {"low": 1.5, "high": 3}}, "train.epochs is an integer"),
    ({"data.validation": {"choices": ["none"]}}, "data.validation is fixed by glmc tune"),
    ({"optim.lr": {"lo": 0.1, "high": 1}}, "expected {low, high[, log]} or {choices: [...]}"),
    ({"train.sampler": {"low": 0, "high": 1}}, "train.sampler takes str values; give it choices"),
])
def test_a_bad_search_space_is_one_line_and_exit_2(tmp_path, capsys, space, message):
    import yaml

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    assert message in refusal(capsys, *tune_args(tmp_path / "out", "--trials", "1", "--space", str(tmp_path / "space.yaml")))
    assert not (tmp_path / "out").exists()


def test_a_space_file_changes_the_declared_space(tmp_path):
    (tmp_path / "space.yaml").write_text("optim.weight_decay: null\nmethod.consistency_weight: {low: 1, high: 4}\n"
                                         "train.epochs: {choices: [2, 3]}\n")
    space = load_space("glmc", tmp_path / "space.yaml")
    assert "optim.weight_decay" not in space and space["method.consistency_weight"] == SearchRange(1.0, 4.0)
    assert space["train.epochs"].choices == (2, 3) and space["optim.lr"] == search_space("glmc")["optim.lr"]
    with pytest.raises(ConfigError, match="--trials must be >= 1"):
        tune("quickstart", 0, tmp_path / "none")


def test_the_median_pruner_waits_for_half_the_epochs():
    study = optuna.create_study(direction="maximize", pruner=glmc.tune.make_pruner("median", 20))
    for _ in range(5):
        trial = study.ask()
        for epoch in range(2, 21, 2):
            trial.report(50.0, step=epoch)
        study.tell(trial, 50.0)
    poor = study.ask()
    poor.report(10.0, step=8)
    assert not poor.should_prune()  # before epoch 10: GLMC's early scores rank trials poorly
    poor.report(10.0, step=10)
    assert poor.should_prune()
    assert isinstance(glmc.tune.make_pruner("none", 20), optuna.pruners.NopPruner)


def test_spearman_and_the_rank_agreement_of_early_evaluations():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)  # ties share their mean rank
    study = optuna.create_study(direction="maximize")
    for early, final in ((10, 50), (20, 40), (30, 60)):
        trial = study.ask()
        trial.report(early, step=2)
        study.tell(trial, final)
    assert rank_agreement(study) == {2: pytest.approx(0.5)}
