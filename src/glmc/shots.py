"""Many / medium / few-shot groups of classes by their training count.

Defined once here, with inclusive bounds, for dataset cards and metrics alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ShotBounds:
    """A class is many-shot if count >= many_min, few-shot if count <= few_max, else medium."""

    many_min: int
    few_max: int

    def groups(self, class_counts: Sequence[int]) -> dict[str, np.ndarray]:
        """Boolean masks over the classes, keys `many`, `medium`, `few`."""
        counts = np.asarray(class_counts)
        many = counts >= self.many_min
        few = counts <= self.few_max
        return {"many": many, "medium": ~many & ~few, "few": few}

    def sizes(self, class_counts: Sequence[int]) -> dict[str, int]:
        return {name: int(mask.sum()) for name, mask in self.groups(class_counts).items()}


# The field's convention (Liu et al. 2019): many > 100, medium 20..100, few < 20.
STANDARD = ShotBounds(many_min=101, few_max=19)
# The GLMC authors' trainer: many > 100, medium 21..100, few <= 20.
AUTHORS = ShotBounds(many_min=101, few_max=20)

SHOT_BOUNDS = {"standard": STANDARD, "authors": AUTHORS}
