"""Optional TensorBoard logging: the scalars of every metrics.jsonl record, by global step.

The `tensorboard` package is an optional extra (`pip install "glmc[tensorboard]"`); asking
for TensorBoard without it is a one-line `GlmcError` before training starts. The writer
opens lazily on the first record, so a run that fails its input checks writes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from glmc.errors import GlmcError

ACCURACY_KEYS = ("top1", "top5", "many", "medium", "few")  # percent; None for an empty shot group
INSTALL_HINT = 'TensorBoard logging needs the tensorboard package: pip install "glmc[tensorboard]" (or pip install tensorboard)'


def summary_writer_class() -> type:
    """`torch.utils.tensorboard.SummaryWriter`, or a `GlmcError` saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises ImportError when the tensorboard package is missing
        raise GlmcError(INSTALL_HINT) from None
    return SummaryWriter


def record_scalars(record: dict) -> dict[str, float]:
    """The scalars of one metrics.jsonl record, under TensorBoard tags grouped by kind."""
    scalars = {f"accuracy/{key}": record[key] for key in ACCURACY_KEYS if record.get(key) is not None}
    val = record.get("val") or {}
    scalars |= {f"validation/{key}": val[key] for key in (*ACCURACY_KEYS, "balanced") if val.get(key) is not None}
    scalars |= {f"loss/{name}": value for name, value in record.get("losses", {}).items()}
    scalars["lr"] = record["lr"]
    scalars["seconds_per_epoch"] = record["seconds"]
    if record.get("other_cpu_share") is not None:  # what other work took of the CPU time meanwhile, where measured
        scalars["other_cpu_share"] = record["other_cpu_share"]
    return scalars


class TensorBoardLog:
    """Writes each evaluation record's scalars to `folder`, at the record's global step.

    Built before training (so a missing package fails early); the event file opens on the
    first record. A fresh run purges events a replaced run left in `folder`; a resumed run
    purges those logged after its checkpoint (TensorBoard's `purge_step`).
    """

    def __init__(self, folder: str | os.PathLike, resume: bool = False) -> None:
        self.writer_class = summary_writer_class()
        self.folder = Path(folder)
        self.resume = resume
        self.writer = None

    def log_all(self, records: list[dict]) -> None:
        """Log `records` (those an epoch added to metrics.jsonl), then flush."""
        for record in records:
            self.log(record)
        if self.writer is not None:
            self.writer.flush()  # once per epoch: a crash loses nothing already in metrics.jsonl

    def log(self, record: dict) -> None:
        step = record["global_step"]
        if self.writer is None:
            self.writer = self.writer_class(log_dir=str(self.folder), purge_step=step if self.resume else 0)
        for tag, value in record_scalars(record).items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
