"""`glmc status`: finished, training, stopped or lost; the position, the pace and the time left."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from glmc import status
from glmc.cli import main
from glmc.config import build_config
from glmc.lock import take
from glmc.machine import busy_cpu_seconds
from glmc.rundir import RunFolder, utc
from glmc.trainer import train

from conftest import refusal

STEPS_PER_EPOCH = 20  # synthetic-lt at the default batch
STOP_AT = 25  # steps: epoch 2, step 5


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """Three epochs of a tiny run, stopped by train.max_steps five steps into the second."""
    output = tmp_path_factory.mktemp("stopped")
    config = build_config(None, {"data.dataset": "synthetic-lt", "model.backbone": "resnet8", "train.epochs": "3",
                                 "train.device": "cpu", "train.max_steps": str(STOP_AT)})
    train(config, output, quiet=True)
    return output


def copy_of(run, tmp_path, name="run"):
    copy = tmp_path / name
    shutil.copytree(run, copy)
    return copy


def rewrite_last_session(run, change):
    sessions = RunFolder(run).read_sessions()
    sessions[-1] = change(sessions[-1])
    (run / "sessions.jsonl").write_text("".join(json.dumps(session) + "\n" for session in sessions))


def test_a_run_stopped_by_max_steps_is_not_finished_and_says_where_it_stands(stopped_run):
    run = status.run_status(stopped_run)
    assert run.state == "stopped" and run.outcome == status.MAX_STEPS_REACHED
    assert run.position == {"epoch": 1, "step": 5, "global_step": STOP_AT}
    assert run.steps_per_epoch == STEPS_PER_EPOCH and run.total_steps == 3 * STEPS_PER_EPOCH
    session = RunFolder(stopped_run).read_sessions()[-1]
    assert run.seconds_per_step == pytest.approx(session["seconds"] / STOP_AT)
    assert run.seconds_left == pytest.approx((3 * STEPS_PER_EPOCH - STOP_AT) * session["seconds"] / STOP_AT)
    lines = status.status_lines(run)
    assert lines[0] == f"{stopped_run}: stopped (train.max_steps reached)"
    assert lines[1].startswith("  at epoch 2 of 3, step 5 of 20 (25 of 60 steps, 41.7%), saved 20")
    assert lines[-1] == f"  glmc train --resume {stopped_run} goes on from there"


def test_a_run_stopped_by_a_signal_and_one_whose_end_was_never_recorded(stopped_run, tmp_path):
    stopped = copy_of(stopped_run, tmp_path, "sigterm")
    (stopped / "summary.json").unlink()
    rewrite_last_session(stopped, lambda session: {**session, "outcome": "SIGTERM"})
    assert status.status_lines(status.run_status(stopped))[0] == f"{stopped}: stopped (SIGTERM)"

    records_only = copy_of(stopped, tmp_path, "records-only")  # a run's records kept without its checkpoints
    for checkpoint in records_only.glob("*.pt*"):
        checkpoint.unlink()
    run = status.run_status(records_only)
    assert run.state == "stopped" and run.position["global_step"] == STOP_AT and run.saved is None
    lines = status.status_lines(run)
    assert lines[1].endswith("by its sessions.jsonl: the folder holds no checkpoint")
    assert not any("--resume" in line for line in lines)

    lost = copy_of(stopped, tmp_path, "lost")
    rewrite_last_session(lost, lambda session: {key: session[key] for key in ("session", "started", "from")})
    run = status.run_status(lost)
    assert run.state == "lost" and run.position["global_step"] == STOP_AT
    assert "killed without a signal, or its machine was lost" in status.status_lines(run)[0]


def write_sessions(run, sessions):
    (run / "sessions.jsonl").write_text("".join(json.dumps(session) + "\n" for session in sessions))


def test_a_run_in_training_gives_its_holder_and_the_pace_of_its_session(stopped_run, tmp_path):
    run_dir = copy_of(stopped_run, tmp_path)
    (run_dir / "summary.json").unlink()
    saved = float(int((run_dir / "checkpoint_last.pt").stat().st_mtime))  # whole seconds, as sessions.jsonl writes them
    os.utime(run_dir / "checkpoint_last.pt", (saved, saved))
    # a session that began at step 5 of the run, 12 s before it wrote the checkpoint at step 25: 0.6 s a step
    write_sessions(run_dir, [{"session": 1, "started": utc(saved - 12), "from": {"epoch": 0, "step": 5, "global_step": 5}}])
    lease = take(run_dir, command="glmc train --resume run")
    try:
        run = status.run_status(run_dir)
    finally:
        lease.release()
    assert run.state == "training" and f"process {os.getpid()}" in run.holder
    assert run.seconds_per_step == pytest.approx(0.6) and run.pace_session == 1
    lines = status.status_lines(run)
    assert lines[0] == f"{run_dir}: training: {run.holder}"
    assert lines[-1] == "  0.60 s a step over session 1 (this one); 21 s left at that pace"  # 35 steps left
    assert status.run_status(run_dir).state == "lost"  # the lease released, the session never ended


def test_a_session_just_begun_takes_its_pace_from_the_last_that_trained_an_epoch(stopped_run, tmp_path):
    run_dir = copy_of(stopped_run, tmp_path)
    (run_dir / "summary.json").unlink()
    saved = (run_dir / "checkpoint_last.pt").stat().st_mtime
    write_sessions(run_dir, [  # 20 steps in 40 s, then 5 steps (less than an epoch's 20) in 50 s, start-up mostly
        {"session": 1, "started": utc(saved - 200), "from": {"epoch": 0, "step": 0, "global_step": 0},
         "ended": utc(saved - 160), "seconds": 40.0, "reached": {"epoch": 1, "step": 0, "global_step": 20}, "outcome": "SIGTERM"},
        {"session": 2, "started": utc(saved - 50), "from": {"epoch": 1, "step": 0, "global_step": 20}}])
    run = status.run_status(run_dir)
    assert run.state == "lost" and run.seconds_per_step == 2.0 and run.pace_session == 1
    assert "  2.00 s a step over session 1; 1 min left at that pace" in status.status_lines(run)


def test_the_pace_says_when_other_work_shared_the_cpus_in_its_session(stopped_run, tmp_path):
    recorded = RunFolder(stopped_run).read_sessions()[-1].get("other_cpu_share")
    assert (recorded is None) == (busy_cpu_seconds() is None)  # written wherever the system can say (Linux's /proc)
    assert recorded is None or 0.0 <= recorded <= 1.0
    run_dir = copy_of(stopped_run, tmp_path)
    for share, said in ((0.45, True), (0.04, False)):
        rewrite_last_session(run_dir, lambda session: {**session, "other_cpu_share": share})
        pace = [line for line in status.status_lines(status.run_status(run_dir)) if "s a step over session 1" in line]
        assert len(pace) == 1 and ("while other work took 45% of the CPU time;" in pace[0]) == said


def test_a_session_still_training_takes_what_other_work_took_from_its_evaluated_epochs(stopped_run, tmp_path):
    run_dir = copy_of(stopped_run, tmp_path)
    (run_dir / "summary.json").unlink()
    saved = (run_dir / "checkpoint_last.pt").stat().st_mtime
    write_sessions(run_dir, [{"session": 1, "started": utc(saved - 12), "from": {"epoch": 0, "step": 5, "global_step": 5}}])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["global_step"] for record in records] == [20, 25]  # both after the session's start, at step 5
    records[0] |= {"seconds": 30.0, "other_cpu_share": 0.6}
    records[1] |= {"seconds": 10.0, "other_cpu_share": 0.0}
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    lease = take(run_dir, command="glmc train --resume run")
    try:
        run = status.run_status(run_dir)
    finally:
        lease.release()
    assert run.pace_session == 1 and run.pace_other_cpu_share == pytest.approx(0.45)  # weighted by the epochs' seconds
    assert "(this one), while other work took 45% of the CPU time;" in status.status_lines(run)[-1]

    write_sessions(run_dir, [{"session": 1, "started": utc(saved - 12), "from": {"epoch": 1, "step": 0, "global_step": 20}}])
    assert status.run_status(run_dir).pace_other_cpu_share == 0.0  # only the epochs the session trained count


def test_a_finished_run_gives_its_final_and_best_epoch(tiny_run, capsys):
    assert main(["status", str(tiny_run)]) == 0
    out = capsys.readouterr().out.splitlines()
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert out[0].startswith(f"{tiny_run}: finished, 2 epochs in ") and out[0].endswith("(1 session)")
    assert out[1].startswith(f"  final: top-1 {summary['final']['top1']:.2f} (many ")
    assert out[2] == f"  best: top-1 {summary['best']['top1']:.2f} at epoch {summary['best']['epoch']} (test-selected)"

    assert main(["status", str(tiny_run), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["state"] == "finished" and record["seconds_left"] is None and record["position"]["epoch"] == 2


def test_the_best_evaluation_so_far_is_shown_where_it_is_not_the_last(stopped_run, tmp_path):
    run_dir = copy_of(stopped_run, tmp_path)
    (run_dir / "summary.json").unlink()
    shots = {"many": 60.0, "medium": 30.0, "few": None}
    records = [{"epoch": 1, "top1": 50.0, **shots}, {"epoch": 2, "top1": 40.0, **shots}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    lines = status.status_lines(status.run_status(run_dir))
    assert "  last evaluation: epoch 2, top-1 40.00 (many 60.00 / medium 30.00 / few -)" in lines
    assert "  best so far: epoch 1, top-1 50.00 (many 60.00 / medium 30.00 / few -) (test-selected)" in lines

    records[1]["top1"] = 55.0  # the last is the best: one line
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    assert not any("best so far" in line for line in status.status_lines(status.run_status(run_dir)))


def test_a_damaged_last_checkpoint_gives_the_position_of_the_one_before_it(stopped_run, tmp_path, capsys):
    run_dir = copy_of(stopped_run, tmp_path)
    (run_dir / "summary.json").unlink()
    (run_dir / "checkpoint_last.pt").write_bytes(b"damaged")
    run = status.run_status(run_dir)
    assert run.position == {"epoch": 1, "step": 0, "global_step": STEPS_PER_EPOCH}  # the end of the first epoch
    assert "does not match its SHA-256" in capsys.readouterr().err  # said, as a resume would say it


def test_a_finished_run_never_tested_gives_its_validation_figures():
    final = {"epoch": 4, "top1": None, "val": {"top1": 61.25, "balanced": 58.5}}
    summary = {"epochs": 4, "wall_seconds": 90.0, "final": final, "best": {**final, "label": "best epoch, selected on "
                                                                                       "the validation set"}}
    lines = status.status_lines(status.RunStatus(path="trial-3", state="finished", epochs=4, summary=summary, sessions=1))
    assert lines == ["trial-3: finished, 4 epochs in 2 min (1 session)",
                     "  final: validation top-1 61.25, balanced 58.50 (the test set was not evaluated)"]


def test_a_run_before_its_first_checkpoint(stopped_run, tmp_path):
    run_dir = tmp_path / "new"
    run_dir.mkdir()
    shutil.copy(stopped_run / "config.yaml", run_dir)
    run = status.run_status(run_dir)
    assert run.state == "not started" and status.status_lines(run) == [f"{run_dir}: no checkpoint yet"]


def test_a_folder_without_a_run_is_one_line_and_exit_2(tmp_path, tiny_run, capsys):
    assert "run folder not found" in refusal(capsys, "status", str(tmp_path / "missing"))
    assert "holds no glmc run (no config.yaml)" in refusal(capsys, "status", str(tmp_path))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("train: [not, a, mapping")
    assert "config.yaml is not a glmc run config (no train.epochs)" in refusal(capsys, "status", str(broken))

    assert main(["status", str(tmp_path), str(tiny_run)]) == 2  # the runs after it are still shown
    out, err = capsys.readouterr()
    assert err == f"glmc: error: {tmp_path} holds no glmc run (no config.yaml)\n"
    assert out.startswith(f"{tiny_run}: finished")


@pytest.mark.parametrize("seconds, text", [(40, "40 s"), (420, "7 min"), (7500, "2 h 05 min"), (36000, "10 h 00 min")])
def test_durations_read_as_hours_and_minutes(seconds, text):
    assert status.duration(seconds) == text
