"""The report's pictures, drawn with matplotlib's object API (Agg; no pyplot, no display).

Every function takes plain data (metrics.jsonl records, per-class accuracies, training
class counts, a confusion matrix) and returns a `Figure`; `save_png` writes it. Classes are
always shown in order of their training count, head first, so the long tail reads left to
right (and top to bottom), with the many / medium / few groups marked.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.axes import Axes
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from glmc.metrics import SHOT_GROUPS
from glmc.shots import ShotBounds

SHOT_COLOURS = {"many": "#4c72b0", "medium": "#dd8452", "few": "#c44e52"}
NON_LOSS_PARTS = ("alpha", "lam")  # GLMC's cumulative weight and mean mixing ratio: weights, not losses
MAX_NAMED_CLASSES = 40  # beyond this, class axes show ranks instead of names
MAX_ANNOTATED_CELLS = 20  # up to this many classes, confusion cells and per-class bars print their percentage
MAX_FULL_CONFUSION = 100  # beyond this, the matrix is shown in blocks of consecutive ranks
CONFUSION_BLOCKS = 50
MARKER_LIMIT = 30  # curves with at most this many points show markers
DPI = 110


@dataclass(frozen=True)
class ClassOrder:
    """Classes ordered by training count (head first; ties keep label order) and their shot groups."""

    order: np.ndarray  # K, label of the class at each rank
    counts: np.ndarray  # K, training count at each rank
    names: list[str]  # K, name at each rank
    groups: list[str]  # K, shot group at each rank

    @classmethod
    def of(cls, class_counts: Sequence[int], class_names: Sequence[str], bounds: ShotBounds) -> "ClassOrder":
        counts = np.asarray(class_counts)
        order = np.argsort(-counts, kind="stable")
        masks = bounds.groups(counts[order])
        groups = [next(g for g in SHOT_GROUPS if masks[g][rank]) for rank in range(len(order))]
        return cls(order, counts[order], [class_names[k] for k in order], groups)

    def __len__(self) -> int:
        return len(self.order)

    def group_spans(self) -> list[tuple[str, int, int]]:
        """(group, first rank, last rank + 1) of each non-empty shot group, head first."""
        spans = []
        for group in SHOT_GROUPS:
            ranks = [rank for rank, g in enumerate(self.groups) if g == group]
            if ranks:
                spans.append((group, ranks[0], ranks[-1] + 1))
        return spans


def save_png(figure: Figure, path: str | os.PathLike) -> None:
    figure.savefig(path, dpi=DPI, format="png")


# ---------------------------------------------------------------- learning curves


def epoch_axis(records: Sequence[dict]) -> np.ndarray:
    """Fractional epochs of the records (a mid-epoch stop lands between two epochs)."""
    complete = [r for r in records if not r.get("partial_epoch") and r["epoch"] > 0]
    if not complete:
        return np.array([r["epoch"] for r in records], dtype=float)
    steps_per_epoch = complete[-1]["global_step"] / complete[-1]["epoch"]
    return np.array([r["global_step"] / steps_per_epoch for r in records])


def series(records: Sequence[dict], key: str, part: str | None = None) -> np.ndarray:
    """One value per record (NaN where missing): `record[key]`, or `record[key][part]`."""
    values = [r.get(key) if part is None else (r.get(key) or {}).get(part) for r in records]
    return np.array([math.nan if v is None else float(v) for v in values])


def outside_legend(ax: Axes) -> None:
    """A legend right of the axes, where it cannot hide a curve."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def marker_for(points: int) -> str | None:
    return "o" if points <= MARKER_LIMIT else None


def style_axis(ax: Axes, title: str, ylabel: str, xlabel: str = "epoch") -> None:
    ax.set_title(title, fontsize=11)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def loss_parts(records: Sequence[dict]) -> tuple[list[str], list[str]]:
    """The loss parts and the non-loss weights recorded, in first-seen order ("loss" excluded)."""
    names: list[str] = []
    for record in records:
        names += [name for name in record.get("losses", {}) if name not in names and name != "loss"]
    return [n for n in names if n not in NON_LOSS_PARTS], [n for n in names if n in NON_LOSS_PARTS]


