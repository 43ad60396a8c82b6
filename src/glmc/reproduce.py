"""`glmc reproduce TABLE --output DIR`: run a paper's table row by row, resumably, beside the published figures.

Tables are data (tables.yaml beside presets.yaml, or a file of the same shape): a row is a
preset, optional overrides, an optional post-hoc calibration of its final checkpoint, its seeds
and the figures a source published. Each (preset, overrides, seed) trains once, in
`DIR/<preset>[+<overrides digest>]/seed-<k>/`: a finished run is skipped, an unfinished one
resumed from its last checkpoint, so the same command continues after a kill, a reboot, or on
another machine with DIR copied over. After every finished row DIR/table.md and DIR/table.json
are rewritten: the final-epoch top-1 over seeds (mean, std, n), many / medium / few, the best
test-selected epoch (labelled), the published figures and the differences, the split
fingerprints, and what is still missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import yaml

from glmc import lock
from glmc.calibration import CALIBRATIONS, calibrate_checkpoint, calibration_params, default_output, metrics_path
from glmc.checkpoint import load_latest_good
from glmc.compare import mean_of
from glmc.config import Config, build_config, parse_override
from glmc.errors import ConfigError, GlmcError
from glmc.export import export_weights
from glmc.files import write_text_atomically
from glmc.rundir import BEST_LABEL, LAST_CHECKPOINT, SUMMARY_FILE, Resume, RunFolder, load_run, writing_into
from glmc.trainer import train
from glmc.weights import compact_path

TABLE_FILE = "table.md"
TABLE_JSON = "table.json"
SHOT_KEYS = ("many", "medium", "few")


# ---------------------------------------------------------------- tables as data


@dataclass(frozen=True)
class Published:
    """A figure a source printed: top-1 and, where printed, many / medium / few."""

    top1: float
    source: str
    many: float | None = None
    medium: float | None = None
    few: float | None = None


@dataclass(frozen=True)
class Row:
    name: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # {"method": name, "params": {key: value}}
    seeds: int = 1
    published: tuple[Published, ...] = ()

    @property
    def training(self) -> str:
        """The run folder name shared by every row that trains the same preset with the same overrides."""
        if not self.overrides:
            return self.preset
        text = json.dumps(self.overrides, sort_keys=True, default=str)
        return f"{self.preset}+{hashlib.sha256(text.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    rows: tuple[Row, ...]


def packaged_tables() -> Path:
    return Path(str(resources.files("glmc").joinpath("tables.yaml")))


def load_tables(path: str | os.PathLike | None = None) -> dict[str, Table]:
    """The tables of `path` (default: the packaged tables.yaml), each checked (`check_table`)."""
    path = Path(path) if path is not None else packaged_tables()
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise GlmcError(f"cannot read table file {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not raw:
        raise GlmcError(f"{path} holds no tables (expected `name: {{description, seeds, rows}}`)")
    return {name: parse_table(name, entry, path) for name, entry in raw.items()}


def parse_table(name: str, entry: Any, path: Path) -> Table:
    where = f"{path}, table {name}"
    if not isinstance(entry, dict) or not isinstance(entry.get("rows"), list) or not entry["rows"]:
        raise GlmcError(f"{where}: expected a mapping with a non-empty list of rows")
    seeds = entry.get("seeds", 1)
    rows = tuple(parse_row(row, seeds, where) for row in entry["rows"])
    names = [row.name for row in rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GlmcError(f"{where}: duplicate row {duplicates[0]!r}")
    table = Table(name, str(entry.get("description", "")), rows)
    check_table(table, where)
    return table


def parse_row(row: Any, seeds: Any, where: str) -> Row:
    if not isinstance(row, dict) or "name" not in row or "preset" not in row:
        raise GlmcError(f"{where}: every row needs a name and a preset, got {row!r}")
    unknown = set(row) - {"name", "preset", "overrides", "calibration", "seeds", "published"}
    if unknown:
        raise GlmcError(f"{where}, row {row['name']!r}: unknown field {sorted(unknown)[0]!r}")
    published = []
    for figure in row.get("published") or []:
        if not isinstance(figure, dict) or not str(figure.get("source") or "").strip():
            raise GlmcError(f"{where}, row {row['name']!r}: a published figure without its source: {figure!r}")
        try:
            published.append(Published(top1=float(figure["top1"]), source=str(figure["source"]),
                                       **{key: float(figure[key]) for key in SHOT_KEYS if figure.get(key) is not None}))
        except (KeyError, TypeError, ValueError):
            raise GlmcError(f"{where}, row {row['name']!r}: a published figure needs a numeric top1: {figure!r}") from None
    count = row.get("seeds", seeds)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise GlmcError(f"{where}, row {row['name']!r}: seeds must be a count >= 1, got {count!r}")
    calibration = row.get("calibration")
    if calibration is not None and (not isinstance(calibration, dict) or "method" not in calibration):
        raise GlmcError(f"{where}, row {row['name']!r}: calibration must be {{method, params}}, got {calibration!r}")
    return Row(str(row["name"]), str(row["preset"]), dict(row.get("overrides") or {}), calibration, count, tuple(published))


def check_table(table: Table, where: str) -> None:
    """Every row's preset, overrides and calibration exist and are valid (nothing is trained)."""
    for row in table.rows:
        try:
            build_config(row.preset, row.overrides)
            if row.calibration is not None:
                CALIBRATIONS.get(row.calibration["method"])
                calibration_params(row.calibration["method"], [f"{k}={v}" for k, v in (row.calibration.get("params") or {}).items()])
        except ConfigError as error:
            raise GlmcError(f"{where}, row {row.name!r}: {error}") from None


