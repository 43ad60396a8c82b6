"""`glmc reproduce`: tables as data, runs shared and resumed, the table beside the published figures."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from glmc.cli import main
from glmc.reproduce import dry_run, load_tables, make_plan, worker_environment
from glmc.rundir import RunFolder

from conftest import refusal

SMOKE = ["--set", "train.epochs=1", "--quiet"]  # quickstart rows, one epoch each
TWO_ROWS = ["--only", "GLMC", "--only", "cross-entropy", "--seeds", "2"]


def reproduce(*args: str) -> int:
    return main(["reproduce", *args])


@pytest.fixture(scope="module")
def quickstart_table(tmp_path_factory) -> Path:
    """The packaged quickstart table, two of its rows with two seeds each, run to the end."""
    output = tmp_path_factory.mktemp("quickstart-table")
    assert reproduce("quickstart", "--output", str(output), *TWO_ROWS, *SMOKE) == 0
    return output


def test_the_table_aggregates_the_seeds_of_each_row(quickstart_table):
    table = json.loads((quickstart_table / "table.json").read_text())
    assert [row["name"] for row in table["rows"]] == ["GLMC", "cross-entropy"] and table["missing_rows"] == []
    for row in table["rows"]:
        summaries = [json.loads((Path(run) / "summary.json").read_text()) for run in row["runs"]]
        top1 = [s["final"]["top1"] for s in summaries]
        assert row["n"] == 2 and row["seeds_done"] == [0, 1]
        assert row["top1_mean"] == pytest.approx(statistics.fmean(top1), abs=0.006)
        assert row["top1_std"] == pytest.approx(statistics.stdev(top1), abs=0.006)
        assert row["best_top1_mean"] == pytest.approx(statistics.fmean(s["best"]["top1"] for s in summaries), abs=0.006)
        assert {s["config"]["train"]["seed"] for s in summaries} == {0, 1}
        assert row["fingerprints"] == [summaries[0]["fingerprint"]]
    glmc_config, ce_config = (json.loads((Path(r["runs"][0]) / "summary.json").read_text())["config"] for r in table["rows"])
    assert (glmc_config["method"]["name"], ce_config["method"]["name"]) == ("glmc", "ce")
    markdown = (quickstart_table / "table.md").read_text()
    assert "| GLMC | 2 |" in markdown and "best epoch, selected on the test set" in markdown


def test_the_same_command_again_trains_nothing(quickstart_table, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in quickstart_table.rglob("checkpoint_last.pt")}
    assert reproduce("quickstart", "--output", str(quickstart_table), *TWO_ROWS, *SMOKE) == 0
    assert {p: p.stat().st_mtime_ns for p in quickstart_table.rglob("checkpoint_last.pt")} == stamps
    assert "| cross-entropy | 2 |" in capsys.readouterr().out


def test_compare_aggregates_runs_that_differ_only_in_seed(quickstart_table, capsys):
    table = json.loads((quickstart_table / "table.json").read_text())
    runs = [run for row in table["rows"] for run in row["runs"]]
    assert main(["compare", *runs, "--aggregate-seeds"]) == 0
    out = capsys.readouterr().out
    for row in table["rows"]:
        assert f"{row['top1_mean']:.2f} ± {row['top1_std']:.2f} (n 2)" in out


def test_dry_run_of_every_packaged_table_names_its_rows_and_what_remains(tmp_path):
    tables = load_tables()  # loading checks every preset, override and calibration a table names
    assert {"glmc-cifar10-lt-authors", "glmc-cifar100-lt-authors", "cifar10-lt-standard", "cifar100-lt-standard",
            "imagenet-lt-authors", "inat2018-authors", "quickstart"} <= set(tables)
    for name, table in tables.items():
        text = dry_run(make_plan(table, tmp_path / name))
        assert all(row.name in text for row in table.rows) and "to do" in text and "done" not in text.replace("to do", "")


def test_dry_run_predicts_the_time_left_from_a_bench_figure(tmp_path, capsys):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"preset": "cifar10-lt-if100", "device": "cuda (H100)", "ms_per_step": 10.0,
                                 "steps_per_epoch": 194}))
    assert reproduce("cifar10-lt-standard", "--output", str(tmp_path / "out"), "--only", "GLMC IF100", "--device", "cuda",
                     "--dry-run", "--bench", str(bench)) == 0
    out = capsys.readouterr().out
    assert out.count("about 0.1 h left") == 3 and "predicted: 0.3 h" in out  # 3 seeds x 200 epochs x 1.94 s


def test_a_calibrated_row_shares_its_training_and_exports_weights(tmp_path, capsys):
    tables = tmp_path / "tables.yaml"
    tables.write_text("""
