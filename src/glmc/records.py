"""What a run records and prints: its metrics.jsonl lines, its summary.json, and their console lines.

The run folder (glmc.rundir) writes these records; this module decides what they hold and how a
terminal shows them. The numbers themselves come from glmc.metrics.
"""

from __future__ import annotations

import torch

import glmc
from glmc.config import Config
from glmc.data.datasets import Dataset
from glmc.machine import slowed_by_others
from glmc.metrics import SHOT_GROUPS, Metrics, format_percent, format_shots
from glmc.provenance import device_name, git_commit
from glmc.rundir import BEST_LABEL, BEST_ON_VALIDATION_LABEL, CALIBRATION_KEYS
from glmc.shots import SHOT_BOUNDS

# what a record keeps of the validation set's metrics (`balanced`: the mean per-class accuracy, what glmc tune maximises)
VALIDATION_KEYS = ("top1", "balanced", "many", "medium", "few", "per_class", "ece", "nll", "num_samples")

# what summary.json keeps of the final and the best record
METRIC_KEYS = ("epoch", "global_step", "top1", "top5", "many", "medium", "few", "per_class", "shot_bounds", "num_samples",
               *CALIBRATION_KEYS, "val")


def validation_json(metrics: Metrics) -> dict:
    values = metrics.to_json()
    tested = [accuracy for accuracy in values["per_class"] if accuracy is not None]
    values["balanced"] = round(sum(tested) / len(tested), 4)
    return {key: values[key] for key in VALIDATION_KEYS}


def evaluation_record(epoch: int, global_step: int, partial_epoch: bool, skipped_steps: int, test: Metrics | None,
                      val: Metrics | None, precision: str, losses: dict[str, float], lr: float, seconds: float,
                      other_cpu_share: float | None = None) -> dict:
    """One metrics.jsonl line: the test set's metrics at the top (unless eval.test=false), the validation set's
    under `val` (where the run has one), and the precision they were evaluated in; `seconds` of training the
    epoch and, where the system says (`glmc.machine.OtherWork`), the share of the CPU time other work took
    meanwhile."""
    return {
        "epoch": epoch,
        "global_step": global_step,
        "partial_epoch": partial_epoch,
        **(test.to_json() if test is not None else {}),
        **({"val": validation_json(val)} if val is not None else {}),
        "precision": precision,
        "losses": losses,
        "lr": lr,
        "seconds": round(seconds, 3),
        **({} if other_cpu_share is None else {"other_cpu_share": round(other_cpu_share, 3)}),
        "skipped_steps": skipped_steps,
    }


def selection_score(record: dict) -> float:
    """What the best epoch is chosen on: the validation set's balanced accuracy where the run has one, else the
    test top-1 (labelled as such: glmc's headline is always the final epoch)."""
    return record["val"]["balanced"] if "val" in record else record["top1"]


def best_label(record: dict) -> str:
    return BEST_ON_VALIDATION_LABEL if "val" in record else BEST_LABEL


def selection_set(best: dict) -> str:
    """The set a summary's best record was chosen on, "validation" or "test", read from its label."""
    return "validation" if best.get("label") == BEST_ON_VALIDATION_LABEL else "test"


def evaluation_line(record: dict, epochs: int) -> str:
    test = (f"top1 {record['top1']:.2f}  top5 {record['top5']:.2f}  {format_shots(record, width=5)}  "
            f"ece {format_percent(record.get('ece'))}  ") if "top1" in record else ""
    val = record.get("val")
    validation = f"val {val['top1']:.2f} (balanced {val['balanced']:.2f})  " if val else ""
    return epoch_line(record["epoch"], epochs, record["losses"], record["lr"], record["seconds"], test + validation,
                      record.get("other_cpu_share"))


def epoch_line(epoch: int, epochs: int, losses: dict[str, float], lr: float, seconds: float, results: str = "",
               other_cpu_share: float | None = None) -> str:
    """`epoch  E/N  loss L  <results>lr R  Ts`: an evaluation's line, or with no results an epoch's progress line;
    `Ts (other work took 45% of the CPU time)` where other work took enough of the CPU time to slow the epoch."""
    shared = f" (other work took {100 * other_cpu_share:.0f}% of the CPU time)" if slowed_by_others(other_cpu_share) else ""
    return f"epoch {epoch:>3}/{epochs}  loss {losses.get('loss', float('nan')):.4f}  {results}lr {lr:.5f}  {seconds:.1f}s{shared}"


def shots_table(summary: dict) -> str:
    final, best = summary["final"], summary["best"]
    rows = [("final", final), (f"best (epoch {best['epoch']}, {selection_set(best)}-selected)", best)]
    if final.get("top1") is None:  # eval.test=false: only the validation set was evaluated
        rows = [("final, validation set", final["val"]), (f"best (epoch {best['epoch']}), validation set", best["val"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':<{width}}  {'top1':>6} {'many':>6} {'medium':>6} {'few':>6}"]
    for name, record in rows:
        lines.append(f"{name:<{width}}  " + " ".join(format_percent(record[key], width=6) for key in ("top1", *SHOT_GROUPS)))
    return "\n".join(lines)


def evaluated_run(config: Config, dataset: Dataset, final: dict, best: dict) -> dict:
    """The head of a summary: the final (or last) and the best evaluation record, the data, the method, the plan."""
    return {
        "final": {k: final.get(k) for k in METRIC_KEYS},  # .get: `val` only where the run has a validation set
        "best": {k: best.get(k) for k in METRIC_KEYS} | {"label": best_label(best)},
        "fingerprint": dataset.fingerprint,
        "dataset": dataset.card(SHOT_BOUNDS[config.train.shot_bounds]).to_json(),
        "method": config.method.name,
        "backbone": config.model.backbone,
        "epochs": config.train.epochs,
    }


def make_summary(config: Config, dataset: Dataset, final: dict, best: dict, steps: int, seconds: float,
                 unreadable: list[str], device: torch.device, processes: int = 1,
                 precision: dict[str, str] | None = None) -> dict:
    """summary.json: the final and the best evaluation, and what the run was (data, method, machine, code)."""
    return {
        **evaluated_run(config, dataset, final, best),
        "logit_scale": config.method.logit_scale,  # what the model multiplied its head's outputs by before the softmax
        "steps": steps,
        "wall_seconds": round(seconds, 2),
        "version": glmc.__version__,
        "git_commit": git_commit(),
        "device": device_name(device),
        "precision": precision,  # resolved: {"train": ..., "eval": ...}
        "processes": processes,
        "unreadable_images": {"count": len(unreadable), "files": unreadable[:100]},
        "torch": torch.__version__,
        "config": config.to_dict(),
    }
