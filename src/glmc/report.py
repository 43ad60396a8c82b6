"""`glmc report RUN_DIR...`: PNG plots and a self-contained report.html of runs, finished or as far as they have got.

One run: `RUN_DIR/report/` gets learning_curves.png, per_class.png, confusion.png and
report.html (dataset card, fingerprint, config, final/best metrics and the plots, images
embedded). Several runs: one comparison folder gets curves.png and per_class.png (the runs
overlaid), each run's own plots in a subfolder, and one report.html with all of them.

The confusion matrix is not part of a run folder: it is computed here by evaluating
checkpoint_last.pt on the test set (the state the summary's final metrics come from) and
cached in `RUN_DIR/report/confusion.json`, keyed by the checkpoint's SHA-256, so later
reports take seconds even for wide models on a CPU.

A run that has not finished is drawn as far as it has got: its last evaluation in place of the final
one, the best so far beside it, the dataset card from its data (`run_so_far`; or from the summary
of a piece that train.max_steps ended), no confusion matrix, and a line saying where it stands
(glmc.status).
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import yaml

from glmc import plots
from glmc.compare import config_differences, setting_of
from glmc.config import stored_config
from glmc.data.datasets import create_dataset
from glmc.devices import resolve_device
from glmc.errors import GlmcError
from glmc.evaluation import confusion_counts, restore_for_evaluation
from glmc.files import file_sha256
from glmc.lock import FolderInUse
from glmc.metrics import SHOT_GROUPS, format_percent
from glmc.records import evaluated_run, selection_set
from glmc.rundir import (CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE, REPORT_DIR, SUMMARY_FILE, RunFolder, RunRecord,
                         load_run, read_records, read_text, session_precision, writing_into)
from glmc.shots import SHOT_BOUNDS, STANDARD
from glmc.status import RunStatus, run_status, state_phrase, trained_every_epoch, where

REPORT_FILE = "report.html"
CONFUSION_FILE = "confusion.json"


@dataclass
class RunData:
    """What a run folder says about itself: a finished run's summary, or one made of a run's evaluations so far."""

    path: Path
    name: str
    summary: dict
    records: list[dict]
    config_text: str
    sessions: list[dict] = field(default_factory=list)  # the run's sessions.jsonl
    config: dict = field(default_factory=dict)  # config.yaml, or the summary's copy
    confusion: np.ndarray | None = None  # K x K counts, rows true, in label order
    confusion_note: str = ""  # why there is no confusion matrix
    notes: tuple[str, ...] = ()  # the run folder's notes on figures left out (glmc.rundir.load_run)
    precision: str = ""  # what it trained in, piece by piece (glmc.rundir.RunRecord.training_precision)
    standing: RunStatus | None = None  # where a run that has not finished stands; None: finished

    @property
    def card(self) -> dict:
        return self.summary["dataset"]

    @property
    def label(self) -> str:
        """Its name, marked where the run has not finished."""
        return f"{self.name} (in progress)" if self.standing else self.name

    @property
    def final_epoch(self) -> str:
        """What its `final` record is: `final epoch 200`, or `epoch 160, the last evaluated`."""
        epoch = self.summary["final"]["epoch"]
        return f"epoch {epoch}, the last evaluated" if self.standing else f"final epoch {epoch}"

    def class_order(self) -> plots.ClassOrder:
        bounds = SHOT_BOUNDS.get(self.summary["final"].get("shot_bounds", "standard"), STANDARD)
        return plots.ClassOrder.of(self.card["class_counts"], self.card["class_names"], bounds)


@dataclass
class Picture:
    """One PNG of the report: its file (relative to the report folder) and what it shows."""

    file: str
    caption: str


@dataclass
class Section:
    """A run's part of the page: its tables and its pictures."""

    run: RunData
    pictures: list[Picture] = field(default_factory=list)


# ---------------------------------------------------------------- reading runs


def load_report_run(path: str | os.PathLike, name: str, data_root: str | None = None) -> RunData:
    """A run with its evaluation records, as the report draws it: from its summary.json (glmc.rundir.load_run), or,
    without one, as far as it has got (`run_so_far`, which reads its dataset card from `data_root`). A summary that
    closes a piece train.max_steps ended, not the run, is drawn as the run so far too, with where it stands."""
    folder = Path(path)
    if (folder / SUMMARY_FILE).is_file() or not folder.is_dir():
        record = load_run(folder)
        if not record.records:
            raise GlmcError(f"{record.path} holds no finished run ({METRICS_FILE} is missing or empty)")
        standing = None if trained_every_epoch(record.summary, record.records) else run_status(folder)
    else:
        standing = run_status(folder)
        record = run_so_far(folder, standing, data_root)
    return RunData(record.path, name, record.summary, record.records, record.config_text, record.sessions,
                   config=record.config, notes=record.notes, precision=record.training_precision, standing=standing)