# ---------------------------------------------------------------- the runs of a table


@dataclass(frozen=True)
class Plan:
    """What a reproduce command runs: the rows kept, their seeds, where, and with what on top."""

    table: Table
    output: Path
    rows: tuple[Row, ...]
    seeds: dict[str, tuple[int, ...]]  # row name -> seeds
    extra: dict[str, Any]  # overrides of every row (--set), part of the run folder name
    machine: dict[str, Any]  # --data-root, --device, --compile: not part of the run's identity

    def folder(self, row: Row, seed: int) -> Path:
        return self.output / (row.training + extra_suffix(self.extra)) / f"seed-{seed}"

    def config(self, row: Row, seed: int) -> Config:
        return build_config(row.preset, {**row.overrides, **self.extra, "train.seed": seed, **self.machine})

    def trainings(self) -> list[tuple[Path, Row, int]]:
        """Each run to train once, in row order, with the first row that needs it."""
        seen, runs = set(), []
        for row in self.rows:
            for seed in self.seeds[row.name]:
                folder = self.folder(row, seed)
                if folder not in seen:
                    seen.add(folder)
                    runs.append((folder, row, seed))
        return runs


def extra_suffix(extra: Mapping[str, Any]) -> str:
    if not extra:
        return ""
    return "+set-" + hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode()).hexdigest()[:8]


def make_plan(table: Table, output: str | os.PathLike, seeds: int | None = None, only: Sequence[str] = (),
              extra: Sequence[str] = (), data_root: str | None = None, device: str | None = None,
              compile: str | None = None) -> Plan:
    """The rows of `table` to train into `output`; `compile`, a torch.compile mode (COMPILE_MODES) or None, goes with
    `data_root` and `device` into every run's machine keys, which are not part of its identity."""
    rows = table.rows
    if only:
        unknown = [name for name in only if name not in {row.name for row in rows}]
        if unknown:
            raise GlmcError(f"table {table.name} has no row {unknown[0]!r} (rows: {', '.join(r.name for r in rows)})")
        rows = tuple(row for row in rows if row.name in only)
    if seeds is not None and seeds < 1:
        raise GlmcError(f"--seeds must be >= 1, got {seeds}")
    compiled = {"train.compile": True, "train.compile_mode": compile} if compile else {}
    located = {key: value for key, value in (("data.data_root", data_root), ("train.device", device)) if value}
    machine = located | compiled
    return Plan(table, Path(output), rows, {row.name: tuple(range(seeds or row.seeds)) for row in rows},
                dict(parse_override(text) for text in extra), machine)


