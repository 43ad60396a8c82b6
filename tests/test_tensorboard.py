"""`glmc train --tensorboard`: the metrics.jsonl scalars as TensorBoard events; a clear error without it."""

from __future__ import annotations

import json
import sys

import pytest

from glmc.cli import main
from glmc.config import build_config
from glmc.errors import GlmcError
from glmc.rundir import Resume
from glmc.tensorboard import TensorBoardLog, record_scalars
from glmc.trainer import train

SMOKE = {"data.dataset": "synthetic-lt", "model.backbone": "resnet8", "train.epochs": "2", "train.batch_size": "128",
         "train.device": "cpu"}


def test_without_the_package_the_flag_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(GlmcError, match="pip install"):
        TensorBoardLog(tmp_path)
    output = tmp_path / "run"
    assert main(["train", "--preset", "quickstart", "--output", str(output), "--device", "cpu", "--tensorboard"]) == 2
    error = capsys.readouterr().err
    assert "needs the tensorboard package" in error and error.count("\n") == 1
    assert not output.exists()


def test_record_scalars_skip_empty_shot_groups():
    record = {"top1": 50.0, "top5": 90.0, "many": 60.0, "medium": None, "few": 10.0, "losses": {"loss": 1.5, "ce": 1.2},
              "lr": 0.01, "seconds": 2.0, "global_step": 7}
    assert record_scalars(record) == {"accuracy/top1": 50.0, "accuracy/top5": 90.0, "accuracy/many": 60.0, "accuracy/few": 10.0,
                                      "loss/loss": 1.5, "loss/ce": 1.2, "lr": 0.01, "seconds_per_epoch": 2.0}
    assert record_scalars({**record, "other_cpu_share": 0.45})["other_cpu_share"] == 0.45


def scalar_events(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_training_logs_the_metrics_records_and_a_resume_continues_them(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    train(build_config(None, {**SMOKE, "train.max_steps": "3"}), tmp_path, tensorboard=True)
    train(build_config(None, {**SMOKE, "train.max_steps": "6"}), tmp_path, resume=Resume.ALWAYS, tensorboard=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = scalar_events(tmp_path / "tensorboard")
    assert set(events) == set(record_scalars(records[0]))
    assert [step for step, _ in events["accuracy/top1"]] == [3, 6]
    for tag in ("accuracy/top1", "loss/loss", "loss/sim", "lr"):
        expected = [record_scalars(r)[tag] for r in records]
        assert [value for _, value in events[tag]] == pytest.approx(expected, rel=1e-6)
    captured = capsys.readouterr()
    assert "epoch   1/2  loss" in captured.out  # one line per evaluation
    assert "it/s" not in captured.err and "s/it" not in captured.err  # no progress bar when stderr is not a terminal
