"""Top-1, top-5, per-class and many/medium/few-shot accuracy on a balanced test set.

Evaluation counts on the device and transfers once: `ConfusionCounter.update` adds each
batch into a K x K confusion matrix and a top-5 count where the logits live, and
`ConfusionCounter.finish` brings them to the host and calls `metrics_from_counts`.
Shot groups come from the TRAINING class counts (METHOD.md section 1), with the bounds
defined once in `glmc.shots`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from glmc.errors import ConfigError
from glmc.registry import unknown_name_message
from glmc.shots import SHOT_BOUNDS, STANDARD, ShotBounds

TOP_K = 5
JSON_DECIMALS = 4
SHOT_GROUPS = ("many", "medium", "few")


@dataclass(frozen=True)
class Metrics:
    """Accuracies in percent. A shot group with no classes (or no tested classes) is `None`.

    `per_class[k]` is `None` only when class k had no test samples.
    """

    top1: float
    top5: float  # top-min(5, K)
    per_class: list[float | None]
    many: float | None  # mean per-class accuracy over the many-shot classes
    medium: float | None
    few: float | None
    num_samples: int
    shot_bounds: str  # "standard", "authors", or the bounds spelled out

    def to_json(self) -> dict:
        return {
            "top1": _rounded(self.top1),
            "top5": _rounded(self.top5),
            "per_class": [_rounded(value) for value in self.per_class],
            "many": _rounded(self.many),
            "medium": _rounded(self.medium),
            "few": _rounded(self.few),
            "num_samples": self.num_samples,
            "shot_bounds": self.shot_bounds,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), JSON_DECIMALS)


def format_percent(value: float | None, width: int = 0) -> str:
    """An accuracy as `93.75`, or `-` for an empty group; right-aligned to `width`."""
    return f"{'-' if value is None else format(value, '.2f'):>{width}}"


def format_shots(metrics: Metrics | Mapping[str, float | None], width: int = 0) -> str:
    """`many 93.75 / medium 74.33 / few -`: the one rendering of the shot groups on a line."""
    get = metrics.get if isinstance(metrics, Mapping) else lambda name: getattr(metrics, name)
    return " / ".join(f"{name} {format_percent(get(name), width)}" for name in SHOT_GROUPS)


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts of (true class, predicted class) pairs, on the inputs' device, without host syncs.

    predictions, labels: N int -> K x K int64, row = true class, column = prediction.
    """
    pair = labels.long() * num_classes + predictions.long()  # N, flat index into K x K
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=labels.device)
    counts.index_add_(0, pair, torch.ones_like(pair))  # fixed size, unlike bincount: no sync
    return counts.view(num_classes, num_classes)


def top_k_correct(logits: Tensor, labels: Tensor, k: int = TOP_K) -> Tensor:
    """How many labels are among their row's k highest logits (k clamped to K).

    logits: N x K, labels: N -> 0-dim int64 tensor on the logits' device.
    """
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # N x k
    return (top == labels[:, None]).any(dim=1).sum()


def metrics_from_counts(
    confusion: np.ndarray,
    top5_correct: int,
    class_counts: Sequence[int],
    shot_bounds: ShotBounds | str = STANDARD,
) -> Metrics:
    """Metrics from a host-side K x K confusion matrix (rows true) and the top-5 hit count.

    class_counts: training images per class (K), which decide the shot groups.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    num_classes = confusion.shape[0]
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix must be K x K, got {confusion.shape}")
    if len(class_counts) != num_classes:
        raise ValueError(f"{len(class_counts)} training class counts for {num_classes} classes")
    total = int(confusion.sum())
    if total == 0:
        raise ValueError("no test samples were counted")
    bounds = resolve_shot_bounds(shot_bounds)
    per_class = per_class_accuracy(confusion)
    groups = {name: group_mean(per_class, mask) for name, mask in bounds.groups(class_counts).items()}
    return Metrics(
        top1=100.0 * float(np.trace(confusion)) / total,
        top5=100.0 * float(top5_correct) / total,
        per_class=per_class,
        many=groups["many"],
        medium=groups["medium"],
        few=groups["few"],
        num_samples=total,
        shot_bounds=shot_bounds_name(bounds),
    )


def per_class_accuracy(confusion: np.ndarray) -> list[float | None]:
    """Percent of each class's test samples predicted correctly; `None` for an untested class."""
    tested = confusion.sum(axis=1)  # K
    correct = np.diag(confusion)  # K
    return [100.0 * float(c) / float(n) if n > 0 else None for c, n in zip(correct, tested)]