def run_so_far(folder: Path, standing: RunStatus, data_root: str | None = None) -> RunRecord:
    """A run that has not finished, with a summary made of what its folder holds: its last evaluation as `final`,
    the best so far as `best`, the dataset card of the data its config names (from `data_root` where given; the
    folder keeps no card before its summary), its facts from its config and its latest session."""
    if standing.last_evaluation is None:
        raise GlmcError(f"{folder} holds no evaluation yet: glmc status {folder} says where it stands")
    config_text = read_text(folder / CONFIG_FILE)
    values = yaml.safe_load(config_text)  # run_status has read it: a run config
    config = stored_config(values, {"data.download": False, **({"data.data_root": data_root} if data_root else {})})
    try:
        dataset = create_dataset(config.data)
    except GlmcError as error:
        raise GlmcError(f"{folder} has not finished, so its dataset card comes from its data: {error} (pass --data-root)") from None
    sessions = RunFolder(folder).read_sessions()
    latest = sessions[-1] if sessions else {}
    summary = {
        **evaluated_run(config, dataset, standing.last_evaluation, standing.best_evaluation),
        "steps": standing.position["global_step"] if standing.position else None,
        "wall_seconds": round(sum(session.get("seconds", 0.0) for session in sessions), 2),  # the sessions that ended
        **{key: latest.get(key) for key in ("version", "git_commit", "device", "torch")},
    }
    return RunRecord(folder, summary, read_records(folder / METRICS_FILE), values, config_text, sessions)


def display_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, or the paths as given where two folders share a name."""
    names = [p.resolve().name for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names)]


# ---------------------------------------------------------------- the confusion matrix


def cached_confusion(cache: Path, checkpoint_hash: str) -> np.ndarray | None:
    """The cached matrix if it was computed from exactly this checkpoint."""
    try:
        stored = json.loads(cache.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if stored.get("checkpoint_sha256") != checkpoint_hash:
        return None
    return np.asarray(stored["confusion"], dtype=np.int64)


def write_cache(cache: Path, checkpoint_hash: str, confusion: np.ndarray) -> None:
    """Best effort: a read-only run folder just means the next report recomputes."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({
            "checkpoint": LAST_CHECKPOINT,
            "checkpoint_sha256": checkpoint_hash,
            "rows": "true class, in label order",
            "columns": "predicted class, in label order",
            "confusion": confusion.tolist(),
        }) + "\n")
    except OSError:
        pass


@torch.no_grad()
def test_set_confusion(checkpoint: Path, data_root: str | None, device: str) -> np.ndarray:
    """Evaluate `checkpoint` on its test set: K x K counts, rows true, columns predicted."""
    restored = restore_for_evaluation(checkpoint, data_root, device)
    config = restored.config
    test_set = restored.dataset.test_set(config.data, config.train.eval_batch_size, restored.device)
    counter = confusion_counts(restored.model, test_set.batches(), restored.checkpoint["num_classes"], restored.precision)
    return counter.confusion.cpu().numpy()


def attach_confusion(run: RunData, data_root: str | None, device: str) -> None:
    """Give `run` its final confusion matrix (cached or computed), or a note saying why not."""
    checkpoint = run.path / LAST_CHECKPOINT
    if not checkpoint.is_file():
        run.confusion_note = f"no confusion matrix: {checkpoint} is missing"
        return
    checkpoint_hash = "sha256:" + file_sha256(checkpoint)
    cache = run.path / REPORT_DIR / CONFUSION_FILE
    run.confusion = cached_confusion(cache, checkpoint_hash)
    if run.confusion is not None:
        return
    try:
        run.confusion = test_set_confusion(checkpoint, data_root, device)
    except GlmcError as error:  # typically the test set is not where the run read it
        run.confusion_note = f"no confusion matrix: {error} (pass --data-root)"
        return
    try:
        with writing_into(cache.parent):  # the run folder's lease, whatever folder the report goes to
            write_cache(cache, checkpoint_hash, run.confusion)
    except FolderInUse:
        pass  # another process is writing the run folder: the matrix is used, not cached


# ---------------------------------------------------------------- pictures


