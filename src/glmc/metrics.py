"""Top-1, top-5, per-class and many/medium/few-shot accuracy on a balanced test set, and calibration.

Calibration (Guo et al., ICML 2017): the expected calibration error over 15 equal-width bins of
the top-1 confidence (max softmax probability; bin b holds confidences in ((b-1)/15, b/15]),
`ECE = sum_b n_b / N * |accuracy_b - confidence_b|`, in percent like the accuracies; per
many / medium / few group over the test samples whose true class is in the group; and the
negative log-likelihood of the true class, mean over samples, in nats.

Evaluation counts on the device and transfers once: `ConfusionCounter.update` adds each
batch into a K x K confusion matrix and a top-5 count where the logits live, and
`ConfusionCounter.finish` brings them to the host and calls `metrics_from_counts`.
Shot groups come from the TRAINING class counts (docs/method.md), with the bounds
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
ECE_BINS = 15  # equal-width bins of the top-1 confidence


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
    # calibration, when the logits were counted (not from a confusion matrix alone)
    ece: float | None = None  # percent, ECE_BINS equal-width bins
    nll: float | None = None  # nats, mean over samples
    ece_many: float | None = None  # over the test samples of many-shot classes
    ece_medium: float | None = None
    ece_few: float | None = None
    reliability: dict | None = None  # {"bins", "count", "accuracy", "confidence"} per bin, percent (None: empty bin)

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
            "ece": _rounded(self.ece),
            "nll": _rounded(self.nll),
            **{f"ece_{group}": _rounded(getattr(self, f"ece_{group}")) for group in SHOT_GROUPS},
            "reliability": self.reliability,
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


def calibration_counts(logits: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per true class and confidence bin: samples, correct top-1 predictions, summed top-1 confidence
    (K x ECE_BINS x 3 float64); and the summed NLL of the true class (0-dim float64). No host sync.
    """
    log_probs = torch.log_softmax(logits.double(), dim=1)  # N x K
    confidence, predicted = log_probs.max(dim=1)
    confidence = confidence.exp()  # N, in (0, 1]
    bins = (confidence * ECE_BINS).ceil().long().clamp(1, ECE_BINS) - 1  # N, bin b: ((b-1)/B, b/B]
    rows = torch.stack([torch.ones_like(confidence), (predicted == labels).double(), confidence], dim=1)  # N x 3
    counts = torch.zeros(num_classes * ECE_BINS, 3, dtype=torch.float64, device=logits.device)
    counts.index_add_(0, labels.long() * ECE_BINS + bins, rows)
    nll = -log_probs.gather(1, labels.long()[:, None]).sum()
    return counts.view(num_classes, ECE_BINS, 3), nll


def top_k_correct(logits: Tensor, labels: Tensor, k: int = TOP_K) -> Tensor:
    """How many labels are among their row's k highest logits (k clamped to K).

    logits: N x K, labels: N -> 0-dim int64 tensor on the logits' device.
    """
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # N x k
    return (top == labels[:, None]).any(dim=1).sum()


@dataclass(frozen=True)
class CalibrationCounts:
    """Per true class and confidence bin (K x ECE_BINS): samples, correct ones, summed confidence; and the summed NLL."""

    count: np.ndarray
    correct: np.ndarray
    confidence: np.ndarray
    nll_sum: float


def expected_calibration_error(count: np.ndarray, correct: np.ndarray, confidence: np.ndarray) -> float | None:
    """`sum_b n_b / N |acc_b - conf_b|` in percent, from per-bin totals (length ECE_BINS); None with no samples."""
    total = count.sum()
    if total == 0:
        return None
    return 100.0 * float(np.abs(correct - confidence).sum() / total)  # n_b |acc_b - conf_b| = |correct_b - conf-sum_b|


def reliability_bins(count: np.ndarray, correct: np.ndarray, confidence: np.ndarray) -> dict:
    def percent(totals: np.ndarray) -> list[float | None]:
        return [round(100.0 * t / n, 2) if n else None for t, n in zip(totals.tolist(), count.tolist())]

    return {"bins": len(count), "count": [int(n) for n in count], "accuracy": percent(correct), "confidence": percent(confidence)}


def calibration_metrics(counts: CalibrationCounts, groups: dict[str, np.ndarray]) -> dict:
    """ECE overall and per shot group (masks over the classes), NLL and the reliability bins."""
    overall = [table.sum(axis=0) for table in (counts.count, counts.correct, counts.confidence)]
    per_group = {f"ece_{name}": expected_calibration_error(*(table[mask].sum(axis=0) for table in
                                                             (counts.count, counts.correct, counts.confidence)))
                 for name, mask in groups.items()}
    return {"ece": expected_calibration_error(*overall), "nll": counts.nll_sum / max(1, int(counts.count.sum())),
            **per_group, "reliability": reliability_bins(*overall)}


