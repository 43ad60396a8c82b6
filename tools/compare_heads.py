"""Test metrics of a GLMC checkpoint through each of its two classifiers: fc (trained with L_CE on the
mixed batches, weight alpha) and fc_cb (the re-balanced one glmc predicts with, weight 1 - alpha).

    python tools/compare_heads.py RUN_DIR/checkpoint_last.pt [--data-root DIR] [--device cpu] [--on train]

A diagnostic for short schedules: alpha = 1 - (T / T_max)^2 gives fc_cb little weight until late in
training, so a run that is short, or stopped early, may predict better with fc.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from glmc.evaluation import evaluate_restored, restore_for_evaluation
from glmc.metrics import format_shots
from glmc.models.output import GLMCOutput


class ThroughFc(nn.Module):
    """The model with `fc`'s logits in the place of `fc_cb`'s, so evaluation predicts with fc."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> GLMCOutput:
        out = self.model(images)
        return out._replace(logits=out.logits_fc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data-root")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--on", choices=["test", "val", "train"], default="test", help="as glmc eval --on")
    args = parser.parse_args()
    restored = restore_for_evaluation(args.checkpoint, args.data_root, args.device)
    for name, model in (("fc_cb (glmc's prediction head)", restored.model), ("fc", ThroughFc(restored.model).eval())):
        metrics = evaluate_restored(restored, model=model, part=args.on)
        print(f"{name:<32} top1 {metrics.top1:6.2f}  {format_shots(metrics)}  ece {metrics.ece:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