@dataclass(frozen=True)
class RunStatus:
    state: str  # "done", "partial" or "to do"
    epoch: int = 0  # epochs finished (partial runs: from the last checkpoint)
    epochs: int = 0

    def render(self) -> str:
        return {"done": "done", "to do": "to do"}.get(self.state, f"partial: {self.epoch} of {self.epochs} epochs")


def finished_epochs(folder: Path) -> int | None:
    """The epochs of the run `folder` holds if it has finished them (its summary says so), else None: no checkpoint read."""
    summary = folder / SUMMARY_FILE
    if not summary.is_file():
        return None
    done = json.loads(summary.read_text())
    return int(done["epochs"]) if int(done["final"]["epoch"]) >= int(done["epochs"]) else None


def run_status(folder: Path, config: Config) -> RunStatus:
    epochs = config.train.epochs
    done = finished_epochs(folder)
    if done is not None:
        return RunStatus("done", done, done)
    run = RunFolder(folder)
    if not run.holds_run():
        return RunStatus("to do", 0, epochs)
    run.require_same_run(config)  # a folder holding another run is refused
    epoch = int(load_latest_good(run.last_checkpoint)["state"]["epoch"]) if run.has_checkpoint() else 0
    return RunStatus("partial", epoch, epochs)


# ---------------------------------------------------------------- running

BUSY_POLL_SECONDS = 10.0  # how often a command that has nothing left to do looks at the runs other processes hold


def train_run(folder: Path, config: Config, quiet: bool) -> None:
    """Train, or continue, the run in `folder` in this process (`FolderInUse` if a live process writes it)."""
    train(config, folder, resume=Resume.IF_SAME_RUN, quiet=quiet)


def train_command(folder: Path, row: Row, seed: int, plan: Plan) -> list[str]:
    """The same training as `train_run`, as a `glmc train` command for a worker process (--jobs)."""
    values = {**row.overrides, **plan.extra, "train.seed": seed, **plan.machine}
    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    return [sys.executable, "-m", "glmc", "train", "--preset", row.preset, *sets, "--output", str(folder),
            "--resume-if-exists", "--quiet"]


def calibrated_paths(folder: Path, calibration: Mapping[str, Any]) -> tuple[Path, Path]:
    checkpoint = default_output(folder / LAST_CHECKPOINT, calibration["method"])
    return checkpoint, metrics_path(checkpoint)


def calibrate_run(folder: Path, row: Row, device: str | None, data_root: str | None) -> None:
    checkpoint, record = calibrated_paths(folder, row.calibration)
    if record.is_file():
        return
    params = [f"{key}={value}" for key, value in (row.calibration.get("params") or {}).items()]
    calibrate_checkpoint(folder / LAST_CHECKPOINT, row.calibration["method"], params, output=checkpoint,
                         data_root=data_root, device=device or "auto", overwrite=True)


class Progress:
    """What one reproduce command has done and seen: the rows it finished, the runs it found in use."""

    def __init__(self, log) -> None:
        self.log, self.finished_rows, self.seen_busy = log, set(), set()

    def busy(self, folder: Path, why: str) -> Path:
        if folder not in self.seen_busy:
            self.seen_busy.add(folder)
            self.log(f"skipping {folder} for now: {why}")
        return folder