def learning_curves(records: Sequence[dict], title: str, best_epoch: int | None = None,
                    selected_on: str = "test") -> Figure:
    """Losses (total and parts), accuracy (top-1/5, many/medium/few), lr and GLMC's weights per epoch; the best
    epoch, where given, is marked with the set it was chosen on ("test" or "validation")."""
    x = epoch_axis(records)
    marker = marker_for(len(records))
    parts, weights = loss_parts(records)
    figure = Figure(figsize=(12, 7.5), layout="constrained")
    (loss_ax, accuracy_ax), (lr_ax, weight_ax) = figure.subplots(2, 2)
    figure.suptitle(title, fontsize=13)

    loss_ax.plot(x, series(records, "losses", "loss"), color="black", linewidth=2, marker=marker, label="total")
    for part in parts:
        loss_ax.plot(x, series(records, "losses", part), marker=marker, markersize=3, label=part)
    style_axis(loss_ax, "training loss (epoch mean)", "loss")
    outside_legend(loss_ax)

    accuracy_ax.plot(x, series(records, "top1"), color="black", linewidth=2, marker=marker, label="top-1")
    accuracy_ax.plot(x, series(records, "top5"), color="grey", linestyle=":", label="top-5")
    for group in SHOT_GROUPS:
        accuracy_ax.plot(x, series(records, group), color=SHOT_COLOURS[group], marker=marker, markersize=3, label=group)
    if best_epoch is not None:
        accuracy_ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1,
                            label=f"best epoch\n(epoch {best_epoch},\n{selected_on}-selected)")
    accuracy_ax.set_ylim(0, 100)
    style_axis(accuracy_ax, "test accuracy", "accuracy (%)")
    outside_legend(accuracy_ax)

    lr_ax.plot(x, series(records, "lr"), color="#2a9d8f", marker=marker)
    style_axis(lr_ax, "learning rate", "lr")

    if weights:
        for name in weights:
            weight_ax.plot(x, series(records, "losses", name), marker=marker, label=name)
        weight_ax.set_ylim(-0.05, 1.05)
        style_axis(weight_ax, "method weights (epoch mean)", "weight")
        outside_legend(weight_ax)
    else:
        weight_ax.set_visible(False)
    return figure


def overlay_curves(runs: Sequence[tuple[str, Sequence[dict]]], title: str) -> Figure:
    """Several runs' total loss, lr, top-1 and many/medium/few per epoch; one colour per run."""
    panels = [("losses", "loss", "training loss (total)", "loss"), ("top1", None, "top-1", "accuracy (%)"),
              ("lr", None, "learning rate", "lr")] + [(g, None, g, "accuracy (%)") for g in SHOT_GROUPS]
    figure = Figure(figsize=(14, 8), layout="constrained")
    axes = figure.subplots(2, 3).ravel()
    figure.suptitle(title, fontsize=13)
    for ax, (key, part, panel_title, ylabel) in zip(axes, panels):
        for colour, (name, records) in zip(run_colours(len(runs)), runs):
            ax.plot(epoch_axis(records), series(records, key, part), color=colour,
                    marker=marker_for(len(records)), markersize=3, label=name)
        if ylabel.startswith("accuracy"):
            ax.set_ylim(0, 100)
        style_axis(ax, panel_title, ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(len(runs), 4), fontsize=10)
    return figure


def run_colours(count: int) -> list:
    """Distinct colours for `count` runs (tab10, then tab20)."""
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]


# ---------------------------------------------------------------- per-class accuracy


def class_axis(ax: Axes, classes: ClassOrder, names: bool) -> None:
    """Class names under the ticks when few enough, else ranks; the axis says which."""
    if names and len(classes) <= MAX_NAMED_CLASSES:
        ax.set_xticks(range(len(classes)))
        ax.set_xticklabels(classes.names, rotation=45 if len(classes) > 10 else 30, ha="right", fontsize=9)
        ax.set_xlabel("class, by training count (head → tail)")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
        ax.set_xlabel("class rank by training count (0 = most images)")
    ax.set_xlim(-0.6, len(classes) - 0.4)


def count_axis(ax: Axes, counts_list: Sequence[np.ndarray]) -> None:
    """Log-scaled training-count axis with room above and below the data."""
    low = min(float(c.min()) for c in counts_list)
    high = max(float(c.max()) for c in counts_list)
    ax.set_yscale("log")
    ax.set_ylim(max(low / 2, 0.5), high * 3)
    ax.set_ylabel("training images (log scale)")


