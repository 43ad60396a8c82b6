"""`glmc report`: PNGs of sensible size, an HTML page that embeds them all, the long-tail plots."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from glmc import plots, report
from glmc.cli import main
from glmc.config import build_config
from glmc.lock import take
from glmc.rundir import BEST_ON_VALIDATION_LABEL, load_run
from glmc.shots import STANDARD
from glmc.trainer import train

from conftest import refusal

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_PICTURES = {"learning_curves.png", "per_class.png", "reliability.png", "confusion.png"}


def assert_sensible_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    assert path.stat().st_size > 10_000, path  # a real picture, not an empty canvas
    with Image.open(path) as image:
        width, height = image.size
    assert 600 <= width <= 2400 and 400 <= height <= 1600, (path, image.size)


def embedded_files(page: str) -> set[str]:
    """The PNG files the page embeds (each as a base64 data URL tagged with its file name)."""
    images = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="[^"]*" data-file="([^"]+)"', page)
    return set(images)


@pytest.fixture(scope="module")
def run_report(tiny_run):
    page = report.make_report([tiny_run], device="cpu")
    return tiny_run, page


def test_report_of_a_finished_run_has_its_plots_and_a_self_contained_page(run_report):
    run, page_path = run_report
    assert page_path == run / "report" / "report.html"
    for name in RUN_PICTURES:
        assert_sensible_png(run / "report" / name)
    page = page_path.read_text()
    assert embedded_files(page) == RUN_PICTURES
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fingerprint"] in page  # dataset card and fingerprint
    assert "best epoch, selected on the test set" in page and "final epoch (headline)" in page
    assert f"{summary['final']['top1']:.2f}" in page
    assert "resample_weighting" in page  # the config
    assert "stripes-0deg-red" in page  # the per-class table names the classes
    assert "started (UTC)" in page and "end of epoch 2" in page  # the sessions table: one session, start to the end


def test_session_rows_show_where_each_session_began_and_ended_and_one_that_never_ended():
    ended = {"session": 1, "started": "2026-11-24T01:00:00Z", "from": {"epoch": 0, "step": 0, "global_step": 0},
             "device": "cpu", "precision": {"train": "bf16", "eval": "fp32"}, "git_commit": "0123456789abcdef", "ended": "2026-11-24T01:10:00Z", "seconds": 600.0,
             "reached": {"epoch": 4, "step": 17, "global_step": 97}, "outcome": "SIGTERM", "other_cpu_share": 0.453}
    killed = {"session": 2, "started": "2026-11-24T02:00:00Z", "from": {"epoch": 5, "step": 0, "global_step": 100},
              "device": "cpu", "git_commit": None}
    first, second = report.session_rows([ended, killed])
    assert dict(zip(report.SESSION_HEADER, first)) == {
        "session": 1, "started (UTC)": "2026-11-24T01:00:00Z", "ended (UTC)": "2026-11-24T01:10:00Z",
        "wall": "0:10:00 (600 s)", "from": "start", "reached": "epoch 5, step 17", "outcome": "SIGTERM",
        "device": "cpu", "other work (CPU)": "45%", "trained in": "bf16", "glmc commit": "0123456789ab"}
    assert second[4:7] == ("end of epoch 5", "–", report.UNENDED) and second[-3:] == ("–", "–", "–")


def html_rows(page: str) -> list[list[str]]:
    """Each table row of the page, as the text of its cells."""
    return [re.findall(r"<t[dh]>(.*?)</t[dh]>", row) for row in re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)]


def test_the_report_names_the_precision_each_piece_trained_in(tiny_run, tmp_path):
    run = tmp_path / "moved-run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.pt*", "report"))
    first = json.loads((run / "sessions.jsonl").read_text().splitlines()[0])
    pieces = [{**first, "session": 1, "precision": {"train": "bf16", "eval": "fp32"}},
              {**first, "session": 2, "precision": {"train": "fp32", "eval": "fp32"}}]
    (run / "sessions.jsonl").write_text("".join(json.dumps(piece) + "\n" for piece in pieces))

    rows = html_rows(report.make_report([run], confusion=False).read_text())
    assert ["trained in", "bf16 then fp32"] in rows  # the run table
    sessions = [dict(zip(report.SESSION_HEADER, row)) for row in rows if len(row) == len(report.SESSION_HEADER)]
    assert [session["trained in"] for session in sessions[1:]] == ["bf16", "fp32"]  # under the header row

    both = html_rows(report.make_report([tiny_run, run], output=tmp_path / "both", confusion=False).read_text())
    header = next(row for row in both if row[:2] == ["run", "method"])
    runs = [dict(zip(header, row)) for row in both if len(row) == len(header) and row[0] in (tiny_run.name, run.name)]
    assert [r["trained in"] for r in runs] == [load_run(tiny_run).training_precision or "–", "bf16 then fp32"]


def test_confusion_matrix_is_the_final_state_of_the_run(run_report):
    run, _ = run_report
    cached = json.loads((run / "report" / "confusion.json").read_text())
    confusion = np.array(cached["confusion"])
    per_class = 100 * np.diag(confusion) / confusion.sum(axis=1)
    final = json.loads((run / "summary.json").read_text())["final"]["per_class"]
    assert per_class.round(4).tolist() == pytest.approx(final)


def test_a_second_report_reads_the_cached_confusion_matrix(run_report, tmp_path, monkeypatch):
    run, _ = run_report

    def no_evaluation(*args):
        raise AssertionError("the cached confusion matrix should have been used")

    monkeypatch.setattr(report, "test_set_confusion", no_evaluation)
    page = report.make_report([run], output=tmp_path, device="cpu").read_text()
    assert "confusion.png" in embedded_files(page)


def test_cli_report_of_several_runs_overlays_them(tiny_run, tmp_path, capsys):
    other = tmp_path / "other-run"
    shutil.copytree(tiny_run, other, ignore=shutil.ignore_patterns("*.pt*", "report"))
    output = tmp_path / "comparison"
    assert main(["report", str(tiny_run), str(other), "--output", str(output), "--no-confusion"]) == 0
    assert str(output / "report.html") in capsys.readouterr().out
    for name in ("curves.png", "per_class.png"):
        assert_sensible_png(output / name)
    page = (output / "report.html").read_text()
    expected = {"curves.png", "per_class.png"} | {f"{folder}/{name}" for folder in (f"1-{tiny_run.name}", "2-other-run")
                                                  for name in ("learning_curves.png", "per_class.png", "reliability.png")}
    assert embedded_files(page) == expected
    assert all((output / name).is_file() for name in expected)
    assert "confusion matrix skipped" in page


def test_a_run_without_checkpoint_still_gets_a_report_with_a_note(tiny_run, tmp_path, capsys):
    run = tmp_path / "no-checkpoint"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.pt*", "report"))
    assert main(["report", str(run)]) == 0
    assert "no confusion matrix" in capsys.readouterr().err
    assert embedded_files((run / "report" / "report.html").read_text()) == {"learning_curves.png", "per_class.png",
                                                                            "reliability.png"}


def test_a_folder_without_a_run_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "holds no glmc run (no config.yaml)" in error and error.count("\n") == 1


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """Three epochs of a tiny run stopped by train.max_steps five steps into the third, with the summary of that
    piece."""
    output = tmp_path_factory.mktemp("stopped")
    config = build_config(None, {"data.dataset": "synthetic-lt", "model.backbone": "resnet8", "train.epochs": "3",
                                 "train.device": "cpu", "train.max_steps": "45"})
    train(config, output, quiet=True)
    return output


@pytest.fixture(scope="module")
def unfinished_run(stopped_run, tmp_path_factory):
    """The stopped run without its summary: a run folder as a run stopped by a signal leaves it."""
    output = tmp_path_factory.mktemp("unfinished") / "run"
    shutil.copytree(stopped_run, output)
    (output / "summary.json").unlink()
    return output


def test_a_run_not_finished_is_drawn_as_far_as_it_has_got(unfinished_run, tiny_run, tmp_path, capsys):
    run = tmp_path / "so-far"
    shutil.copytree(unfinished_run, run)
    assert main(["report", str(run)]) == 0
    assert "no confusion matrix: the run has not finished" in capsys.readouterr().err
    page = (run / "report" / "report.html").read_text()
    assert f"<title>{run.name} (in progress)</title>" in page
    assert ("This run has not finished: stopped (train.max_steps reached), at epoch 3 of 3, step 5 of 20 "
            "(45 of 60 steps, 75.0%)") in page
    assert embedded_files(page) == RUN_PICTURES - {"confusion.png"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda record: record["top1"])
    rows = {row[0]: row for row in html_rows(page)}
    assert rows["last evaluation so far"][1:3] == [str(records[-1]["epoch"]), f"{records[-1]['top1']:.2f}"]
    assert rows["best epoch so far, selected on the test set"][1:3] == [str(best["epoch"]), f"{best['top1']:.2f}"]
    checkpoint = torch.load(run / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["fingerprint"] in page  # the card, from the data its config names: the split it trained on
    assert rows["steps"][1] == "45" and rows["epochs"][1] == "3"

    compared = report.make_report([tiny_run, run], output=tmp_path / "both", confusion=False).read_text()
    names = [row[0] for row in html_rows(compared) if row and row[0] in (tiny_run.name, run.name, f"{run.name} (in progress)")]
    assert names == [tiny_run.name, f"{run.name} (in progress)"]


def test_a_piece_ended_by_max_steps_is_reported_as_not_finished_though_it_has_a_summary(stopped_run, tmp_path, capsys):
    run = tmp_path / "piece"
    shutil.copytree(stopped_run, run)
    summary = json.loads((run / "summary.json").read_text())
    assert main(["report", str(run)]) == 0
    assert "no confusion matrix: the run has not finished" in capsys.readouterr().err
    page = (run / "report" / "report.html").read_text()
    assert f"<title>{run.name} (in progress)</title>" in page
    assert "This run has not finished: stopped (train.max_steps reached), at epoch 3 of 3, step 5 of 20" in page
    assert "final epoch (headline)" not in page
    rows = {row[0]: row for row in html_rows(page)}
    assert rows["last evaluation so far"][1:3] == [str(summary["final"]["epoch"]), f"{summary['final']['top1']:.2f}"]
    assert summary["fingerprint"] in page  # the card of its summary


def test_a_run_in_training_gets_its_report_elsewhere(unfinished_run, tmp_path, capsys):
    run = tmp_path / "training"
    shutil.copytree(unfinished_run, run)
    lease = take(run, command="glmc train --resume training")
    try:
        error = refusal(capsys, "report", str(run))
        assert f"{run} is training (process " in error and "write it elsewhere with --output DIR" in error
        assert not (run / "report").exists()
        page = report.make_report([run], output=tmp_path / "elsewhere", confusion=False).read_text()
    finally:
        lease.release()
    assert "This run has not finished: training: process " in page


def test_a_run_not_finished_without_an_evaluation_or_its_data_is_one_line(unfinished_run, tmp_path, capsys):
    run = tmp_path / "moved"
    shutil.copytree(unfinished_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"].update({"dataset": "cifar10-lt", "data_root": str(tmp_path / "gone")})
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    error = refusal(capsys, "report", str(run), "--no-confusion")
    assert error.startswith(f"glmc: error: {run} has not finished, so its dataset card comes from its data: ")
    assert error.rstrip().endswith("(pass --data-root)")
    (run / "metrics.jsonl").write_text("")
    assert refusal(capsys, "report", str(run)) == f"glmc: error: {run} holds no evaluation yet: glmc status {run} says where it stands\n"


def test_classes_are_ordered_head_first_with_their_shot_groups():
    classes = plots.ClassOrder.of([5, 500, 50, 500, 19], ["a", "b", "c", "d", "e"], STANDARD)
    assert classes.names == ["b", "d", "c", "e", "a"]  # ties keep label order
    assert classes.groups == ["many", "many", "medium", "few", "few"]
    assert classes.group_spans() == [("many", 0, 2), ("medium", 2, 3), ("few", 3, 5)]


def test_partial_epochs_sit_between_epochs_on_the_curves():
    records = [{"epoch": 1, "global_step": 10, "partial_epoch": True}, {"epoch": 1, "global_step": 20, "partial_epoch": False},
               {"epoch": 2, "global_step": 40, "partial_epoch": False}]
    assert plots.epoch_axis(records).tolist() == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("num_classes", [100, 1000])
def test_large_confusion_matrices_stay_compact(num_classes, tmp_path):
    rng = np.random.default_rng(0)
    counts = np.round(500 * 0.01 ** (np.arange(num_classes) / (num_classes - 1))).astype(int).tolist()
    confusion = rng.integers(0, 3, (num_classes, num_classes)) + np.diag(np.full(num_classes, 20))
    classes = plots.ClassOrder.of(counts, [f"c{k}" for k in range(num_classes)], STANDARD)
    plots.save_png(plots.confusion_heatmap(confusion, classes, "fake"), tmp_path / "confusion.png")
    assert_sensible_png(tmp_path / "confusion.png")
    shares, groups = plots.group_confusion(confusion[np.ix_(classes.order, classes.order)], classes)
    assert groups == ["many", "medium", "few"] and np.allclose(shares.sum(axis=1), 1.0)


def test_a_run_of_a_glmc_without_calibration_metrics_gets_no_reliability_diagram(tiny_run, tmp_path, capsys):
    run = tmp_path / "older"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.pt*", "report"))
    summary = json.loads((run / "summary.json").read_text())
    for record in (summary["final"], summary["best"]):
        for key in ("ece", "nll", "ece_many", "ece_medium", "ece_few", "reliability"):
            record.pop(key)
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(run), "--no-confusion"]) == 0
    assert embedded_files((run / "report" / "report.html").read_text()) == {"learning_curves.png", "per_class.png"}


def test_a_scaled_head_evaluated_without_its_scale_gets_no_calibration_figures_and_a_note(tiny_run, tmp_path, capsys):
    run = tmp_path / "bare-cosines"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.pt*", "report"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["classifier"], config["method"] = "cosine", {"name": "ldam-drw", "ldam_scale": 30.0}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    summary = json.loads((run / "summary.json").read_text())
    del summary["logit_scale"]  # as glmc wrote it before the model applied the scale
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(run), "--no-confusion"]) == 0
    page = (run / "report" / "report.html").read_text()
    assert embedded_files(page) == {"learning_curves.png", "per_class.png"}
    assert "ECE and NLL left out" in page and "ECE and NLL left out" in capsys.readouterr().err
    assert "s = 30" in page and not {"ece", "nll", "reliability"} & set(load_run(run).summary["final"])


def test_a_report_written_elsewhere_caches_its_confusion_matrix_under_the_run_folders_lease(tiny_run, tmp_path):
    """The matrix is cached in RUN_DIR/report/ whatever --output says, never beside another writer of the run
    folder (here this process's own lease): then it is used and not cached."""
    run = tmp_path / "busy-run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("report"))
    lease = take(run, "glmc calibrate")
    try:
        page = report.make_report([run], output=tmp_path / "elsewhere", device="cpu").read_text()
        assert "confusion.png" in embedded_files(page) and not (run / "report").exists()
    finally:
        lease.release()
    report.make_report([run], output=tmp_path / "elsewhere", device="cpu")
    assert (run / "report" / "confusion.json").is_file()


def test_a_validation_selected_best_epoch_is_labelled_so(tiny_run, tmp_path):
    run = tmp_path / "validated"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.pt*", "report"))
    summary = json.loads((run / "summary.json").read_text())
    summary["best"]["label"] = BEST_ON_VALIDATION_LABEL
    (run / "summary.json").write_text(json.dumps(summary))
    page = report.make_report([run], confusion=False).read_text()
    assert "the best epoch is selected on the validation set" in page and "selected on the test set" not in page
    both = report.make_report([run, tiny_run], output=tmp_path / "both", confusion=False).read_text()
    assert "(validation-selected)" in both and "(test-selected)" in both


def legend_texts(figure) -> list[str]:
    return [text.get_text() for axis in figure.axes if axis.get_legend() for text in axis.get_legend().get_texts()]


@pytest.mark.parametrize("chosen_on", ["validation", "test"])
def test_the_learning_curves_mark_the_best_epoch_with_the_set_it_was_chosen_on(tiny_run, chosen_on):
    records = load_run(tiny_run).records
    marks = [text for text in legend_texts(plots.learning_curves(records, "run", 1, chosen_on)) if "best epoch" in text]
    assert marks == [f"best epoch\n(epoch 1,\n{chosen_on}-selected)"]


def test_a_comparison_names_what_else_the_runs_differ_in(tiny_run, tmp_path):
    other = tmp_path / "other-lr"
    shutil.copytree(tiny_run, other, ignore=shutil.ignore_patterns("*.pt*", "report"))
    config = yaml.safe_load((other / "config.yaml").read_text())
    lr = config["optim"]["lr"]
    config["optim"]["lr"] = lr * 2
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    page = report.make_report([tiny_run, other], output=tmp_path / "both", confusion=False).read_text()
    assert f"The runs also differ in (values in row order): optim.lr {lr} / {lr * 2}." in page
    same = report.make_report([tiny_run, tiny_run], output=tmp_path / "same", confusion=False).read_text()
    assert "also differ" not in same
