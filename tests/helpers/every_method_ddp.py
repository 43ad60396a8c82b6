"""Run under torchrun (2 CPU processes, gloo): three DDP training steps of every registered method.

Each rank builds the method's run as `glmc train` does (glmc.trainer.build_run, so the heads
and streams follow the method's needs) and steps it; DDP raises if a parameter it watches gets
no gradient. Rank 0 then prints one JSON line per method: the spread of a weight checksum over
ranks (DDP keeps the replicas equal) and how far the weights moved.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from glmc import distributed
from glmc.config import build_config
from glmc.engine import step_rng, train_step
from glmc.methods import METHODS
from glmc.trainer import build_run


def checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def main() -> int:
    shard, device = distributed.start("cpu")
    for name in METHODS.names():
        classifier = getattr(METHODS.get(name), "required_classifier", None) or "linear"
        config = build_config("quickstart", {"method.name": name, "model.classifier": classifier, "train.device": "cpu",
                                             "train.batch_size": "16", "train.precision": "fp32"})
        run = build_run(config, shard=shard, device=device)
        start = checksum(run.model)
        for step, batch in zip(range(3), run.loader.epoch(0)):
            train_step(run.step_model, run.method, run.optimizer, batch, 0, step_rng(0, 0, step))
        sums = [None] * shard.world
        dist.all_gather_object(sums, checksum(run.model))
        if shard.is_main:
            print(json.dumps({"method": name, "spread": max(sums) - min(sums), "moved": abs(sums[0] - start)}), flush=True)
    distributed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
