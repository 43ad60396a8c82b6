"""tools/cpu_campaign.py: the CPU campaign rebuilt from its fallback commit, and its pieces started and paused."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def campaign_script():
    spec = importlib.util.spec_from_file_location("cpu_campaign", ROOT / "tools" / "cpu_campaign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cpu_campaign"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["cpu_campaign"]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()


def fallback_table(*commits: str) -> str:
    rows = "".join(f"| commit {commit} | somewhere | 1 MB |\n" for commit in commits)
    return f"# the run\n\n## Fallback checkpoints\n\n| commit | reached | size |\n|---|---|---|\n{rows}"


def write_materializer(path: Path) -> Path:
    path.write_text("import pathlib, sys\n(pathlib.Path(sys.argv[1]) / 'cifar-10-batches-py').mkdir(parents=True)\n")
    return path


@pytest.fixture
def repository(campaign_script, tmp_path):
    """A checkout as the campaign leaves it: the code commit the run started from, two fallback commits whose
    checkpoints the next commit removed again, RUN.md naming both; nothing git-ignored present."""
    root = tmp_path / "checkout"
    (root / "src" / "glmc").mkdir(parents=True)
    (root / "src" / "glmc" / "__init__.py").write_text("")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "code")
    code = git(root, "rev-parse", "HEAD")
    record = root / campaign_script.RECORD
    record.mkdir(parents=True)
    checkpoints, commits = [], []
    for epoch in (44, 80):
        checkpoint = np.random.default_rng(epoch).integers(0, 256, 30_000, dtype=np.uint8).tobytes()
        (record / "checkpoint_last.pt").write_bytes(checkpoint)
        (record / "checkpoint_last.pt.sha256").write_text(f"{hashlib.sha256(checkpoint).hexdigest()}  checkpoint_last.pt\n")
        session = {"session": 1, "git_commit": code, "reached": {"epoch": epoch, "step": 3, "global_step": epoch * 194 + 3}}
        (record / "sessions.jsonl").write_text(json.dumps(session) + "\n")
        (record / "RUN.md").write_text(fallback_table(*commits))
        git(root, "add", ".")
        git(root, "commit", "-q", "-m", f"fallback at epoch {epoch}")
        commits.append(git(root, "rev-parse", "HEAD")[:12])
        checkpoints.append(checkpoint)
        (record / "checkpoint_last.pt").unlink()
        (record / "checkpoint_last.pt.sha256").unlink()
        (record / "RUN.md").write_text(fallback_table(*commits))
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "fallback out of the tree")
    return root, code, checkpoints


def test_restore_rebuilds_the_run_from_the_last_fallback_the_worktree_and_the_data_and_then_keeps_them(
        campaign_script, repository, tmp_path):
    root, code, checkpoints = repository
    campaign = campaign_script.Campaign(root)
    materializer = write_materializer(tmp_path / "materialize.py")

    done = campaign_script.restore(campaign, materializer)
    assert (campaign.run / "checkpoint_last.pt").read_bytes() == checkpoints[-1]  # the last fallback, not the first
    assert "80 epochs + 3 steps" in done[0]
    assert (campaign.worktree(code) / "src" / "glmc" / "__init__.py").is_file()
    assert git(campaign.worktree(code), "rev-parse", "HEAD") == code
    assert (campaign.data / "cifar-10-batches-py").is_dir()

    (campaign.run / "checkpoint_last.pt").write_bytes(b"the live run went further")
    again = campaign_script.restore(campaign, materializer)
    assert (campaign.run / "checkpoint_last.pt").read_bytes() == b"the live run went further"
    assert [line.split(": ")[-1].split(" ")[0] for line in again] == ["live,", "kept", "kept"]


def test_a_fallback_whose_checkpoint_does_not_match_its_checksum_is_refused_and_nothing_is_put_in_place(
        campaign_script, repository, capsys):
    root, _, _ = repository
    record = root / campaign_script.RECORD
    (record / "checkpoint_last.pt").write_bytes(b"damaged")
    (record / "checkpoint_last.pt.sha256").write_text("0" * 64 + "  checkpoint_last.pt\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "a damaged fallback")
    (record / "RUN.md").write_text(fallback_table(git(root, "rev-parse", "HEAD")))
    assert campaign_script.main(["--root", str(root), "restore"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "does not match its SHA-256; nothing restored" in error
    assert not (root / "runs" / campaign_script.NAME).exists()
    assert list((root / "runs").iterdir()) == []  # the extraction's scratch folder is gone too


def test_restore_says_what_is_wrong_when_the_record_names_no_fallback(campaign_script, repository, capsys):
    root, _, _ = repository
    (root / campaign_script.RECORD / "RUN.md").write_text("# the run\n\nno table yet\n")
    assert campaign_script.main(["--root", str(root), "restore"]) == 2
    assert "names no fallback commit" in capsys.readouterr().err


def test_set_given_to_a_command_other_than_start_is_refused_before_it_acts(campaign_script, repository, capsys):
    root, _, _ = repository
    assert campaign_script.main(["--root", str(root), "restore", "--set", "train.eval_every=1"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--set is for start" in error
    assert not (root / "runs").exists()  # restore did not run


def stopped_run(run: Path) -> str:
    """A real run stopped before its end (checkpoint, no summary), recorded as run by this checkout's HEAD."""
    from glmc.config import build_config
    from glmc.trainer import train

    config = build_config(None, {"data.dataset": "synthetic-lt", "model.backbone": "resnet8", "train.epochs": "500",
                                 "train.batch_size": "128", "train.device": "cpu", "train.max_steps": "2"})
    train(config, run, quiet=True)
    (run / "summary.json").unlink()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["train"]["max_steps"] = None  # as the real run: nothing stops it but SIGTERM (or 500 epochs)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    return json.loads((run / "sessions.jsonl").read_text().splitlines()[0])["git_commit"]


