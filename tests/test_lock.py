"""One writer per run folder (glmc.lock): a second writer refused, a dead one's folder taken over, a table shared."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from conftest import TORCHRUN_ENV, finish_torchrun, torchrun_command, wait_until
from glmc import lock
from glmc.cli import main
from glmc.errors import GlmcError
from glmc.lock import LOCK_FILE, FolderInUse, LostLease, Holder, take
from glmc.rundir import Resume, RunFolder, writing_into

QUICK = ["--preset", "quickstart", "--device", "cpu", "--quiet"]


def glmc(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glmc", *args], capture_output=True, text=True, **kwargs)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "glmc", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_holder(folder: Path, holder: Holder, renewed_seconds_ago: float = 0.0) -> Path:
    path = folder / LOCK_FILE
    path.write_text(json.dumps(asdict(holder)))
    stamp = time.time() - renewed_seconds_ago
    os.utime(path, (stamp, stamp))
    return path


def other_host(**changes) -> Holder:
    return replace(lock.this_process("glmc train elsewhere"), host="node-17.cluster", pid=4242, **changes)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def sessions(run: Path) -> list[dict]:
    return RunFolder(run).read_sessions()


def epochs_recorded(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the lease itself


def test_a_held_folder_is_refused_naming_its_holder_and_free_again_once_released(tmp_path):
    lease = take(tmp_path, "glmc train --output x")
    record = json.loads((tmp_path / LOCK_FILE).read_text())
    assert (record["host"], record["pid"], record["command"]) == (socket.gethostname(), os.getpid(), "glmc train --output x")
    with pytest.raises(FolderInUse, match=rf"is in use by process {os.getpid()} on {socket.gethostname()} since 20\d\d-"):
        take(tmp_path)
    assert str(lock.in_use(tmp_path)) == str(pytest.raises(FolderInUse, take, tmp_path).value)
    lease.release()
    assert not (tmp_path / LOCK_FILE).exists() and lock.in_use(tmp_path) is None
    take(tmp_path).release()


def test_a_holder_on_another_host_holds_while_it_renews_and_is_taken_over_after_the_lease(tmp_path):
    write_holder(tmp_path, other_host(), renewed_seconds_ago=lock.LEASE_SECONDS - 30)
    with pytest.raises(FolderInUse, match="is in use by process 4242 on node-17.cluster"):
        take(tmp_path)
    write_holder(tmp_path, other_host(), renewed_seconds_ago=lock.LEASE_SECONDS + 60)
    said = []
    lease = take(tmp_path, say=said.append)
    assert lease.holds() and len(said) == 1
    assert "took over from process 4242 on node-17.cluster" in said[0] and "last renewed 6 min ago" in said[0]
    lease.release()


@pytest.mark.parametrize("gone, why", [
    (lambda me: replace(me, pid=dead_pid()), "the process is gone"),
    (lambda me: replace(me, boot="another-boot"), "this host has restarted since"),
    (lambda me: replace(me, started=(me.started or 0) + 1), "its id now belongs to another process"),
])
def test_a_gone_holder_on_this_host_is_taken_over_at_once(tmp_path, gone, why):
    me = lock.this_process()
    if why != "the process is gone" and (me.boot is None or me.started is None):
        pytest.skip("needs Linux's /proc")
    write_holder(tmp_path, gone(me))
    said = []
    take(tmp_path, say=said.append).release()
    assert len(said) == 1 and why in said[0]


def test_a_lock_file_glmc_did_not_write_is_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text("not json")
    said = []
    take(tmp_path, say=said.append).release()
    assert "not one glmc wrote" in said[0]


def test_the_lease_is_renewed_while_held(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "RENEW_SECONDS", 0.05)
    lease = take(tmp_path)
    stamp = time.time() - 100
    os.utime(tmp_path / LOCK_FILE, (stamp, stamp))
    time.sleep(0.3)
    assert time.time() - (tmp_path / LOCK_FILE).stat().st_mtime < 5
    lease.release()


def test_a_holder_whose_lease_was_taken_over_stops_before_its_next_write(tmp_path):
    folder = RunFolder(tmp_path)
    folder.lease = take(tmp_path)
    folder.write_summary({"a": 1})
    write_holder(tmp_path, other_host())  # another host took the folder over while this process stalled
    with pytest.raises(LostLease, match="was taken over while this process wrote it .process 4242 on node-17.cluster"):
        folder.write_summary({"a": 2})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 1}
    folder.release()
    assert (tmp_path / LOCK_FILE).exists()  # the new holder's lock stays


def race_to_take(folder: str, results) -> None:
    try:
        lease = take(folder, say=lambda message: None)
    except FolderInUse:
        results.put("refused")
        return
    results.put("took")
    time.sleep(1.0)  # hold it while the others try
    lease.release()


def test_processes_racing_to_take_over_a_dead_holder_let_exactly_one_in(tmp_path):
    write_holder(tmp_path, replace(lock.this_process(), pid=dead_pid()))
    context = multiprocessing.get_context("fork")  # no imports to wait for: all six try within the winner's second
    results = context.Queue()
    racers = [context.Process(target=race_to_take, args=(str(tmp_path), results)) for _ in range(6)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in racers)
    assert outcomes == ["refused"] * 5 + ["took"]


def test_writing_into_a_run_folder_takes_its_lease_and_other_folders_need_none(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    lease = take(run)
    with pytest.raises(FolderInUse):
        with writing_into(run / "checkpoint_last-maxnorm.pt"):
            pass
    with writing_into(tmp_path / "elsewhere.pt"):  # not in a run folder
        pass
    lease.release()
    with writing_into(run / "report"):
        assert lock.in_use(run) is not None
    assert lock.in_use(run) is None


# ---------------------------------------------------------------- commands, for real


@pytest.mark.slow  # over 20 s on 2 cores of an AMD EPYC without AVX-512 (pytest --durations, 2026-12-06)
def test_a_second_writer_is_refused_and_the_first_ones_records_stay_whole(tmp_path):
    run = tmp_path / "run"
    first = start("train", *QUICK, "--epochs", "4", "--output", str(run))
    wait_until(lambda: (run / "checkpoint_last.pt").exists(), first, 120, "its first checkpoint")
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == first.pid
    first.send_signal(signal.SIGSTOP)  # alive, and still mid-run while the others try
    try:
        for second in (["train", *QUICK, "--epochs", "4", "--output", str(run), "--resume-if-exists"],
                       ["train", "--resume", str(run)],
                       ["train", *QUICK, "--epochs", "4", "--output", str(run), "--overwrite"]):
            refused = glmc(*second)
            assert refused.returncode == 2, refused.stderr
            assert refused.stderr.count("\n") == 1
            assert f"is in use by process {first.pid} on {socket.gethostname()} since" in refused.stderr
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert epochs_recorded(run) == [2, 4]
    (only,) = sessions(run)
    assert only["outcome"] == "finished" and only["pid"] == first.pid
    assert not (run / LOCK_FILE).exists()


def test_reading_a_run_needs_no_lease(tiny_run, capsys):
    lease = take(tiny_run)
    try:
        assert main(["compare", str(tiny_run)]) == 0
        assert main(["eval", str(tiny_run / "checkpoint_last.pt"), "--device", "cpu"]) == 0
        assert main(["report", str(tiny_run), "--no-confusion"]) == 2  # writes tiny_run/report/: refused
        assert "is in use by" in capsys.readouterr().err
    finally:
        lease.release()


@pytest.mark.slow  # over 20 s on 2 cores of an AMD EPYC without AVX-512 (pytest --durations, 2026-12-06)
def test_after_kill_9_the_next_command_takes_the_folder_over(tmp_path):
    run = tmp_path / "run"
    args = ["train", *QUICK, "--epochs", "4", "--output", str(run), "--resume-if-exists"]
    victim = start(*args)
    wait_until(lambda: (run / "checkpoint_last.pt").exists(), victim, 120, "its first checkpoint")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == victim.pid  # left behind
    done = glmc(*args)
    assert done.returncode == 0, done.stderr
    assert f"took over from process {victim.pid} on {socket.gethostname()}" in done.stderr and "the process is gone" in done.stderr
    killed, resumed = sessions(run)
    assert "outcome" not in killed and resumed["outcome"] == "finished"
    assert epochs_recorded(run) == [2, 4] and not (run / LOCK_FILE).exists()


@pytest.mark.slow  # over 20 s on 2 CPU cores (pytest --durations, 2026-12-01)
def test_two_reproduce_commands_share_a_table_and_train_each_run_once(tmp_path):
    tables = tmp_path / "tables.yaml"
    tables.write_text("""
