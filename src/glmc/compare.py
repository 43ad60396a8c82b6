"""`glmc compare RUN_DIR...`: one table of runs, refusing runs that are not comparable.

A row is read from a run folder (glmc.rundir.load_run): its summary.json and config. Two
runs belong in one table only when they trained on the same split (the fingerprint), were
tested on the same test set (dataset, number of classes, number of test images) and group
classes into many/medium/few by the same bounds; `allow_mixed` overrides that, and the
table then says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from dataclasses import dataclass
from typing import Sequence

from glmc.config import flatten, stored_config
from glmc.errors import GlmcError
from glmc.metrics import format_percent
from glmc.rundir import BEST_LABEL, CADENCE_KEYS, MACHINE_KEYS, SUMMARY_FILE, load_run

SHORT_FINGERPRINT = 19  # "sha256:" and 12 hex digits


@dataclass(frozen=True)
class RunRow:
    """What the table shows of one run. Accuracies in percent; a shot group may be None."""

    run: str
    method: str
    fingerprint: str
    test_set: str
    shot_bounds: str
    backbone: str
    epochs: str  # "200", or "3 of 200" for a run stopped early
    top1_final: float
    top1_best: float
    best_epoch: int
    many: float | None
    medium: float | None
    few: float | None
    ece: float | None = None  # final epoch, percent (None for runs of glmc versions without it)
    setting: str = ""  # the config less its seed, machine and cadence keys: runs that share it differ only in seed
    n: int = 1  # runs aggregated into this row (`aggregate_seeds`)
    top1_std: float | None = None  # over those runs
    best_label: str = BEST_LABEL  # what the best epoch was selected on
    notes: tuple[str, ...] = ()  # the run folder's notes on figures left out (glmc.rundir.load_run)
    precision: str = ""  # what it trained in, as its machines resolved it (`RunRecord.training_precision`)


def run_row(run_dir: str | os.PathLike) -> RunRow:
    """The table row of the finished run in `run_dir` (glmc.rundir.load_run); problems are one-line GlmcErrors."""
    record = load_run(run_dir)
    summary = record.summary
    if summary.get("final", {}).get("top1", 0) is None:
        raise GlmcError(f"{record.path} was never tested (eval.test=false, as glmc tune's trials are): nothing to compare")
    try:
        final, best, dataset = summary["final"], summary["best"], summary["dataset"]
        epochs = int(summary["epochs"])
        return RunRow(
            run=str(run_dir),
            method=method_label(summary["method"], record.config),
            fingerprint=summary["fingerprint"],
            test_set=f"{dataset['dataset']} test ({dataset['num_classes']} classes, {dataset['test_total']} images)",
            shot_bounds=str(final.get("shot_bounds", "standard")),
            backbone=summary["backbone"],
            epochs=str(epochs) if int(final["epoch"]) >= epochs else f"{final['epoch']} of {epochs}",
            top1_final=float(final["top1"]),
            top1_best=float(best["top1"]),
            best_epoch=int(best["epoch"]),
            best_label=str(best.get("label", BEST_LABEL)),
            many=final["many"],
            medium=final["medium"],
            few=final["few"],
            ece=final.get("ece"),
            setting=json.dumps(setting_of(record.config), sort_keys=True),
            notes=record.notes,
            precision=record.training_precision,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise GlmcError(f"{record.path / SUMMARY_FILE} is not a glmc run summary ({type(error).__name__}: {error})") from None


def setting_of(config: dict) -> dict:
    """What makes a run the run it is: its resolved config less its seed, machine and cadence keys, flattened."""
    return {key: value for key, value in resolved(config).items() if key not in SEED_FREE}


def resolved(config: dict) -> dict:
    """The run's config, flattened, with every key this version has: a run of an older glmc lacks the keys added
    since, which hold their defaults, then as now. The config as stored where this version cannot read it."""
    try:
        return flatten(stored_config(config).to_dict())
    except GlmcError:
        return flatten(config)


def method_label(method: str, config: dict) -> str:
    """The method's name, with SAM's rho when the run used it."""
    rho = float((config.get("optim") or {}).get("sam_rho", 0.0) or 0.0)
    return f"{method} + SAM (rho {rho:g})" if rho > 0 else method


COMPARED = (("fingerprint", "split fingerprint"), ("test_set", "test set"), ("shot_bounds", "shot bounds"))


def check_comparable(rows: Sequence[RunRow], allow_mixed: bool = False) -> list[str]:
    """Raise GlmcError when the runs differ in split, test set or shot bounds, unless
    `allow_mixed`; then return one note per difference, for the table's footer."""
    notes = []
    for attribute, what in COMPARED:
        values = {getattr(row, attribute) for row in rows}
        if len(values) > 1:
            listed = ", ".join(f"{row.run} ({_short(getattr(row, attribute))})" for row in rows)
            if not allow_mixed:
                raise GlmcError(f"the runs differ in {what}: {listed}; pass --allow-mixed to tabulate them anyway")
            notes.append(f"mixed {what}: the rows are not directly comparable")
    return notes


def _short(value: str) -> str:
    return value[:SHORT_FINGERPRINT] + "…" if value.startswith("sha256:") else value


COLUMNS = ("run", "method", "split", "backbone", "epochs", "top-1 final", "top-1 best*", "many", "medium", "few", "ECE")


def table_cells(row: RunRow) -> list[str]:
    spread = f" ± {row.top1_std:.2f} (n {row.n})" if row.n > 1 else ""
    return [
        row.run,
        row.method,
        _short(row.fingerprint),
        row.backbone,
        row.epochs,
        f"{row.top1_final:.2f}{spread}",
        f"{row.top1_best:.2f}" + (" (mean)" if row.n > 1 else f" (ep {row.best_epoch})"),
        *(format_percent(value) for value in (row.many, row.medium, row.few, row.ece)),
    ]


