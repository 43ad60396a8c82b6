"""What a bf16 evaluation changes, against fp32, on trained checkpoints: top-1, many / medium / few, and the time.

    python benchmarks/eval_precision.py CKPT [CKPT ...] --data-root DIR [--json]

Each checkpoint (or fp16 weights file) is evaluated on its test set twice, fp32 then bf16 autocast, one after
the other in this process (the first pass of each also warms the allocator: it is timed twice, the second kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from glmc.evaluation import evaluate_restored, restore_for_evaluation
from glmc.machine import machine_description
from glmc.provenance import git_commit

KEYS = ("top1", "many", "medium", "few", "ece")


def measure(path: str, data_root: str, precision: str) -> dict:
    restored = dataclasses.replace(restore_for_evaluation(path, data_root, "cpu"), precision=precision)
    evaluate_restored(restored)  # warm-up
    started = time.perf_counter()
    metrics = evaluate_restored(restored).to_json()
    return {"seconds": round(time.perf_counter() - started, 2), **{key: metrics[key] for key in KEYS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for path in args.checkpoints:
        fp32, bf16 = (measure(path, args.data_root, precision) for precision in ("fp32", "bf16"))
        rows.append({"checkpoint": path, "fp32": fp32, "bf16": bf16,
                     "top1_difference": round(bf16["top1"] - fp32["top1"], 4),
                     "speed_up": round(fp32["seconds"] / bf16["seconds"], 2)})
        if not args.json:
            print(f"{path}: fp32 top1 {fp32['top1']:.2f} in {fp32['seconds']:.1f} s, bf16 top1 {bf16['top1']:.2f} in "
                  f"{bf16['seconds']:.1f} s ({rows[-1]['speed_up']:.2f}x)", flush=True)
    if args.json:
        print(json.dumps({"rows": rows, "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "machine": machine_description(), "git_commit": git_commit()}, indent=1))


if __name__ == "__main__":
    main()