def group_labels(ax: Axes, classes: ClassOrder, accuracy: Sequence[float | None] | None = None) -> None:
    """Shade the shot groups and name them (with their mean accuracy) at the top of the axes."""
    for index, (group, first, end) in enumerate(classes.group_spans()):
        ax.axvspan(first - 0.5, end - 0.5, color=SHOT_COLOURS[group], alpha=0.07, linewidth=0)
        if index:
            ax.axvline(first - 0.5, color="grey", linestyle="--", linewidth=0.8)
        text = f"{group} ({end - first})"
        if accuracy is not None:
            values = [a for a in accuracy[first:end] if a is not None]
            text += f"\nmean {np.mean(values):.1f}%" if values else ""
        ax.text((first + end - 1) / 2, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=9, color=SHOT_COLOURS[group])


def per_class_accuracy(per_class: Sequence[float | None], classes: ClassOrder, title: str) -> Figure:
    """Bars of per-class test accuracy, head to tail, with the training count on a log axis."""
    accuracy = [per_class[k] for k in classes.order]
    heights = [math.nan if a is None else a for a in accuracy]
    width = min(16.0, max(9.0, 0.3 * len(classes)))
    figure = Figure(figsize=(width, 5.5), layout="constrained")
    ax = figure.subplots()
    dense = len(classes) > MAX_FULL_CONFUSION  # thin bars alias: draw touching bars and a moving mean
    bars = ax.bar(range(len(classes)), heights, color=[SHOT_COLOURS[g] for g in classes.groups],
                  width=1.0 if dense else 0.8, linewidth=0, alpha=0.75 if dense else 1.0)
    if dense:
        window = max(len(classes) // CONFUSION_BLOCKS, 2)
        ax.plot(range(len(classes)), moving_mean(heights, window), color="white", linewidth=1.8,
                path_effects=[patheffects.withStroke(linewidth=3.5, foreground="black")],
                label=f"accuracy, moving mean over {window} classes")
    if len(classes) <= MAX_ANNOTATED_CELLS:  # a 0% class has no bar to see: print every value
        ax.bar_label(bars, labels=["" if a is None else f"{a:.0f}" for a in accuracy], fontsize=8, padding=2)
    ax.set_ylim(0, 108)  # headroom: a 100% bar's label stays clear of the group labels above
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("test accuracy (%)")
    class_axis(ax, classes, names=True)
    group_labels(ax, classes, accuracy)
    counts_ax = ax.twinx()
    counts_ax.plot(range(len(classes)), classes.counts, color="black", marker=marker_for(len(classes)),
                   markersize=4, linewidth=1.5, label="training images")
    count_axis(counts_ax, [classes.counts])
    legend_below(figure, [ax, counts_ax])
    figure.suptitle(title, fontsize=12)
    return figure


def reliability_diagram(reliability: dict, ece: dict[str, float | None], title: str) -> Figure:
    """Left: accuracy against confidence per equal-width bin, the gap to the bin's mean confidence
    hatched, the bin's sample count on a log axis. Right: ECE overall and per many / medium / few group."""
    bins = reliability["bins"]
    centres = (np.arange(bins) + 0.5) * 100 / bins
    accuracy = np.array([math.nan if a is None else a for a in reliability["accuracy"]])
    confidence = np.array([math.nan if c is None else c for c in reliability["confidence"]])
    figure = Figure(figsize=(11, 4.8), layout="constrained")
    ax, groups_ax = figure.subplots(1, 2, width_ratios=[2.2, 1])
    ax.plot([0, 100], [0, 100], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.bar(centres, accuracy, width=100 / bins * 0.9, color="#4c72b0", label="accuracy")
    ax.bar(centres, np.abs(confidence - accuracy), bottom=np.fmin(accuracy, confidence), width=100 / bins * 0.9,
           fill=False, hatch="///", edgecolor="#c44e52", linewidth=0.8, label="gap to the bin's mean confidence")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    style_axis(ax, "reliability", "accuracy (%)", xlabel="confidence (%), equal-width bins")
    counts_ax = ax.twinx()
    occupied = np.array(reliability["count"]) > 0  # an empty bin has no point on a log axis
    counts_ax.plot(centres[occupied], np.array(reliability["count"])[occupied], color="black", marker="o", markersize=3,
                   linewidth=1, label="samples per bin")
    counts_ax.set_yscale("log")
    counts_ax.set_ylabel("samples per bin (log)")
    names = ["all", *SHOT_GROUPS]
    values = [ece.get(name) for name in names]
    heights = [math.nan if v is None else v for v in values]
    bars = groups_ax.bar(names, heights, color=["#555555", *(SHOT_COLOURS[g] for g in SHOT_GROUPS)])
    groups_ax.bar_label(bars, labels=["–" if v is None else f"{v:.1f}" for v in values], padding=2)
    groups_ax.set_title("ECE by group", fontsize=11)
    groups_ax.set_ylabel("ECE (%)")
    groups_ax.set_xlabel("test samples of each group's classes")
    groups_ax.grid(alpha=0.3, axis="y")
    groups_ax.set_ylim(0, max([h for h in heights if not math.isnan(h)] + [1.0]) * 1.2)
    legend_below(figure, [ax, counts_ax])
    figure.suptitle(title, fontsize=12)
    return figure


def legend_below(figure: Figure, axes: Sequence[Axes]) -> None:
    """One legend for all `axes`, under the plot, where it cannot hide bars or curves."""
    handles, labels = [], []
    for ax in axes:
        more_handles, more_labels = ax.get_legend_handles_labels()
        handles += more_handles
        labels += more_labels
    figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)


def moving_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving mean ignoring NaN; the ends average over the classes available."""
    values = np.asarray(values, dtype=float)
    known = ~np.isnan(values)
    kernel = np.ones(window)
    sums = np.convolve(np.where(known, values, 0.0), kernel, mode="same")
    counts = np.convolve(known.astype(float), kernel, mode="same")
    return np.divide(sums, counts, out=np.full_like(sums, np.nan), where=counts > 0)


def overlay_per_class(runs: Sequence[tuple[str, Sequence[float | None], ClassOrder]], title: str) -> Figure:
    """Several runs' per-class accuracy by training-count rank, with their counts on a log axis.

    Runs over different numbers of classes share a relative axis (0 = head, 100 = tail).
    """
    first = runs[0][2]
    same_classes = all(same_class_order(first, c) for _, _, c in runs)
    relative = any(len(c) != len(first) for _, _, c in runs)
    figure = Figure(figsize=(min(16.0, max(10.0, 0.3 * len(first))), 5.5), layout="constrained")
    ax = figure.subplots()
    counts_ax = ax.twinx()
    for colour, (name, per_class, classes) in zip(run_colours(len(runs)), runs):
        x = 100 * np.arange(len(classes)) / max(len(classes) - 1, 1) if relative else np.arange(len(classes))
        accuracy = [math.nan if per_class[k] is None else per_class[k] for k in classes.order]
        plot_accuracy_line(ax, x, accuracy, colour, name)
        if not same_classes:
            counts_ax.plot(x, classes.counts, color=colour, linestyle="--", linewidth=1)
    if same_classes:
        counts_ax.plot(range(len(first)), first.counts, color="black", linestyle="--", linewidth=1.2, label="training images")
        group_labels(ax, first)
    count_axis(counts_ax, [classes.counts for _, _, classes in runs])
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, axis="y")
    if relative:
        ax.set_xlim(-1, 101)
        ax.set_xlabel("position in each run's class ranking by training count (% of its classes, head → tail)")
    else:
        class_axis(ax, first, names=same_classes)
    legend_below(figure, [ax, counts_ax])
    figure.suptitle(title + ("" if same_classes else " (dashed: each run's training counts)"), fontsize=12)
    return figure


def plot_accuracy_line(ax: Axes, x: np.ndarray, accuracy: Sequence[float], colour, name: str) -> None:
    """Per-class accuracy as a line; many classes get a faint raw line under a moving mean."""
    if len(x) <= MAX_NAMED_CLASSES:
        ax.plot(x, accuracy, color=colour, marker="o", markersize=4, label=name)
        return
    window = max(len(x) // 20, 3)
    ax.plot(x, accuracy, color=colour, linewidth=0.7, alpha=0.35)
    ax.plot(x, moving_mean(accuracy, window), color=colour, linewidth=2, label=f"{name} (moving mean of {window})")


def same_class_order(a: ClassOrder, b: ClassOrder) -> bool:
    return a.names == b.names and np.array_equal(a.counts, b.counts)


# ---------------------------------------------------------------- confusion matrix


def row_normalised(confusion: np.ndarray) -> np.ndarray:
    """Each true class's row as a share of its test images (rows without samples stay 0)."""
    totals = confusion.sum(axis=1, keepdims=True)
    return confusion / np.maximum(totals, 1)


def block_confusion(confusion: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Sum a K x K matrix over blocks of consecutive classes: edges (B + 1) -> B x B."""
    rows = np.add.reduceat(confusion, edges[:-1], axis=0)
    return np.add.reduceat(rows, edges[:-1], axis=1)


def group_confusion(confusion: np.ndarray, classes: ClassOrder) -> tuple[np.ndarray, list[str]]:
    """Share of each shot group's test images predicted as a class of each group (rows sum to 1)."""
    spans = classes.group_spans()
    edges = np.array([first for _, first, _ in spans] + [len(classes)])
    return row_normalised(block_confusion(confusion, edges)), [g for g, _, _ in spans]


def confusion_heatmap(confusion: np.ndarray, classes: ClassOrder, title: str) -> Figure:
    """Row-normalised confusion matrix, head to tail, beside its many/medium/few summary.

    Up to 100 classes every class is a cell (names and percentages when few); beyond,
    cells are blocks of consecutive ranks, so the picture stays readable for 1000 classes.
    """
    ordered = np.asarray(confusion)[np.ix_(classes.order, classes.order)]  # rows true, columns predicted
    size = 7.5 if len(classes) <= MAX_NAMED_CLASSES else 8.5
    figure = Figure(figsize=(size + 4, size), layout="constrained")
    main_ax, group_ax = figure.subplots(1, 2, width_ratios=[size, 3.2])
    if len(classes) <= MAX_FULL_CONFUSION:
        image = draw_full_matrix(main_ax, ordered, classes)
    else:
        image = draw_block_matrix(main_ax, ordered, classes)
    figure.colorbar(image, ax=main_ax, shrink=0.8, label="share of the true class's test images (sqrt scale)")
    figure.get_layout_engine().set(wspace=0.06)  # keeps the colour-bar label off the group panel
    draw_group_matrix(group_ax, ordered, classes)
    figure.suptitle(title, fontsize=12)
    return figure


def draw_full_matrix(ax: Axes, ordered: np.ndarray, classes: ClassOrder):
    shares = row_normalised(ordered)
    image = ax.imshow(shares, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    if len(classes) <= MAX_NAMED_CLASSES:
        ax.set_xticks(range(len(classes)), classes.names, rotation=45, ha="right", fontsize=8 if len(classes) > 20 else 9)
        ax.set_yticks(range(len(classes)), classes.names, fontsize=8 if len(classes) > 20 else 9)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    if len(classes) <= MAX_ANNOTATED_CELLS:
        annotate_cells(ax, shares, fontsize=8 if len(classes) > 12 else 9)
    mark_group_bounds(ax, classes)
    named = len(classes) <= MAX_NAMED_CLASSES
    ax.set_xlabel("predicted class" + ("" if named else " (rank by training count)"))
    ax.set_ylabel("true class" + ("" if named else " (rank by training count)"))
    ax.set_title("every class, head → tail", fontsize=10)
    return image


def draw_block_matrix(ax: Axes, ordered: np.ndarray, classes: ClassOrder):
    edges = np.linspace(0, len(classes), CONFUSION_BLOCKS + 1).round().astype(int)
    shares = row_normalised(block_confusion(ordered, edges))
    image = ax.pcolormesh(edges, edges, shares, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1))
    ax.set_xlim(0, len(classes))
    ax.set_ylim(len(classes), 0)  # head at the top, as in the full matrix
    ax.set_aspect("equal")
    mark_group_bounds(ax, classes, offset=0.0)
    ax.set_xlabel("predicted class (rank by training count)")
    ax.set_ylabel("true class (rank by training count)")
    ax.set_title(f"{len(classes)} classes in {CONFUSION_BLOCKS} blocks of ~{len(classes) / CONFUSION_BLOCKS:.0f} ranks",
                 fontsize=10)
    return image


def annotate_cells(ax: Axes, shares: np.ndarray, fontsize: int) -> None:
    """Print each non-zero cell's percentage, white on dark cells."""
    for row, column in zip(*np.nonzero(shares)):
        value = shares[row, column]
        ax.text(column, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=fontsize,
                color="white" if value > 0.45 else "black")


def mark_group_bounds(ax: Axes, classes: ClassOrder, offset: float = -0.5) -> None:
    """Dashed lines between the shot groups on both axes."""
    for _, first, _ in classes.group_spans()[1:]:
        ax.axhline(first + offset, color="#444444", linestyle="--", linewidth=0.8)
        ax.axvline(first + offset, color="#444444", linestyle="--", linewidth=0.8)


def draw_group_matrix(ax: Axes, ordered: np.ndarray, classes: ClassOrder) -> None:
    shares, groups = group_confusion(ordered, classes)
    ax.imshow(shares, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1))
    ax.set_xticks(range(len(groups)), groups)
    ax.set_yticks(range(len(groups)), groups)
    annotate_cells(ax, shares, fontsize=11)
    ax.set_xlabel("predicted group")
    ax.set_ylabel("true group")
    ax.set_title("by shot group (% of the row)", fontsize=10)