mine:
  description: a run and its MaxNorm
  rows:
    - {name: plain, preset: quickstart, published: [{top1: 50.0, source: "a test"}]}
    - {name: maxnorm, preset: quickstart, calibration: {method: maxnorm, params: {epochs: 1}}}
""")
    output = tmp_path / "out"
    assert reproduce("mine", "--tables", str(tables), "--output", str(output), "--export", *SMOKE) == 0
    table = json.loads((output / "table.json").read_text())
    plain, maxnorm = table["rows"]
    assert plain["runs"] == maxnorm["runs"]  # one training for both rows
    run = Path(plain["runs"][0])
    after = json.loads((run / "checkpoint_last-maxnorm.json").read_text())["after"]
    assert maxnorm["top1_mean"] == pytest.approx(after["top1"]) and maxnorm["best_top1_mean"] is None
    assert plain["published"][0]["difference"] == pytest.approx(plain["top1_mean"] - 50.0, abs=0.006)
    assert (run / "checkpoint_last-fp16.safetensors").is_file() and (run / "checkpoint_last-maxnorm-fp16.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", str(run / "checkpoint_last-fp16.safetensors"), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(plain["top1_mean"], abs=0.5)


@pytest.mark.parametrize("text, message", [
    ("t: {rows: [{name: a, preset: quickstrat}]}", "row 'a': unknown preset 'quickstrat'"),
    ("t: {rows: [{name: a, preset: quickstart, published: [{top1: 60}]}]}", "a published figure without its source"),
    ("t: {rows: [{name: a, preset: quickstart}, {name: a, preset: quickstart}]}", "duplicate row 'a'"),
    ("t: {rows: [{name: a, preset: quickstart, calibration: {method: maxnrm}}]}", "unknown calibration 'maxnrm'"),
    ("t: {rows: [{name: a, preset: quickstart, overrides: {method.focal_gamma: 2}}]}", "method glmc has no option 'focal_gamma'"),
])
def test_a_bad_table_file_is_one_line_and_exit_2(tmp_path, capsys, text, message):
    tables = tmp_path / "tables.yaml"
    tables.write_text(text)
    assert message in refusal(capsys, "reproduce", "t", "--tables", str(tables), "--output", str(tmp_path / "out"),
                              "--dry-run")


@pytest.mark.slow
def test_killed_in_the_second_row_the_same_command_ends_with_the_same_table(quickstart_table, tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, "-m", "glmc", "reproduce", "quickstart", "--output", str(output), *TWO_ROWS, *SMOKE]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "2"})
    second_row = next(output.glob("quickstart+*"), None)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        second_row = next(output.glob("quickstart+*"), None)
        if second_row is not None and (second_row / "seed-0" / "checkpoint_last.pt").exists():
            break
        time.sleep(0.05)
    assert process.poll() is None, "the command ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (second_row / "seed-1" / "summary.json").exists()  # killed inside the second row
    assert subprocess.run(command, capture_output=True).returncode == 0

    def metrics(folder: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "runs"} for row in json.loads((folder / "table.json").read_text())["rows"]]

    assert metrics(output) == metrics(quickstart_table)


def test_jobs_train_runs_side_by_side_in_worker_processes(tmp_path, capsys):
    output = tmp_path / "jobs"
    assert reproduce("quickstart", "--output", str(output), "--only", "GLMC", "--seeds", "2", "--jobs", "2", *SMOKE) == 0
    row = json.loads((output / "table.json").read_text())["rows"][0]
    assert row["n"] == 2 and row["seeds_done"] == [0, 1]
    seeds = {json.loads((Path(run) / "summary.json").read_text())["config"]["train"]["seed"] for run in row["runs"]}
    assert seeds == {0, 1}
    # the cores shared out: two runs each taking every thread would slow each other several times
    threads = max(1, torch.get_num_threads() // 2)
    assert all(RunFolder(run).read_sessions()[0]["device"].endswith(f", {threads} threads)") for run in row["runs"])


def test_workers_keep_the_thread_count_the_user_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert worker_environment(jobs=torch.get_num_threads() * 2)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker_environment(jobs=2)["OMP_NUM_THREADS"] == "3"
