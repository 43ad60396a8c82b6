"""Turn a finished run folder into a committed result: its records, compact weights and report.

    python tools/finish_run.py RUN_DIR DEST --data-root DIR [--device cpu] [--calibration METHOD ...]
    python tools/finish_run.py RUN_DIR DEST --unfinished

DEST gets summary.json, metrics.jsonl, config.yaml, classes.txt and sessions.jsonl from RUN_DIR; the final weights
as fp16 safetensors (`checkpoint_last-fp16.safetensors`, about a quarter of the checkpoint) with
their fp32 evaluation beside them (`checkpoint_last-fp16-eval.json`, which tests/test_results.py
re-checks to 0.05 points); the final checkpoint's fit of its own training images, un-augmented
(`training-fit.json`, from `glmc eval --on train`); and the PNGs of `glmc report`. Never the
optimiser state. RUN.md, which says how the run was made, is the author's to write; the script
prints the table of the run's sessions (one per `glmc train` that worked on it) for it.

--calibration METHOD (repeatable): `glmc calibrate` of the final checkpoint with METHOD's defaults,
committed the same way: its metrics JSON (`checkpoint_last-METHOD.json`) and its fp16 weights with
their evaluation.

--unfinished: for a run that has to stop before its end. DEST gets the records and the last
checkpoint with its SHA-256, so that `glmc train --resume` of a copy of DEST continues the run
exactly; no weights export, no report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from glmc.calibration import default_output, metrics_path
from glmc.checkpoint import checksum_path
from glmc.compare import markdown_row
from glmc.weights import compact_path, write_evaluation
from glmc.report import SESSION_HEADER, session_rows
from glmc.rundir import LAST_CHECKPOINT, RECORD_FILES, SESSIONS_FILE, SUMMARY_FILE, RunFolder


def glmc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glmc", *args], check=True, stdout=subprocess.PIPE, text=True)


def copy_records(run: Path, dest: Path, unfinished: bool = False) -> None:
    if unfinished:
        names = (*RECORD_FILES, LAST_CHECKPOINT, checksum_path(Path(LAST_CHECKPOINT)).name)
        if not (run / LAST_CHECKPOINT).is_file():
            raise SystemExit(f"{run} has no {LAST_CHECKPOINT} to continue from")
    else:
        names = RECORD_FILES
        if not (run / SUMMARY_FILE).is_file():
            raise SystemExit(f"{run} has no {SUMMARY_FILE}: the run has not finished (resume it with glmc train --resume "
                             f"{run}, or commit it as it stands with --unfinished)")
    for name in names:
        if (run / name).is_file():
            shutil.copy2(run / name, dest / name)


def export_and_evaluate(checkpoint: Path, dest: Path, data_root: str, device: str) -> dict:
    weights = dest / compact_path(checkpoint).name
    glmc("export", str(checkpoint), "--format", "safetensors", "--dtype", "fp16", "--output", str(weights))
    return write_evaluation(weights, json.loads(glmc("eval", str(weights), "--data-root", data_root, "--device", device,
                                                    "--json").stdout))


TRAINING_FIT = "training-fit.json"


def record_training_fit(run: Path, dest: Path, data_root: str, device: str) -> dict:
    """The final checkpoint on its own training images, un-augmented (`glmc eval --on train`), into
    `dest/training-fit.json`: how far the model fits what it trained on."""
    metrics = json.loads(glmc("eval", str(run / LAST_CHECKPOINT), "--on", "train", "--data-root", data_root,
                              "--device", device, "--json").stdout)
    record = {"checkpoint": LAST_CHECKPOINT, "part": "train", "augmentation": "none", **metrics}
    (dest / TRAINING_FIT).write_text(json.dumps(record) + "\n")
    return record


def calibrate_and_export(run: Path, dest: Path, method: str, data_root: str, device: str) -> dict:
    """The final checkpoint calibrated with `method`'s defaults: its metrics JSON and fp16 weights into `dest`."""
    final = run / LAST_CHECKPOINT
    glmc("calibrate", str(final), "--method", method, "--data-root", data_root, "--device", device, "--overwrite")
    calibrated = default_output(final, method)
    shutil.copy2(metrics_path(calibrated), dest / metrics_path(calibrated).name)
    return export_and_evaluate(calibrated, dest, data_root, device)


def copy_report(run: Path, dest: Path, data_root: str, device: str) -> None:
    report = dest / "report"
    glmc("report", str(run), "--output", str(report), "--data-root", data_root, "--device", device)
    for path in report.iterdir():
        if path.suffix != ".png":  # report.html embeds the same pictures
            path.unlink() if path.is_file() else shutil.rmtree(path)


def sessions_markdown(run: Path) -> str:
    rows = [SESSION_HEADER, ["---"] * len(SESSION_HEADER), *session_rows(RunFolder(run).read_sessions())]
    return "\n".join(markdown_row(row) for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--data-root", help="the data the run trained on (needed unless --unfinished)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--unfinished", action="store_true", help="the records and the last checkpoint, to continue later")
    parser.add_argument("--calibration", action="append", default=[], metavar="METHOD",
                        help="also commit the final checkpoint calibrated by glmc calibrate --method METHOD")
    args = parser.parse_args()
    if not (args.unfinished or args.data_root):
        parser.error("--data-root is needed to evaluate the final weights")
    if args.unfinished and args.calibration:
        parser.error("--calibration needs a finished run")
    args.dest.mkdir(parents=True, exist_ok=True)
    copy_records(args.run, args.dest, args.unfinished)
    if args.unfinished:
        print(f"{args.dest}: the run as it stands, with its last checkpoint; continue a copy of it with glmc train --resume")
        print_sessions(args.run)
        return 0
    evaluation = export_and_evaluate(args.run / LAST_CHECKPOINT, args.dest, args.data_root, args.device)
    copy_report(args.run, args.dest, args.data_root, args.device)
    final = json.loads((args.dest / SUMMARY_FILE).read_text())["final"]
    print(f"{args.dest}: final top-1 {final['top1']:.2f} in training, {evaluation['top1']:.2f} from the fp16 weights in fp32")
    fit = record_training_fit(args.run, args.dest, args.data_root, args.device)
    print(f"{args.dest}: the final checkpoint fits {fit['top1']:.2f}% of its {fit['num_samples']:,} training images "
          f"(un-augmented; {TRAINING_FIT})")
    for method in args.calibration:
        calibrated = calibrate_and_export(args.run, args.dest, method, args.data_root, args.device)
        print(f"{args.dest}: with {method}, top-1 {calibrated['top1']:.2f} from its fp16 weights in fp32")
    print_sessions(args.run)
    return 0


def print_sessions(run: Path) -> None:
    if (run / SESSIONS_FILE).is_file():
        print(f"\nthe run's sessions, for RUN.md:\n\n{sessions_markdown(run)}")


if __name__ == "__main__":
    sys.exit(main())