def draw_run_pictures(run: RunData, folder: Path) -> list[Picture]:
    """A run's learning curves, per-class accuracy and (when available) confusion matrix."""
    folder.mkdir(parents=True, exist_ok=True)
    final, best = run.summary["final"], run.summary["best"]
    classes = run.class_order()
    figures = [
        ("learning_curves.png", plots.learning_curves(run.records, f"{run.label}: learning curves", best["epoch"],
                                                                 selection_set(best)),
         "Losses (total and each part), test accuracy, learning rate and method weights per epoch."),
        ("per_class.png", plots.per_class_accuracy(final["per_class"], classes,
                                                   f"{run.label}: per-class test accuracy ({run.final_epoch})"),
         f"Per-class test accuracy ({run.final_epoch}), classes ordered by training count; the line is the training "
         "count (log axis)."),
    ]
    if final.get("reliability"):  # runs of glmc versions before calibration metrics have none
        ece = {"all": final["ece"], **{group: final.get(f"ece_{group}") for group in SHOT_GROUPS}}
        figures.append(("reliability.png", plots.reliability_diagram(final["reliability"], ece,
                                                                     f"{run.label}: calibration ({run.final_epoch})"),
                        f"Reliability: test accuracy against top-1 confidence in {final['reliability']['bins']} equal-width "
                        "bins (hatched: the gap to the bin's mean confidence); right: expected calibration "
                        "error (ECE, percent) over all test images and over each group's classes."))
    if run.confusion is not None:
        figures.append(("confusion.png", plots.confusion_heatmap(run.confusion, classes, f"{run.label}: confusion matrix (final epoch)"),
                        "Rows: true class, columns: prediction, both ordered by training count; "
                        "right: the same by many / medium / few group."))
    return [save_picture(folder, file, figure, caption) for file, figure, caption in figures]


def save_picture(folder: Path, file: str, figure, caption: str) -> Picture:
    plots.save_png(figure, folder / file)
    return Picture(file, caption)


def draw_overlays(runs: Sequence[RunData], folder: Path) -> list[Picture]:
    which = "final" if not any(run.standing for run in runs) else "final (or, for a run in progress, last evaluated)"
    curves = plots.overlay_curves([(r.label, r.records) for r in runs], "learning curves of the runs compared")
    per_class = plots.overlay_per_class([(r.label, r.summary["final"]["per_class"], r.class_order()) for r in runs],
                                        f"{which} per-class test accuracy by training count")
    return [
        save_picture(folder, "curves.png", curves, "Total loss, learning rate, top-1 and many/medium/few per epoch, one colour per run."),
        save_picture(folder, "per_class.png", per_class,
                     f"The {which} per-class test accuracy of every run, classes ordered by training count (log axis on "
                     "the right)."),
    ]