def group_mean(per_class: Sequence[float | None], mask: np.ndarray) -> float | None:
    """Mean accuracy over the tested classes in `mask`; `None` when there are none."""
    values = [value for value, member in zip(per_class, mask) if member and value is not None]
    return float(np.mean(values)) if values else None


def resolve_shot_bounds(shot_bounds: ShotBounds | str) -> ShotBounds:
    """`ShotBounds` as given, or looked up by name ("standard", "authors")."""
    if isinstance(shot_bounds, ShotBounds):
        return shot_bounds
    if shot_bounds not in SHOT_BOUNDS:
        raise ConfigError(unknown_name_message("shot bounds", shot_bounds, sorted(SHOT_BOUNDS)))
    return SHOT_BOUNDS[shot_bounds]


def shot_bounds_name(bounds: ShotBounds) -> str:
    """The registered name of `bounds`, or the bounds themselves when they are not registered."""
    for name, known in SHOT_BOUNDS.items():
        if known == bounds:
            return name
    return f"many>={bounds.many_min},few<={bounds.few_max}"


class ConfusionCounter:
    """Accumulates a confusion matrix and the top-5 count over batches, on their device.

    `update` never waits for the device; `finish` transfers once and returns `Metrics`.
    The counters are allocated on the device of the first batch.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.confusion: Tensor | None = None  # K x K int64, rows true
        self.top5_correct: Tensor | None = None  # 0-dim int64

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """logits: N x K (any float dtype), labels: N class indices, on the same device."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be N x {self.num_classes}, got {tuple(logits.shape)}")
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
        batch_confusion = confusion_matrix(logits.argmax(dim=1), labels, self.num_classes)
        batch_top5 = top_k_correct(logits, labels, TOP_K)
        if self.confusion is None:
            self.confusion, self.top5_correct = batch_confusion, batch_top5
        else:
            self.confusion = self.confusion + batch_confusion
            self.top5_correct = self.top5_correct + batch_top5

    def reduce(self, sum_over_ranks, device: torch.device) -> None:
        """Replace the counts by their sum over ranks (`sum_over_ranks` sums a tensor in place);
        a rank that counted nothing contributes zeros."""
        if self.confusion is None:
            self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
            self.top5_correct = torch.zeros((), dtype=torch.int64, device=device)
        counts = sum_over_ranks(torch.cat([self.confusion.flatten(), self.top5_correct.view(1)]))
        self.confusion, self.top5_correct = counts[:-1].view(self.num_classes, self.num_classes), counts[-1]

    def finish(self, class_counts: Sequence[int], shot_bounds: ShotBounds | str = STANDARD) -> Metrics:
        """The metrics of everything counted so far; `class_counts` are the training counts."""
        if self.confusion is None:
            raise ValueError("no batches were counted")
        counts = torch.cat([self.confusion.flatten(), self.top5_correct.view(1)]).cpu().numpy()  # one transfer
        confusion = counts[:-1].reshape(self.num_classes, self.num_classes)
        return metrics_from_counts(confusion, int(counts[-1]), class_counts, shot_bounds)


def evaluate_logits(
    logits: Tensor, labels: Tensor, class_counts: Sequence[int], shot_bounds: ShotBounds | str = STANDARD
) -> Metrics:
    """Metrics of one batch holding the whole test set: logits N x K, labels N."""
    counter = ConfusionCounter(logits.shape[1])
    counter.update(logits, labels)
    return counter.finish(class_counts, shot_bounds)
