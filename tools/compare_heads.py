"""Test metrics of a GLMC checkpoint through each of its two classifiers: fc (trained with L_CE on the
mixed batches, weight alpha) and fc_cb (the re-balanced one glmc predicts with, weight 1 - alpha).

    python tools/compare_heads.py RUN_DIR/checkpoint_last.pt [--data-root DIR] [--device cpu] [--on train]

A diagnostic for short schedules: alpha = 1 - (T / T_max)^2 gives fc_cb little weight until late in
training, so a run that is short, or stopped early, may predict better with fc.
"""

from __future__ import annotations

import argparse
import copy
import sys

from torch import nn

from glmc.evaluation import evaluate_heads, restore_for_evaluation
from glmc.metrics import format_shots
from glmc.models.heads import glmc_heads


def through_fc(model: nn.Module) -> nn.Module:
    """A copy of the model that predicts with `fc`: fc in fc_cb's place, its logits unscaled (fc never had
    LDAM's scale). Its encoder is the model's, so both score one pass of the images through it."""
    copied = copy.deepcopy(model)
    heads = glmc_heads(copied)
    heads.fc_cb, heads.logit_scale = heads.fc, 1.0
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data-root")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--on", choices=["test", "val", "train"], default="test", help="as glmc eval --on")
    args = parser.parse_args(argv)
    restored = restore_for_evaluation(args.checkpoint, args.data_root, args.device)
    names = ("fc_cb (glmc's prediction head)", "fc")
    for name, metrics in zip(names, evaluate_heads(restored, [restored.model, through_fc(restored.model)], part=args.on)):
        print(f"{name:<32} top1 {metrics.top1:6.2f}  {format_shots(metrics)}  ece {metrics.ece:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
