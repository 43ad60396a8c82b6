"""`glmc compare`: the table, and its refusal to mix splits, test sets or shot bounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from glmc.cli import main
from glmc.compare import compare_runs, render_markdown, render_text, run_row
from glmc.errors import GlmcError

FINGERPRINT = "sha256:f7669c469c9dd" + "0" * 51
RESULTS = Path(__file__).resolve().parents[1] / "results" / "cifar10-lt"


def write_run(folder, method="glmc", fingerprint=FINGERPRINT, test_total=10000, top1=(80.5, 81.25), epoch=200,
              shot_bounds="standard", sam_rho=0.0, few=None, config=None, precision=None, pieces=()):
    """A run folder with a summary.json shaped like glmc.records.make_summary's; `pieces`: the training precision of
    each session in sessions.jsonl."""
    folder.mkdir(parents=True)
    final = {"epoch": epoch, "global_step": 1, "top1": top1[0], "top5": 99.0, "many": 90.0, "medium": 70.123,
             "few": few, "per_class": [], "shot_bounds": shot_bounds, "num_samples": test_total}
    summary = {
        "final": final,
        "best": {**final, "epoch": 150, "top1": top1[1], "label": "best epoch, selected on the test set"},
        "fingerprint": fingerprint,
        "dataset": {"dataset": "cifar10-lt", "num_classes": 10, "test_total": test_total, "fingerprint": fingerprint},
        "method": method,
        "backbone": "resnet32",
        "epochs": 200,
        "config": config or {"optim": {"sam_rho": sam_rho}},
        **({"precision": {"train": precision, "eval": "fp32"}} if precision else {}),
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    sessions = [{"session": n, "precision": {"train": piece, "eval": "fp32"}} for n, piece in enumerate(pieces, 1)]
    (folder / "sessions.jsonl").write_text("".join(json.dumps(session) + "\n" for session in sessions))
    return folder


def test_the_table_has_a_row_per_run_in_order(tmp_path):
    runs = [write_run(tmp_path / "glmc"), write_run(tmp_path / "ce", method="ce", top1=(70.0, 71.5), few=12.5),
            write_run(tmp_path / "sam", sam_rho=0.05), write_run(tmp_path / "short", epoch=3)]
    rows, notes = compare_runs(runs)
    assert notes == [] and [row.method for row in rows] == ["glmc", "ce", "glmc + SAM (rho 0.05)", "glmc"]
    text = render_text(rows)
    header, _, first, second, *_ = text.splitlines()
    assert header.split()[:4] == ["run", "method", "split", "backbone"]
    assert "80.50" in first and "81.25 (ep 150)" in first and "70.12" in first and first.rstrip().endswith("-")
    assert "70.00" in second and "12.50" in second and "sha256:f7669c469c9d…" in second
    assert "3 of 200" in text.splitlines()[5]
    assert "best epoch, selected on the test set" in text and "cifar10-lt test (10 classes, 10000 images)" in text


def test_markdown_is_written_and_printed_table_is_the_same(tmp_path, capsys):
    runs = [str(write_run(tmp_path / "a")), str(write_run(tmp_path / "b", method="focal"))]
    assert main(["compare", *runs, "--markdown", str(tmp_path / "table.md")]) == 0
    markdown = (tmp_path / "table.md").read_text().splitlines()
    assert markdown[0].startswith("| run | method | split | backbone | epochs | top-1 final | top-1 best* |")
    assert markdown[1].startswith("| --- | --- | --- | --- | ---: |")
    assert len([line for line in markdown if line.startswith("| ")]) == 4
    assert "focal" in markdown[3] and "focal" in capsys.readouterr().out
    assert render_markdown(*compare_runs(runs)) == (tmp_path / "table.md").read_text()


@pytest.mark.parametrize(
    "other, what",
    [({"fingerprint": "sha256:" + "1" * 64}, "split fingerprint"), ({"test_total": 5000}, "test set"),
     ({"shot_bounds": "authors"}, "shot bounds")],
)
def test_mixed_runs_are_refused_unless_allowed(tmp_path, other, what):
    runs = [write_run(tmp_path / "a"), write_run(tmp_path / "b", **other)]
    with pytest.raises(GlmcError, match=f"the runs differ in {what}: .*--allow-mixed") as error:
        compare_runs(runs)
    assert "\n" not in str(error.value)
    rows, notes = compare_runs(runs, allow_mixed=True)
    assert len(rows) == 2 and notes == [f"mixed {what}: the rows are not directly comparable"]
    assert notes[0] in render_text(rows, notes)


def test_bad_run_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "summary.json").write_text("{not json")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "summary.json").write_text(json.dumps({"method": "ce"}))
    for name, message in [("missing", "run folder not found"), ("empty", "holds no finished run"),
                          ("corrupt", "cannot read"), ("partial", "is not a glmc run summary")]:
        with pytest.raises(GlmcError, match=message) as error:
            run_row(tmp_path / name)
        assert "\n" not in str(error.value)
    done = subprocess.run([sys.executable, "-m", "glmc.cli", "compare", str(tmp_path / "corrupt")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_compare_reads_a_real_run_folder(tmp_path):
    from glmc.config import build_config
    from glmc.trainer import train

    config = build_config(None, {"data.dataset": "synthetic-lt", "model.backbone": "resnet8", "train.epochs": "2",
                                 "train.device": "cpu", "train.max_steps": "2", "method.name": "ldam-drw",
                                 "model.classifier": "cosine", "method.ldam_scale": "10"})
    summary = train(config, tmp_path / "run", quiet=True)
    row = run_row(tmp_path / "run")
    assert (row.method, row.fingerprint, row.epochs) == ("ldam-drw", summary["fingerprint"], "1 of 2")
    assert row.top1_final == summary["final"]["top1"] and row.test_set == "synthetic-lt test (10 classes, 1000 images)"
    assert summary["logit_scale"] == 10.0 and row.ece == summary["final"]["ece"] and row.notes == ()


def scaled_head_run(folder, logit_scale=None):
    """An LDAM-DRW run (cosine head, s = 30) whose summary has an ECE, and a `logit_scale` if given."""
    write_run(folder, method="ldam-drw", config={"method": {"name": "ldam-drw", "ldam_scale": 30.0},
                                                 "model": {"classifier": "cosine"}})
    summary = json.loads((folder / "summary.json").read_text())
    summary["final"]["ece"], summary["best"]["ece"] = 54.79, 50.0
    if logit_scale is not None:
        summary["logit_scale"] = logit_scale
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_the_ece_of_a_scaled_head_evaluated_without_its_scale_is_left_out_and_the_footer_says_why(tmp_path):
    bare = scaled_head_run(tmp_path / "bare")
    (row,), notes = compare_runs([bare])
    assert row.ece is None and row.top1_final == 80.5  # accuracy is the arg max: the scale does not move it
    assert notes == [f"{bare}: ECE and NLL left out: the glmc that trained this run computed them on its cosine "
                     "head's bare cosines, without the scale s = 30 its loss trained; `glmc eval` of its checkpoint "
                     "gives them"]
    assert notes[0] in render_text([row], notes) and render_text([row], notes).splitlines()[2].rstrip().endswith("-")
    (row,), notes = compare_runs([scaled_head_run(tmp_path / "scaled", logit_scale=30.0)])
    assert row.ece == 54.79 and notes == []
    (row,), notes = compare_runs([write_run(tmp_path / "linear")])  # no scale to miss: older summaries stay whole
    assert notes == [] and row.notes == ()


@pytest.mark.parametrize("run, ece", [("ldam-drw-own-recipe", None), ("ldam-drw-own-recipe-fp32", None),
                                      ("ldam-drw", None), ("balanced-softmax-own-recipe", 13.3282)])
def test_the_committed_ldam_drw_runs_show_no_ece_of_bare_cosines(run, ece):
    row = run_row(RESULTS / f"cifar10-lt-if100-{run}-cpu")
    assert row.ece == ece and len(row.notes) == (ece is None)


def test_the_footer_names_what_else_the_runs_differ_in_beyond_method_and_seed(tmp_path):
    glmc_recipe = {"optim": {"lr": 0.01}, "train": {"batch_size": 64, "seed": 0}, "method": {"name": "glmc"}}
    own = {"optim": {"lr": 0.1, "schedule": "ramp-cosine"}, "train": {"batch_size": 512, "seed": 1},
           "method": {"name": "balanced-softmax"}, "data": {"autoaugment": "cifar10"}}
    rows, notes = compare_runs([write_run(tmp_path / "glmc", config=glmc_recipe),
                                write_run(tmp_path / "bs", method="balanced-softmax", config=own)])
    (line,) = [line for line in render_text(rows, notes).splitlines() if line.startswith("the runs also differ")]
    assert line == ("the runs also differ in (values in row order): data.autoaugment none / cifar10; "
                    "optim.lr 0.01 / 0.1; optim.schedule cosine / ramp-cosine; train.batch_size 64 / 512")
    gammas = [write_run(tmp_path / f"gamma-{g}", config={"method": {"name": "glmc", "consistency_weight": g}})
              for g in (1.0, 4.0)]
    assert "method.consistency_weight 1.0 / 4.0" in render_text(*compare_runs(gammas))  # one method: its options count
    mixed = render_text(*compare_runs([*gammas, tmp_path / "bs"]))  # beside another method: still, with - for it
    assert "method.consistency_weight 1.0 / 4.0 / -" in mixed and "method.logit_adjust_tau" not in mixed
    seeds = [write_run(tmp_path / f"seed-{s}", config={"train": {"seed": s}}) for s in (0, 1)]
    assert "also differ" not in render_text(*compare_runs(seeds))


def test_seeds_evaluated_or_saved_at_other_cadences_are_one_setting_and_a_recipe_change_is_not(tmp_path):
    seed0 = write_run(tmp_path / "s0", top1=(77.3, 77.7), config={"train": {"seed": 0, "eval_every": 1,
                                                                          "eval_last_epochs": 20}})
    seed1 = write_run(tmp_path / "s1", top1=(76.3, 76.5), config={"train": {"seed": 1, "eval_every": 10,
                                                                          "checkpoint_minutes": 5.0}})
    (row,) = compare_runs([seed0, seed1], by_setting=True)[0]
    assert (row.n, row.top1_final) == (2, pytest.approx(76.8)) and row.top1_std == pytest.approx(0.7071, abs=1e-4)
    assert "also differ" not in render_text(*compare_runs([seed0, seed1]))

    other_lr = write_run(tmp_path / "lr", config={"train": {"seed": 2}, "optim": {"lr": 0.05}})
    assert [row.n for row in compare_runs([seed0, seed1, other_lr], by_setting=True)[0]] == [2, 1]


def precision_line(rows, notes=()):
    return [line for line in render_text(rows, notes).splitlines() if line.startswith("training precision")]


def test_the_footer_names_the_precision_each_run_trained_in_where_the_machines_made_them_differ(tmp_path):
    bf16 = write_run(tmp_path / "bf16", pieces=["bf16", "bf16"], config={"train": {"seed": 0}})
    fp32 = write_run(tmp_path / "fp32", pieces=["fp32"], config={"train": {"seed": 1}})
    moved = write_run(tmp_path / "moved", pieces=["bf16", "fp32", "fp32"], config={"train": {"seed": 2}})
    assert precision_line(*compare_runs([bf16, write_run(tmp_path / "also-bf16", pieces=["bf16"])])) == []
    assert precision_line(*compare_runs([bf16, fp32, moved])) == [
        "training precision (as each run's machines resolved train.precision), in row order: bf16 / fp32 / bf16 then fp32"]
    assert precision_line(*compare_runs([moved])) != []  # one run, resumed on a machine of another precision

    rows, notes = compare_runs([bf16, fp32, moved], by_setting=True)  # one setting: seeds pooled, precisions kept
    assert [row.n for row in rows] == [3] and rows[0].precision == "seeds in bf16, fp32, bf16 then fp32"
    assert precision_line(rows, notes)[0].endswith(": seeds in bf16, fp32, bf16 then fp32")
    same = compare_runs([bf16, write_run(tmp_path / "bf16-seed-1", pieces=["bf16"], config={"train": {"seed": 1}})],
                        by_setting=True)
    assert same[0][0].precision == "bf16" and precision_line(*same) == []


def test_without_sessions_the_summary_says_the_precision_and_without_either_it_is_unknown(tmp_path):
    rows, notes = compare_runs([write_run(tmp_path / "summary-only", precision="fp32"), write_run(tmp_path / "old")])
    assert [row.precision for row in rows] == ["fp32", ""]
    assert precision_line(rows, notes)[0].endswith(": fp32 / ?")


def test_the_committed_balanced_softmax_seeds_at_its_own_recipe_show_their_two_precisions():
    rows, notes = compare_runs([RESULTS / "cifar10-lt-if100-balanced-softmax-own-recipe-cpu",
                                RESULTS / "cifar10-lt-if100-balanced-softmax-own-recipe-seed1-cpu"], by_setting=True)
    assert [(row.n, row.precision) for row in rows] == [(2, "seeds in bf16, fp32")]