def footer(rows: Sequence[RunRow], notes: Sequence[str]) -> list[str]:
    test_sets = sorted({row.test_set for row in rows})
    bounds = sorted({row.shot_bounds for row in rows})
    recipes = recipe_differences(rows)
    return [
        f"* {'; '.join(sorted({row.best_label for row in rows}))}; the headline is the final epoch. "
        f"many/medium/few: final epoch, {' / '.join(bounds)} bounds.",
        "ECE: expected calibration error of the final epoch, percent, 15 equal-width confidence bins.",
        f"test set: {'; '.join(test_sets)}",
        *([f"the runs also differ in (values in row order): {'; '.join(recipes)}"] if recipes else []),
        *precision_note(rows),
        *notes,
    ]


def precision_note(rows: Sequence[RunRow]) -> list[str]:
    """A line naming each row's training precision where they differ, or where one row's runs or pieces trained in
    more than one: the same config trains in bf16 on one machine and in fp32 on another (`train.precision` auto)."""
    precisions = [row.precision or "?" for row in rows]
    if len(set(precisions)) == 1 and " " not in precisions[0]:
        return []
    return [f"training precision (as each run's machines resolved train.precision), in row order: {' / '.join(precisions)}"]


def recipe_differences(rows: Sequence[RunRow]) -> list[str]:
    return config_differences([json.loads(row.setting) if row.setting else {} for row in rows])


def config_differences(settings: Sequence[dict]) -> list[str]:
    """The keys runs' settings (`setting_of`) differ in besides method and backbone, each as `key a / b / ...` in
    the runs' order: what to know before reading a difference of top-1 as one of method. A method's option counts
    where it differs between runs of that method; a run of a method without it shows `-`."""
    differences = []
    for key in dict.fromkeys(key for setting in settings for key in setting):
        if key in ("method.name", "model.backbone"):
            continue
        values = [setting.get(key, "-") for setting in settings]
        if key.startswith("method."):
            differs = any(len(held) > 1 for held in option_values_by_method(settings, key).values())
        else:
            differs = len({json.dumps(value) for value in values}) > 1
        if differs:
            differences.append(f"{key} {' / '.join(map(str, values))}")
    return differences


def option_values_by_method(settings: Sequence[dict], key: str) -> dict[str, set[str]]:
    """For each method among `settings` whose runs hold option `key`, the values they hold (a setting holds its own
    method's options only)."""
    values: dict[str, set[str]] = {}
    for setting in settings:
        if key in setting:
            values.setdefault(setting.get("method.name"), set()).add(json.dumps(setting[key]))
    return values


def render_text(rows: Sequence[RunRow], notes: Sequence[str] = ()) -> str:
    cells = [list(COLUMNS)] + [table_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    numeric = set(range(4, len(COLUMNS)))
    lines = ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
             for line in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], "", *footer(rows, notes)])


def markdown_row(values: Sequence) -> str:
    """One row of a Markdown table, a `|` inside a cell escaped."""
    return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"


def render_markdown(rows: Sequence[RunRow], notes: Sequence[str] = ()) -> str:
    align = ["---"] * 4 + ["---:"] * (len(COLUMNS) - 4)
    body = [markdown_row(COLUMNS), markdown_row(align), *(markdown_row(table_cells(row)) for row in rows)]
    return "\n".join([*body, "", *(f"{text}  " for text in footer(rows, notes))]) + "\n"


# keys that differ between runs of one setting: the seed, where and how the data was read, how often the run was
# evaluated and saved
SEED_FREE = {"train.seed", *MACHINE_KEYS, *CADENCE_KEYS}


def aggregate_seeds(rows: Sequence[RunRow]) -> list[RunRow]:
    """Runs that differ only in seed, as one row each: means of top-1 (with its std over seeds), best
    top-1 and many / medium / few; in the order each setting first appears."""
    groups: dict[str, list[RunRow]] = {}
    for row in rows:
        groups.setdefault(row.setting, []).append(row)
    aggregated = []
    for members in groups.values():
        first = members[0]
        if len(members) == 1:
            aggregated.append(first)
            continue
        top1 = [row.top1_final for row in members]
        aggregated.append(dataclasses.replace(
            first, run=f"{first.run} (+{len(members) - 1} seeds)", n=len(members), top1_final=statistics.fmean(top1),
            top1_std=statistics.stdev(top1), top1_best=statistics.fmean(row.top1_best for row in members),
            **{key: mean_of(getattr(row, key) for row in members) for key in ("many", "medium", "few", "ece")},
            epochs=first.epochs if len({row.epochs for row in members}) == 1 else "mixed",
            precision=pooled_precision([row.precision for row in members])))
    return aggregated


def pooled_precision(precisions: Sequence[str]) -> str:
    """The training precision of seeds pooled into one row: theirs where they share it, else each seed's."""
    return precisions[0] if len(set(precisions)) == 1 else f"seeds in {', '.join(p or '?' for p in precisions)}"


def mean_of(values) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.fmean(present) if present else None


def compare_runs(run_dirs: Sequence[str | os.PathLike], allow_mixed: bool = False,
                 by_setting: bool = False) -> tuple[list[RunRow], list[str]]:
    """The rows of `run_dirs`, in order, and the notes on what is mixed; refuses mixed runs unless `allow_mixed`.

    `by_setting`: runs that differ only in seed become one row (mean ± std over seeds)."""
    if not run_dirs:
        raise GlmcError("give at least one run folder")
    rows = [run_row(path) for path in run_dirs]
    notes = check_comparable(rows, allow_mixed) + [f"{row.run}: {note}" for row in rows for note in row.notes]
    return (aggregate_seeds(rows) if by_setting else rows), notes