# ---------------------------------------------------------------- the page

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; } td, th { padding: .25em .8em; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f6f6f6; } td:first-child, th:first-child { text-align: left; }
code, pre { background: #f6f6f6; } pre { padding: .8em; overflow-x: auto; font-size: .85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; } figcaption { color: #555; font-size: .9em; }
.note { color: #8a5300; } .muted { color: #777; font-size: .9em; }
"""


def esc(value) -> str:
    return html.escape(str(value))


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def metrics_table(summary: dict, in_progress: bool = False) -> str:
    """The final (or, in a run not finished, the last) and the best evaluation: top-1, top-5, groups, ECE, NLL."""
    final_name, best_name = "final epoch (headline)", summary["best"].get("label", "best epoch")
    if in_progress:
        final_name, best_name = "last evaluation so far", best_name.replace("best epoch", "best epoch so far")
    rows = []
    for label, record in ((final_name, summary["final"]), (best_name, summary["best"])):
        nll = record.get("nll")
        rows.append([label, record["epoch"], *(format_percent(record.get(k)) for k in ("top1", "top5", *SHOT_GROUPS, "ece")),
                     "–" if nll is None else f"{nll:.3f}"])
    return table(["", "epoch", "top-1", "top-5", "many", "medium", "few", "ECE (%)", "NLL"], rows)


def card_table(card: dict) -> str:
    counts = card["class_counts"]
    rows = [
        ("dataset", card["dataset"]), ("split", card["split"]), ("imbalance factor", f"{card['imbalance_factor']:g}"),
        ("classes", card["num_classes"]), ("training images", f"{card['total']} (max {max(counts)}, min {min(counts)} per class)"),
        ("test images", card["test_total"]), ("many / medium / few classes", f"{card['many']} / {card['medium']} / {card['few']}"),
        ("split fingerprint", card["fingerprint"]),
    ]
    return table(["dataset card", ""], rows)


RUN_FIELDS = {"method": "method", "backbone": "backbone", "epochs": "epochs", "steps": "steps", "wall_seconds": "wall time",
              "device": "device", "torch": "torch", "version": "glmc version", "git_commit": "glmc commit"}


def run_table(run: RunData) -> str:
    summary = run.summary
    rows = [(label, summary.get(key) if summary.get(key) is not None else "–") for key, label in RUN_FIELDS.items()]
    rows = [(label, wall_time(value) if label == "wall time" else value) for label, value in rows]
    return table(["run", ""], [*rows, ("trained in", run.precision or "–")])


def wall_time(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return str(seconds)
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d} ({seconds:.0f} s)"


SESSION_HEADER = ("session", "started (UTC)", "ended (UTC)", "wall", "from", "reached", "outcome", "device",
                  "other work (CPU)", "trained in", "glmc commit")
UNENDED = "no end recorded: killed without a signal, or the machine was lost"


def session_rows(sessions: Sequence[dict]) -> list[tuple]:
    """sessions.jsonl as table rows (SESSION_HEADER): one per `glmc train` that worked on the run."""
    rows = []
    for session in sessions:
        ended = "ended" in session
        rows.append((session["session"], session["started"], session["ended"] if ended else "–",
                     wall_time(session["seconds"]) if ended else "–", run_position(session["from"]),
                     run_position(session["reached"]) if ended else "–", session["outcome"] if ended else UNENDED,
                     session.get("device", "–"), other_work(session), session_precision(session) or "–",
                     (session.get("git_commit") or "–")[:12]))
    return rows


def other_work(session: dict) -> str:
    """The share of the CPU time other work took during the session, where it was recorded."""
    share = session.get("other_cpu_share")
    return "–" if share is None else f"{100 * share:.0f}%"


def run_position(position: dict) -> str:
    """Where a run stood: `end of epoch E` between epochs, `epoch E, step S` inside one (both 1-based)."""
    if position["step"] == 0:
        return f"end of epoch {position['epoch']}" if position["epoch"] else "start"
    return f"epoch {position['epoch'] + 1}, step {position['step']}"


def per_class_table(run: RunData) -> str:
    """Every class, head first: training count, shot group, final and best test accuracy."""
    classes = run.class_order()
    final, best = run.summary["final"]["per_class"], run.summary["best"]["per_class"]
    rows = [(rank, classes.names[rank], int(classes.counts[rank]), classes.groups[rank], format_percent(final[k]), format_percent(best[k]))
            for rank, k in enumerate(classes.order)]
    return table(["rank", "class", "training images", "group", "final accuracy", "best accuracy"], rows)


def headline(run: RunData) -> str:
    """One line under the title: what was trained on what."""
    card = run.card
    return (f"{run.summary.get('method', '?')} · {run.summary.get('backbone', '?')} · {card['dataset']} "
            f"(imbalance factor {card['imbalance_factor']:g}, {card['split']} split) · split {card['fingerprint']}")


def figure_html(folder: Path, picture: Picture, prefix: str = "") -> str:
    link = prefix + picture.file  # relative to the report folder
    data = base64.b64encode((folder / link).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(link)}" data-file="{esc(link)}">'
            f'<figcaption>{esc(picture.caption)} <span class="muted">({esc(link)})</span></figcaption></figure>')


def run_section_html(section: Section, folder: Path, prefix: str = "", level: int = 2) -> str:
    run, h = section.run, f"h{level}"
    parts = [f"<p>{esc(headline(run))}</p>", *([f'<p class="note">{esc(standing_note(run.standing))}</p>'] if run.standing else []),
             f"<{h}>Results</{h}>", metrics_table(run.summary, in_progress=run.standing is not None),
             f'<p class="muted">{esc(results_note(run))}</p>',
             *(f'<p class="note">{esc(text)}</p>' for text in run.notes)]
    parts += [figure_html(folder, picture, prefix) for picture in section.pictures]
    if run.confusion_note:
        parts.append(f'<p class="note">{esc(run.confusion_note)}</p>')
    parts += [f"<{h}>Dataset</{h}>", card_table(run.card),
              f"<details><summary>per-class counts and accuracy</summary>{per_class_table(run)}</details>",
              f"<{h}>Run</{h}>", run_table(run),
              *([table(SESSION_HEADER, session_rows(run.sessions))] if run.sessions else []),
              f"<details><summary>config.yaml</summary><pre>{esc(run.config_text)}</pre></details>"]
    return "\n".join(parts)


def standing_note(standing: RunStatus) -> str:
    """Where a run that has not finished stands, as `glmc status` says it."""
    return (f"This run has not finished: {state_phrase(standing)}, at {where(standing)}. "
            "Its figures are its evaluations so far; report it again once it ends for its final ones.")


def results_note(run: RunData) -> str:
    if run.standing:
        return f"The run goes on: these are its last evaluation and its best so far; the {selected_on(run.summary)}."
    return f"Headline numbers are the final epoch; the {selected_on(run.summary)}."


def page(title: str, body: str) -> str:
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>{esc(title)}</h1>\n"
            f'<p class="muted">glmc report, generated {generated}</p>\n{body}\n</body></html>\n')


def comparison_table(runs: Sequence[RunData]) -> str:
    rows = [[r.label, r.summary.get("method", "–"), r.summary.get("backbone", "–"), r.card["dataset"],
             f"{r.card['imbalance_factor']:g}", r.summary["fingerprint"][:19] + "…", r.summary["final"]["epoch"],
             *(format_percent(r.summary["final"].get(k)) for k in ("top1", *SHOT_GROUPS)),
             f"{format_percent(r.summary['best']['top1'])} ({selection_set(r.summary['best'])}-selected)", r.precision or "–"]
            for r in runs]
    return table(["run", "method", "backbone", "dataset", "IF", "fingerprint", "epochs", "top-1", "many", "medium", "few",
                  "best top-1", "trained in"], rows)


def selected_on(summary: dict) -> str:
    """How the run's best epoch was chosen, as a clause: on the validation set where the run had one."""
    return f"best epoch is selected on the {selection_set(summary['best'])} set"


# ---------------------------------------------------------------- the command


def write_run_report(run: RunData, folder: Path) -> Path:
    section = Section(run, draw_run_pictures(run, folder))
    report = folder / REPORT_FILE
    report.write_text(page(run.label, run_section_html(section, folder)))
    return report


def write_comparison_report(runs: Sequence[RunData], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    overlays = draw_overlays(runs, folder)
    differences = config_differences([setting_of(run.config) for run in runs])
    body = ["<h2>Runs</h2>", comparison_table(runs), '<p class="muted">Final epoch; each best top-1 names the set its epoch was selected on.</p>',
            *([f'<p class="note">The runs also differ in (values in row order): {esc("; ".join(differences))}.</p>']
              if differences else []),
            *(figure_html(folder, picture) for picture in overlays)]
    for index, run in enumerate(runs):
        subfolder = f"{index + 1}-{re.sub(r'[^A-Za-z0-9._-]+', '_', run.name).strip('_')}"
        section = Section(run, draw_run_pictures(run, folder / subfolder))
        body += [f"<h2>{esc(run.label)}</h2>", f'<p class="muted">{esc(run.path)}</p>',
                 run_section_html(section, folder, prefix=f"{subfolder}/", level=3)]
    report = folder / REPORT_FILE
    report.write_text(page(f"{len(runs)} runs compared", "\n".join(body)))
    return report


def default_output(run_dirs: Sequence[Path]) -> Path:
    if len(run_dirs) == 1:
        return run_dirs[0] / REPORT_DIR
    return Path(f"reports/compare-{time.strftime('%Y%m%d-%H%M%S')}")


def make_report(
    run_dirs: Sequence[str | os.PathLike],
    output: str | os.PathLike | None = None,
    data_root: str | None = None,
    device: str = "auto",
    confusion: bool = True,
    note: Callable[[str], None] = lambda message: print(f"glmc: note: {message}", file=sys.stderr),
) -> Path:
    """Write the report of one run (or the comparison of several) and return its report.html."""
    paths = [Path(p) for p in run_dirs]
    runs = [load_report_run(path, name, data_root) for path, name in zip(paths, display_names(paths))]
    if confusion:
        resolve_device(device)  # a bad --device is an error, not a note about a missing picture
    if output is None and len(runs) == 1 and runs[0].standing and runs[0].standing.state == "training":
        raise GlmcError(f"{paths[0]} is training ({runs[0].standing.holder}), so its report so far cannot go into its "
                        "folder: write it elsewhere with --output DIR")
    folder = Path(output) if output else default_output(paths)
    for run in runs:
        for text in run.notes:
            note(f"{run.name}: {text}")
        if run.standing:
            run.confusion_note = "no confusion matrix: the run has not finished (it is drawn from the final checkpoint)"
            note(f"{run.name}: {run.confusion_note}")
        elif confusion:
            attach_confusion(run, data_root, device)
            if run.confusion_note:
                note(f"{run.name}: {run.confusion_note}")
        else:
            run.confusion_note = "confusion matrix skipped (--no-confusion)"
    with writing_into(folder):  # RUN_DIR/report/: the run folder's lease
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise GlmcError(f"cannot create report folder {folder}: {error.strerror}") from None
        return write_run_report(runs[0], folder) if len(runs) == 1 else write_comparison_report(runs, folder)