def metrics_from_counts(
    confusion: np.ndarray,
    top5_correct: int,
    class_counts: Sequence[int],
    shot_bounds: ShotBounds | str = STANDARD,
    calibration: CalibrationCounts | None = None,
) -> Metrics:
    """Metrics from a host-side K x K confusion matrix (rows true), the top-5 hit count and, when
    the logits were counted, their calibration counts.

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
    masks = bounds.groups(class_counts)
    groups = {name: group_mean(per_class, mask) for name, mask in masks.items()}
    return Metrics(
        top1=100.0 * float(np.trace(confusion)) / total,
        top5=100.0 * float(top5_correct) / total,
        per_class=per_class,
        many=groups["many"],
        medium=groups["medium"],
        few=groups["few"],
        num_samples=total,
        shot_bounds=shot_bounds_name(bounds),
        **(calibration_metrics(calibration, masks) if calibration is not None else {}),
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
        self.bins: Tensor | None = None  # K x ECE_BINS x 3 float64: samples, correct, summed confidence
        self.nll_sum: Tensor | None = None  # 0-dim float64

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """logits: N x K (any float dtype), labels: N class indices, on the same device."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be N x {self.num_classes}, got {tuple(logits.shape)}")
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
        batch_confusion = confusion_matrix(logits.argmax(dim=1), labels, self.num_classes)
        batch_top5 = top_k_correct(logits, labels, TOP_K)
        batch_bins, batch_nll = calibration_counts(logits, labels, self.num_classes)
        if self.confusion is None:
            self.confusion, self.top5_correct, self.bins, self.nll_sum = batch_confusion, batch_top5, batch_bins, batch_nll
        else:
            self.confusion = self.confusion + batch_confusion
            self.top5_correct = self.top5_correct + batch_top5
            self.bins, self.nll_sum = self.bins + batch_bins, self.nll_sum + batch_nll

    def reduce(self, sum_over_ranks, device: torch.device) -> None:
        """Replace the counts by their sum over ranks (`sum_over_ranks` sums a tensor in place);
        a rank that counted nothing contributes zeros."""
        if self.confusion is None:
            self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
            self.top5_correct = torch.zeros((), dtype=torch.int64, device=device)
            self.bins = torch.zeros(self.num_classes, ECE_BINS, 3, dtype=torch.float64, device=device)
            self.nll_sum = torch.zeros((), dtype=torch.float64, device=device)
        k = self.num_classes
        sums = sum_over_ranks(self._flat())  # one all-reduce for every count
        self.confusion, self.top5_correct = sums[: k * k].round().long().view(k, k), sums[k * k].round().long()
        self.bins, self.nll_sum = sums[k * k + 1 : -1].view(k, ECE_BINS, 3), sums[-1]

    def _flat(self) -> Tensor:
        """Every count in one float64 vector: confusion (K*K), top-5 hits, calibration bins (K*ECE_BINS*3),
        NLL sum. Counts below 2^53 are exact in float64."""
        return torch.cat([self.confusion.flatten().double(), self.top5_correct.double().view(1), self.bins.flatten(),
                          self.nll_sum.view(1)])

    def finish(self, class_counts: Sequence[int], shot_bounds: ShotBounds | str = STANDARD) -> Metrics:
        """The metrics of everything counted so far; `class_counts` are the training counts."""
        if self.confusion is None:
            raise ValueError("no batches were counted")
        k = self.num_classes
        values = self._flat().cpu().numpy()  # one transfer
        confusion = values[: k * k].reshape(k, k).round().astype(np.int64)
        bins = values[k * k + 1 : -1].reshape(k, ECE_BINS, 3)
        calibration = CalibrationCounts(bins[..., 0], bins[..., 1], bins[..., 2], float(values[-1]))
        return metrics_from_counts(confusion, int(round(values[k * k])), class_counts, shot_bounds, calibration)


def evaluate_logits(
    logits: Tensor, labels: Tensor, class_counts: Sequence[int], shot_bounds: ShotBounds | str = STANDARD
) -> Metrics:
    """Metrics of one batch holding the whole test set: logits N x K, labels N."""
    counter = ConfusionCounter(logits.shape[1])
    counter.update(logits, labels)
    return counter.finish(class_counts, shot_bounds)
