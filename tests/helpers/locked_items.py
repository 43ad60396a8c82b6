"""A dataset whose items need a module-level lock: what a worker inherits from its parent decides whether it can read them."""

from __future__ import annotations

import threading

import numpy as np
from torch.utils.data import Dataset

from glmc.data.files import Decoded

HELD = threading.Lock()


class LockedItems(Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> Decoded:
        with HELD:
            return Decoded(index, np.zeros((1, 2, 2, 3), np.uint8))