def wait_for(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def test_a_piece_starts_in_the_background_from_the_run_commit_logs_the_cpu_and_pauses_with_its_checkpoint_saved(
        campaign_script, tmp_path):  # with a value set for this piece on, which the run's config keeps
    campaign = campaign_script.Campaign(tmp_path)
    commit = stopped_run(campaign.run)
    if not commit:
        pytest.skip("not a git checkout: the piece runs the commit the run records")
    campaign.worktree(commit).parent.mkdir(parents=True)
    campaign.worktree(commit).symlink_to(ROOT)  # the run's commit is this checkout's HEAD
    before = campaign_script.read_sessions(campaign.run)

    pid = campaign_script.start(campaign, ["train.eval_every=3"])
    try:
        with pytest.raises(campaign_script.CampaignError, match=f"already running \\(pid {pid}\\)"):
            campaign_script.start(campaign)  # at once: the lock is taken before the piece runs
        wait_for(lambda: len(campaign_script.read_sessions(campaign.run)) > len(before))  # the training has begun
        time.sleep(2)
    finally:
        assert campaign_script.pause(campaign)  # never leave a 500-epoch run behind

    sessions = campaign_script.read_sessions(campaign.run)
    assert sessions[-1]["outcome"] == "SIGTERM" and sessions[-1]["reached"]["global_step"] > 2
    start_line, end_line = campaign.log.read_text().splitlines()
    assert "start at 0 epochs + 2 steps" in start_line and "CPUs" in start_line and "family" in start_line
    assert campaign_script.starting_point(tmp_path / "never-started") == "from the beginning"
    assert start_line.endswith(" --set train.eval_every=3")
    assert yaml.safe_load((campaign.run / "config.yaml").read_text())["train"]["eval_every"] == 3
    assert end_line.endswith(f"end rc=143 at {campaign_script.position(campaign.run)}")
    assert campaign_script.running_pid(campaign) is None
    assert "piece: not running" in campaign_script.status(campaign)
    assert campaign_script.pause(campaign) is False  # nothing to pause
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 143  # the supervisor exits with the training's code


def test_start_refuses_a_missing_or_finished_run_with_the_command_that_fixes_it(campaign_script, tmp_path, tiny_run,
                                                                                capsys, monkeypatch):
    queue = tmp_path / "queue.yaml"  # the authors' run alone, whatever the committed queue holds after it
    queue.write_text(yaml.safe_dump([{"run": campaign_script.NAME, "record": str(campaign_script.RECORD)}]))
    monkeypatch.setattr(campaign_script, "QUEUE", queue)
    assert campaign_script.main(["--root", str(tmp_path), "start"]) == 2
    assert "run `python tools/cpu_campaign.py restore` first" in capsys.readouterr().err
    campaign = campaign_script.Campaign(tmp_path)
    campaign.run.parent.mkdir(parents=True)
    campaign.run.symlink_to(tiny_run)
    with pytest.raises(campaign_script.CampaignError, match=r"has finished \(summary.json\)"):
        campaign_script.start(campaign)
    assert campaign_script.main(["--root", str(tmp_path), "start"]) == 2  # the queue's only run has finished
    assert f"every run of {queue} has finished: queue the next one" in capsys.readouterr().err


def test_the_committed_queue_begins_with_the_authors_run(campaign_script):
    queue = campaign_script.read_queue()
    assert queue[0] == campaign_script.AUTHORS
    assert all((ROOT / run.record / "RUN.md").is_file() or run.preset for run in queue)
    assert all(run.preset is None or run.commit for run in queue)  # a run not started says which code trains it


def test_once_a_run_has_finished_the_campaign_starts_the_next_from_its_preset_and_commit(
        campaign_script, repository, tmp_path):
    root, code, _ = repository
    queue_file = tmp_path / "queue.yaml"
    queue_file.write_text(yaml.safe_dump([
        {"run": campaign_script.NAME, "record": str(campaign_script.RECORD)},
        {"run": "next-cpu", "record": "results/next-cpu", "preset": "quickstart", "commit": code,
         "set": ["train.seed=1"]}]))
    queue = campaign_script.read_queue(queue_file)
    assert campaign_script.current(root, queue).entry.name == campaign_script.NAME
    (root / campaign_script.RECORD / "summary.json").write_text("{}")  # the authors' run, finished and committed
    campaign = campaign_script.current(root, queue)
    assert campaign.entry.name == "next-cpu" and campaign_script.position(campaign.run) == "not started"

    done = campaign_script.restore(campaign, write_materializer(tmp_path / "materialize.py"))
    assert "not started; `start` starts it (--preset quickstart)" in done[0] and f"added at {code[:12]}" in done[1]
    assert campaign_script.run_commit(campaign) == code
    assert campaign_script.train_command(campaign)[4:] == [
        "--preset", "quickstart", "--data-root", "data/cifar10", "--output", str(campaign.run), "--resume-if-exists",
        "--set", "train.seed=1"]
    assert campaign_script.train_command(campaign, ["train.eval_every=5"])[-4:] == [
        "--set", "train.seed=1", "--set", "train.eval_every=5"]  # the queue's values, then this piece's
    campaign.run.mkdir(parents=True)
    (campaign.run / "checkpoint_last.pt").write_bytes(b"its first checkpoint")
    assert campaign_script.train_command(campaign)[4:] == ["--resume", str(campaign.run)]
    assert campaign_script.train_command(campaign, ["train.eval_every=1"])[4:] == [
        "--resume", str(campaign.run), "--set", "train.eval_every=1"]

    (campaign.run / "summary.json").write_text("{}")
    with pytest.raises(campaign_script.CampaignError, match="every run of tools/cpu_queue.yaml has finished"):
        campaign_script.current(root, queue)


def test_a_queue_that_is_not_a_list_of_runs_is_one_line(campaign_script, tmp_path):
    bad = tmp_path / "queue.yaml"
    bad.write_text("- {record: results/x}\n")
    with pytest.raises(campaign_script.CampaignError, match="not a list of runs"):
        campaign_script.read_queue(bad)


def live_run(run: Path, code: str, epoch: int, step: int, checkpoint: bytes) -> None:
    """A live run folder as a piece leaves it: records, its checkpoint and where it stopped (194 steps an epoch)."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "checkpoint_last.pt").write_bytes(checkpoint)
    (run / "checkpoint_last.pt.sha256").write_text(f"{hashlib.sha256(checkpoint).hexdigest()}  checkpoint_last.pt\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 200}}))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 80, "top1": 65.85}) + "\n")
    session = {"session": 2, "started": "2026-12-05T03:20:03Z", "command": "glmc train --resume x",
               "from": {"epoch": 80, "step": 3, "global_step": 80 * 194 + 3}, "host": "vm", "device": "cpu",
               "processes": 1, "precision": {"train": "bf16", "eval": "fp32"}, "git_commit": code,
               "ended": "2026-12-05T04:05:00Z", "seconds": 2696.8, "outcome": "SIGTERM",
               "reached": {"epoch": epoch, "step": step, "global_step": epoch * 194 + step}}
    (run / "sessions.jsonl").write_text(json.dumps(session) + "\n")


def test_status_says_where_a_running_piece_has_got_to_beyond_the_last_piece_end(campaign_script, tmp_path):
    campaign = campaign_script.Campaign(tmp_path)
    live_run(campaign.run, "abc", epoch=91, step=90, checkpoint=b"weights")
    ended = "91 epochs + 90 steps (17,744 steps) at the last piece's end"
    assert campaign_script.status(campaign)[0] == f"run: {campaign.run}: {ended}"  # its evaluations are older

    with (campaign.run / "metrics.jsonl").open("a") as metrics:  # a piece resumed from there evaluates epoch 95
        metrics.write(json.dumps({"epoch": 95, "global_step": 95 * 194, "top1": 58.61}) + "\n")
    lines = campaign_script.status(campaign)
    assert lines[0] == f"run: {campaign.run}: 95 epochs (18,430 steps) at its last evaluation; {ended}"
    assert "last evaluation: epoch 95: top-1 58.61" in lines


def test_fallback_commits_the_live_run_then_takes_its_checkpoint_out_and_names_the_commit_in_run_md(
        campaign_script, repository, tmp_path):
    root, code, _ = repository
    campaign = campaign_script.Campaign(root)
    run_md = root / campaign_script.RECORD / "RUN.md"
    run_md.write_text(run_md.read_text() + "\n## Pieces\n\n| piece | steps |\n|---|---|\n| 1 | 8 |\n")
    git(root, "commit", "-qam", "RUN.md gains a pieces table after the fallback table")
    checkpoint = b"the live run's checkpoint at epoch 90"
    live_run(campaign.run, code, 80, 150, checkpoint)
    with pytest.raises(campaign_script.CampaignError, match="147 steps since the last fallback, less than an epoch"):
        campaign_script.fallback(campaign)  # the committed record reached 80 epochs + 3 steps
    live_run(campaign.run, code, 90, 5, checkpoint)
    shutil.copy(campaign.run / "sessions.jsonl", root / campaign_script.RECORD)  # copied ahead, as finish_run does:
    said = campaign_script.fallback(campaign)  # the committed record counts, not the working tree's
    commit = campaign_script.last_fallback(run_md)
    assert said[0] == f"commit {commit}: the fallback at 90 epochs and 5 steps (17,465 of 38,800 steps) (0.0 MB)"
    record = campaign_script.RECORD.as_posix()
    assert git(root, "show", f"{commit}:{record}/checkpoint_last.pt") == checkpoint.decode()
    assert json.loads(git(root, "show", f"{commit}:{record}/sessions.jsonl"))["reached"]["epoch"] == 90
    assert git(root, "rev-parse", "--short=12", "HEAD~1") == commit
    assert f"{record}/checkpoint_last.pt" not in git(root, "ls-files", record).split()
    assert not (root / record / "checkpoint_last.pt").exists() and git(root, "status", "--porcelain", "--", record) == ""
    lines = run_md.read_text().splitlines()
    row = lines.index(f"| commit {commit} | 90 epochs and 5 steps (17,465 of 38,800 steps) | 0.0 MB |")
    assert lines[row - 1].startswith("| commit ") and lines[row + 1] == ""  # the last row of the fallback table
    assert lines[-1] == "| 1 | 8 |"  # the table after it is untouched

    shutil.rmtree(campaign.run)  # the machine comes back without it: restore puts this fallback back
    campaign_script.restore(campaign, write_materializer(tmp_path / "materialize.py"))
    assert (campaign.run / "checkpoint_last.pt").read_bytes() == checkpoint


def test_fallback_needs_a_paused_run_and_a_fallback_table(campaign_script, repository):
    root, code, _ = repository
    campaign = campaign_script.Campaign(root)
    live_run(campaign.run, code, 100, 0, b"checkpoint")
    (root / campaign_script.RECORD / "RUN.md").write_text("# the run\n")
    with pytest.raises(campaign_script.CampaignError, match="has no fallback table"):
        campaign_script.fallback(campaign)
    campaign.lock_file.write_text("4242\n")
    with campaign.lock_file.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(campaign_script.CampaignError, match="pause it first"):
            campaign_script.fallback(campaign)