def reproduce(plan: Plan, jobs: int = 1, export: bool = False, quiet: bool = False, log=print,
              poll_seconds: float = BUSY_POLL_SECONDS) -> dict:
    """Train what is missing (`jobs` runs at once), calibrate, export; the table is rewritten after every row.

    Several commands can share one output folder (processes on one machine, or machines that share DIR):
    each trains the runs no live process holds (glmc.lock) and skips the ones in use; once nothing is
    left for it, it waits for the others' runs to end (a run whose holder died is taken over), so every
    run is trained once and every command ends with the whole table.
    """
    if jobs < 1:
        raise GlmcError(f"--jobs must be >= 1, got {jobs}")
    plan.output.mkdir(parents=True, exist_ok=True)
    progress = Progress(log)
    while True:
        finish_rows(plan, progress)
        in_use = train_missing(plan, jobs, quiet, progress)
        in_use += finish_rows(plan, progress)
        if export:
            in_use += export_runs(plan, progress)
        if not in_use:
            break
        time.sleep(poll_seconds)
    table = summarise(plan)
    write_table(plan, table)
    return table


def train_missing(plan: Plan, jobs: int, quiet: bool, progress: Progress) -> list[Path]:
    """Train every run not done that no other live process holds; returns the folders found in use."""
    pending = [(folder, row, seed) for folder, row, seed in plan.trainings()
               if run_status(folder, plan.config(row, seed)).state != "done"]
    return train_here(plan, pending, quiet, progress) if jobs == 1 else train_in_workers(plan, pending, jobs, progress)


def train_here(plan: Plan, pending: list[tuple[Path, Row, int]], quiet: bool, progress: Progress) -> list[Path]:
    in_use = []
    for folder, row, seed in pending:
        config = plan.config(row, seed)
        refusal = lock.in_use(folder)
        if refusal is None and finished_epochs(folder) is None:  # another command may have ended it
            progress.log(f"training {row.name!r}, seed {seed}: {folder}")
            try:
                train_run(folder, config, quiet)
            except lock.FolderInUse as taken:  # taken between the look and the training
                refusal = taken
        if refusal is not None:
            in_use.append(progress.busy(folder, str(refusal)))
        else:
            finish_rows(plan, progress)
    return in_use


