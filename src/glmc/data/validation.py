"""Validation sets, held out of the training images and never the test set (`data.validation`).

- `none`: the published benchmarks' protocol, no validation set (a dataset's own validation list or
  folder still serves `glmc eval --on val`).
- `held-out`: a validation set that training evaluates at every evaluation, and that `glmc tune`
  and the calibrations that fit something choose on:
  - in-memory long-tailed sets (CIFAR-LT, synthetic-lt) draw `data.val_per_class` images of every
    class (`balanced_hold_out`) from the official training images the long-tailed split leaves
    unused, so the set is disjoint from the training and test sets by construction; where a class
    has fewer unused images (the head class uses all of its own), the rest come out of its
    long-tailed training images, and the dataset card says how many each class lost;
  - image files use the dataset's own validation list (ImageNet-LT, Places-LT) or `DIR/val/`, and
    otherwise hold out `data.val_fraction` of each class's training images (`stratified_hold_out`).

Both draws use a fixed seed of their own, not the run's: every run with the same data settings
sees the same validation set, so runs of different seeds or hyper-parameters compare on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from glmc.errors import DataError

VALIDATIONS = ("none", "held-out")
VALIDATION_SEED = 1201  # the hold-outs' own seed (not train.seed)


@dataclass(frozen=True)
class HeldOut:
    """A long-tailed training set with its validation set held out: positions in the original training set."""

    train_indices: np.ndarray  # the long-tailed training set less the images taken for validation, in its order
    val_indices: np.ndarray  # class by class
    taken_from_training: tuple[int, ...]  # per class: validation images that came out of the long-tailed training set


def balanced_hold_out(labels: np.ndarray, train_indices: np.ndarray, per_class: int, num_classes: int) -> HeldOut:
    """`per_class` validation images of every class, from the images of `labels` (the original training set)
    that `train_indices` (the long-tailed split) does not use; a class short of them gives the rest from its
    own long-tailed training images, keeping at least one to train on."""
    labels, train_indices = np.asarray(labels), np.asarray(train_indices)
    rng = np.random.default_rng(VALIDATION_SEED)
    in_training = np.zeros(len(labels), dtype=bool)
    in_training[train_indices] = True
    val, taken, lost = [], set(), []
    for k in range(num_classes):
        unused = np.flatnonzero((labels == k) & ~in_training)
        chosen = rng.choice(unused, min(per_class, len(unused)), replace=False)
        short = per_class - len(chosen)
        if short:
            own = train_indices[labels[train_indices] == k]
            if short >= len(own):
                raise DataError(f"class {k} cannot give {per_class} validation images: it has {len(unused)} unused and "
                                f"{len(own)} training images (lower data.val_per_class)")
            from_training = rng.choice(own, short, replace=False)
            taken.update(from_training.tolist())
            chosen = np.concatenate([chosen, from_training])
        val.append(np.sort(chosen))
        lost.append(short)
    kept = np.asarray([i for i in train_indices.tolist() if i not in taken], dtype=np.int64)
    return HeldOut(kept, np.concatenate(val).astype(np.int64), tuple(lost))


def stratified_hold_out(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions (training, validation) of a stratified hold-out: `fraction` of each class's images, at least one
    of every class that has two or more, and never a class's last one."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(VALIDATION_SEED)
    val = []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        count = min(max(int(fraction * len(members)), 1), len(members) - 1)
        val.append(np.sort(rng.choice(members, count, replace=False)))
    val_positions = np.concatenate(val) if val else np.zeros(0, dtype=np.int64)
    kept = np.ones(len(labels), dtype=bool)
    kept[val_positions] = False
    return np.flatnonzero(kept), val_positions.astype(np.int64)


def validation_card(kind: str, labels: np.ndarray, num_classes: int, fingerprint: str,
                    taken_from_training: Sequence[int] | None = None, indices: np.ndarray | None = None) -> dict:
    """What the dataset card shows of a validation set: per-class counts, fingerprint, what training lost."""
    card = {"kind": kind, "class_counts": np.bincount(labels, minlength=num_classes).tolist(), "total": int(len(labels)),
            "fingerprint": fingerprint}
    if taken_from_training is not None:
        card["taken_from_training"] = list(taken_from_training)
    if indices is not None:
        card["indices"] = np.asarray(indices).tolist()  # into the official training set
    return card