shared:
  description: four short runs for two commands
  seeds: 2
  rows:
    - {name: GLMC, preset: quickstart}
    - {name: CE, preset: quickstart, overrides: {method.name: ce}}
""")
    output = tmp_path / "out"
    command = ["reproduce", "shared", "--tables", str(tables), "--output", str(output), "--set", "train.epochs=2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    both = [subprocess.Popen([sys.executable, "-m", "glmc", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in both]
    assert [process.returncode for process in both] == [0, 0], [err[-2000:] for _, err in outputs]
    runs = sorted(path.parent for path in output.glob("*/seed-*/config.yaml"))
    assert len(runs) == 4
    for run in runs:
        assert len(sessions(run)) == 1, run  # trained once, by one of the two
        assert epochs_recorded(run) == [2]
    table = (output / "table.md").read_text()
    assert "Still missing" not in table and "| GLMC | 2 |" in table and "| CE | 2 |" in table
    assert outputs[0][0] == outputs[1][0] == table  # each command printed the whole table


@pytest.mark.slow
def test_a_torchrun_restart_takes_over_from_its_own_dead_rank_0(tmp_path):
    run = tmp_path / "run"
    args = ["--preset", "quickstart", "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--set",
            "train.checkpoint_every=5", "--quiet", "--resume-if-exists", "--output", str(run)]
    process = subprocess.Popen(torchrun_command("-m", "glmc", "train", *args, restarts=1), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV)
    wait_until(lambda: (run / "checkpoint_last.pt").exists() and (run / LOCK_FILE).exists(), process, 300, "a checkpoint under a held lease")
    rank_0 = json.loads((run / LOCK_FILE).read_text())["pid"]
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert str(rank_0) in workers  # rank 0 of the job holds the lease
    os.kill(rank_0, signal.SIGKILL)
    done = finish_torchrun(process, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"took over from process {rank_0}" in done.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 78 and not (run / LOCK_FILE).exists()


def test_what_to_do_with_a_run_already_there_is_one_of_three_modes(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.resumes(Resume.NEVER, False, None) is False  # an empty folder: a new run
    (tmp_path / "config.yaml").write_text("{}\n")
    assert folder.resumes(Resume.ALWAYS, False, None) is True
    with pytest.raises(GlmcError, match="already holds a run"):
        folder.resumes(Resume.NEVER, False, None)
    assert folder.resumes(Resume.NEVER, True, None) is False  # --overwrite
    with pytest.raises(TypeError, match="Resume"):  # a bool of the old signature would otherwise start over
        folder.resumes(True, False, None)


def test_config_and_folder_errors_still_come_before_the_lease(tmp_path):
    with pytest.raises(GlmcError, match="nothing to resume"):
        RunFolder(tmp_path / "empty").prepare(Resume.ALWAYS, False, None)
    assert not (tmp_path / "empty").exists()
