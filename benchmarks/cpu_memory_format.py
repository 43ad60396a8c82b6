"""Contiguous (NCHW) or channels-last memory for a preset's training step on this CPU, in fp32 and bf16.

    python benchmarks/cpu_memory_format.py --data-root DIR [--preset cifar10-lt-if100] [--steps 30] [--rounds 3]
                                           [--precisions fp32 bf16]

Times the real training step (glmc's loader, method, backward and SGD) of a preset with the
model's weights and its inputs in one memory format, for each precision, alternating the
variants round by round in this one process, and prints the median samples per second of
each. glmc uses channels-last on every device; this is the measurement behind that choice.
On a CPU without native bf16 instructions bf16 is emulated and many times slower: time fp32
alone there (`--precisions fp32`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

from glmc.config import build_config
from glmc.engine import step_rng, train_step
from glmc.models.output import GLMCOutput
from glmc.precision import autocast
from glmc.provenance import measured_on
from glmc.trainer import build_run


class InFormat(nn.Module):
    """The model's forward with its input in `memory_format` and the output in fp32 (None for heads not computed),
    like glmc's MixedPrecision."""

    def __init__(self, module: nn.Module, memory_format: torch.memory_format, precision: str) -> None:
        super().__init__()
        self.module, self.memory_format, self.precision = module, memory_format, precision

    def forward(self, x):
        with autocast(self.precision, x.device):
            out = self.module(x.contiguous(memory_format=self.memory_format))
        return GLMCOutput(*(None if field is None else field.float() for field in out))


def samples_per_second(preset: str, overrides: dict, memory_format: torch.memory_format, precision: str,
                       steps: int, warmup: int) -> float:
    run = build_run(build_config(preset, {**overrides, "train.precision": precision}))
    run.model.to(memory_format=memory_format)
    model = InFormat(run.model, memory_format, precision)
    batches = ((epoch, step, batch) for epoch in range(10**6) for step, batch in enumerate(run.loader.epoch(epoch)))
    seed = run.config.train.seed

    def one_step():
        epoch, step, batch = next(batches)
        return train_step(model, run.method, run.optimizer, batch, epoch, step_rng(seed, epoch, step))

    for _ in range(warmup):
        one_step()
    started = time.perf_counter()
    for _ in range(steps):
        parts = one_step()
    parts["loss"].item()
    return run.config.train.batch_size * steps / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cifar10-lt-if100")
    parser.add_argument("--data-root", default=os.environ.get("GLMC_CIFAR10_ROOT") or os.environ.get("GLMC_DATA_ROOT", "data"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    args = parser.parse_args()
    overrides = {"train.device": "cpu", "data.data_root": args.data_root}
    variants = [(name, fmt, precision) for precision in args.precisions
                for name, fmt in (("contiguous", torch.contiguous_format), ("channels-last", torch.channels_last))]
    rates: dict[tuple[str, str], list[float]] = {(name, precision): [] for name, _, precision in variants}
    for _ in range(args.rounds):
        for name, fmt, precision in variants:
            rates[name, precision].append(samples_per_second(args.preset, overrides, fmt, precision, args.steps, args.warmup))
    print(measured_on())
    print(f"{args.preset}, {torch.get_num_threads()} threads, median of {args.rounds} rounds of {args.steps} steps "
          f"(samples/s; rounds in brackets)")
    for (name, precision), values in rates.items():
        print(f"  {precision}  {name:<13}  {statistics.median(values):7.1f}  {[round(v, 1) for v in values]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