def train_in_workers(plan: Plan, pending: list[tuple[Path, Row, int]], jobs: int, progress: Progress) -> list[Path]:
    """`train_here` with `jobs` worker processes, each a `glmc train` (a refused one exits 2 naming the holder)."""
    in_use, commands = [], {}
    for folder, row, seed in pending:
        refusal = lock.in_use(folder)
        if refusal is None:
            commands[folder] = train_command(folder, row, seed, plan)
        else:
            in_use.append(progress.busy(folder, str(refusal)))
    environment = worker_environment(jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = pool.map(lambda command: subprocess.run(command, capture_output=True, text=True, env=environment),
                        commands.values())
        for folder, done in zip(commands, runs):
            if done.returncode == 2 and lock.BUSY in done.stderr:
                in_use.append(progress.busy(folder, done.stderr.strip().splitlines()[-1]))
            elif done.returncode != 0:
                raise GlmcError(f"training {folder} failed: {done.stderr.strip().splitlines()[-1:]}")
            else:
                finish_rows(plan, progress)
    return in_use


def worker_environment(jobs: int) -> dict[str, str]:
    """This process's environment with its CPU threads shared out among `jobs` workers (OMP_NUM_THREADS), unless
    it sets that already: every worker taking all the threads a run would take slows each of them several times."""
    environment = dict(os.environ)
    environment.setdefault("OMP_NUM_THREADS", str(max(1, torch.get_num_threads() // jobs)))
    return environment


def finish_rows(plan: Plan, progress: Progress) -> list[Path]:
    """Calibrate the rows whose runs are all done, and rewrite the table for each row newly finished; returns
    the folders whose calibration another process holds."""
    in_use = []
    for row in plan.rows:
        if row.name in progress.finished_rows:
            continue
        folders = [plan.folder(row, seed) for seed in plan.seeds[row.name]]
        if not all(finished_epochs(folder) is not None for folder in folders):  # no checkpoint read: this runs often
            continue
        busy = []
        for folder in folders if row.calibration is not None else ():
            try:
                calibrate_run(folder, row, plan.machine.get("train.device"), plan.machine.get("data.data_root"))
            except lock.FolderInUse as refusal:
                busy.append(progress.busy(folder, str(refusal)))
        in_use += busy
        if not busy:
            progress.finished_rows.add(row.name)
            write_table(plan, summarise(plan))
            progress.log(f"row {row.name!r} done")
    return in_use


def export_runs(plan: Plan, progress: Progress) -> list[Path]:
    """Compact fp16 weights (safetensors, the config in its metadata) beside every finished run's checkpoint;
    returns the folders another process holds."""
    in_use = []
    for row in plan.rows:
        for seed in plan.seeds[row.name]:
            folder = plan.folder(row, seed)
            sources = [folder / LAST_CHECKPOINT]
            if row.calibration is not None:
                sources = [calibrated_paths(folder, row.calibration)[0]]
            for source in sources:
                target = compact_path(source)
                if not source.is_file() or target.is_file():
                    continue
                try:
                    with writing_into(target):
                        if not target.is_file():
                            export_weights(source, target, "fp16")
                            progress.log(f"exported {target}")
                except lock.FolderInUse as refusal:
                    in_use.append(progress.busy(folder, str(refusal)))
    return in_use


# ---------------------------------------------------------------- the table


def seed_metrics(folder: Path, row: Row) -> tuple[dict, dict | None, str] | None:
    """(final metrics, best record or None, fingerprint) of a finished run (its calibrated metrics for a calibrated row)."""
    if not (folder / SUMMARY_FILE).is_file():
        return None
    record = load_run(folder)
    summary = record.summary
    if int(summary["final"]["epoch"]) < int(summary["epochs"]):
        return None
    if row.calibration is None:
        return summary["final"], summary["best"], summary["fingerprint"]
    metrics = calibrated_paths(folder, row.calibration)[1]
    if not metrics.is_file():
        return None
    return json.loads(metrics.read_text())["after"], None, summary["fingerprint"]


def mean(values: Iterable[float | None]) -> float | None:
    """`compare.mean_of`, the mean of the values present, to the table's two decimals."""
    value = mean_of(values)
    return None if value is None else round(value, 2)


def summarise(plan: Plan) -> dict:
    rows = []
    for row in plan.rows:
        done, missing = {}, []
        for seed in plan.seeds[row.name]:
            result = seed_metrics(plan.folder(row, seed), row)
            if result:
                done[seed] = result
            else:
                missing.append(seed)
        finals = [final for final, _, _ in done.values()]
        top1 = [final["top1"] for final in finals]
        entry = {
            "name": row.name, "preset": row.preset, "overrides": row.overrides, "calibration": row.calibration,
            "seeds_done": sorted(done), "seeds_missing": missing, "n": len(top1),
            "top1_mean": mean(top1), "top1_std": round(statistics.stdev(top1), 2) if len(top1) > 1 else None,
            **{key: mean(final[key] for final in finals) for key in SHOT_KEYS},
            "best_top1_mean": mean(best["top1"] for _, best, _ in done.values() if best is not None),
            "fingerprints": sorted({fingerprint for _, _, fingerprint in done.values()}),
            "published": [{**figure.__dict__, "difference": None if not top1 else round(mean(top1) - figure.top1, 2)}
                          for figure in row.published],
            "runs": [str(plan.folder(row, seed)) for seed in plan.seeds[row.name]],
        }
        rows.append(entry)
    return {"table": plan.table.name, "description": plan.table.description, "extra_overrides": plan.extra,
            "rows": rows, "missing_rows": [r["name"] for r in rows if r["seeds_missing"]],
            "best_label": f"best: {BEST_LABEL}, mean over seeds; the headline is the final epoch"}


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def render_markdown(table: dict) -> str:
    head = ["row", "n", "top-1 final", "many", "medium", "few", "best*", "published", "Δ", "source", "split"]
    lines = [f"# {table['table']}", "", table["description"], "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["rows"]:
        top1 = "–" if row["top1_mean"] is None else fmt(row["top1_mean"]) + (f" ± {row['top1_std']:.2f}" if row["top1_std"] is not None else "")
        split = ", ".join(f[:19] + "…" for f in row["fingerprints"]) or "–"
        figures = row["published"] or [{"top1": None, "difference": None, "source": ""}]
        for index, figure in enumerate(figures):
            cells = [row["name"], str(row["n"]), top1, fmt(row["many"]), fmt(row["medium"]), fmt(row["few"]),
                     fmt(row["best_top1_mean"])] if index == 0 else [""] * 7
            difference = "–" if figure["difference"] is None else f"{figure['difference']:+.2f}"
            cells += [fmt(figure["top1"]), difference, figure["source"].replace("|", "/"), split if index == 0 else ""]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"n: seeds finished. top-1, many / medium / few: final epoch, mean (± std over seeds). "
                  f"*{table['best_label']}. Δ: ours − published."]
    if table["missing_rows"]:
        lines.append("Still missing: " + "; ".join(f"{r['name']} (seeds {', '.join(map(str, r['seeds_missing']))})"
                                                  for r in table["rows"] if r["seeds_missing"]) + ".")
    if table["extra_overrides"]:
        lines.append(f"Every row with: {', '.join(f'{k}={v}' for k, v in table['extra_overrides'].items())}.")
    return "\n".join(lines) + "\n"


def write_table(plan: Plan, table: dict) -> None:
    write_text_atomically(plan.output / TABLE_JSON, json.dumps(table, indent=2) + "\n")
    write_text_atomically(plan.output / TABLE_FILE, render_markdown(table))


# ---------------------------------------------------------------- the dry run


def bench_figures(paths: Iterable[Path]) -> dict[tuple[str, str], float]:
    """(preset, device kind) -> seconds per epoch of training steps, from `glmc bench --json` files."""
    figures = {}
    for path in paths:
        try:
            bench = json.loads(Path(path).read_text())
            figures[bench["preset"], bench["device"].split()[0]] = bench["ms_per_step"] * bench["steps_per_epoch"] / 1000
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return figures


def dry_run(plan: Plan, bench_files: Sequence[str] = ()) -> str:
    """Each row's runs, what is done and what remains, and the time left where a bench figure predicts it."""
    figures = bench_figures([*bench_files, *sorted((plan.output / "bench").glob("*.json"))])
    lines = [f"table {plan.table.name}: {plan.table.description}", f"output {plan.output}"]
    total, unknown = 0.0, False
    for row in plan.rows:
        lines.append(f"  {row.name} ({row.preset}{', ' + str(row.overrides) if row.overrides else ''}"
                     f"{', then ' + row.calibration['method'] if row.calibration else ''})")
        for seed in plan.seeds[row.name]:
            config = plan.config(row, seed)
            folder = plan.folder(row, seed)
            status = run_status(folder, config)
            device = "cuda" if config.train.device.startswith("cuda") else config.train.device
            per_epoch = figures.get((row.preset, device)) or figures.get((row.preset, "cuda" if device == "auto" else device))
            left = (status.epochs - status.epoch) * per_epoch if per_epoch and status.state != "done" else 0.0
            unknown |= status.state != "done" and per_epoch is None
            total += left
            eta = "" if status.state == "done" else (f", about {left / 3600:.1f} h left" if per_epoch else ", no bench figure")
            lines.append(f"    seed {seed}: {status.render()}{eta}  {folder}")
    lines.append(f"predicted: {total / 3600:.1f} h of training steps" + (" (and runs with no bench figure)" if unknown else "")
                 + "; evaluation not included")
    return "\n".join(lines)
