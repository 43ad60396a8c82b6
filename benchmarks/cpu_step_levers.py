"""The CPU training step's levers, each alone, against the default step, one after the other in this process.

    python benchmarks/cpu_step_levers.py PRESET STEPS WARMUP LEVER[,LEVER...]     (run from the repository root)

LEVER: `default` (fp32 weights under bf16 autocast, channels-last: glmc's step), `bf16-weights` (the model's
weights and buffers in bf16, no autocast: timing only, its SGD is not the real one), `compile` or `compile:MODE`
(torch.compile of the step model, inductor's CPU backend). Real CIFAR-10 from data/cifar10 when present, else
random images of the same shape. Prints ms per step; never asserts.
"""
import sys, time, copy, torch
from torch import nn
from glmc.config import build_config
from glmc.bench import dataset_or_stand_in, endless_batches
from glmc.engine import step_rng, train_step
from glmc.trainer import build_run
from glmc.models.output import GLMCOutput
from glmc.precision import channels_last
from glmc.provenance import measured_on

class PureBf16(nn.Module):
    def __init__(self, module):
        super().__init__(); self.module = module
    def forward(self, x):
        out = self.module(channels_last(x).to(torch.bfloat16))
        return GLMCOutput(*(None if f is None else f.float() for f in out))

def time_steps(run, model, steps, warmup):
    batches = endless_batches(run)
    def one():
        epoch, step, batch = next(batches)
        train_step(model, run.method, run.optimizer, batch, epoch, step_rng(0, epoch, step))
    for _ in range(warmup): one()
    t = time.perf_counter()
    for _ in range(steps): one()
    return 1000 * (time.perf_counter() - t) / steps

preset, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(measured_on(), flush=True)
which = sys.argv[4].split(",")
config = build_config(preset, {"data.data_root": "data/cifar10", "train.device": "cpu"})
dataset, _ = dataset_or_stand_in(config)
for lever in which:
    run = build_run(config, dataset)
    model = run.step_model
    if lever == "bf16-weights":
        run.model.to(torch.bfloat16)
        run.optimizer = torch.optim.SGD(run.model.parameters(), lr=1e-3, momentum=0.9, foreach=True)
        model = PureBf16(run.model)
    elif lever.startswith("compile"):
        mode = lever.split(":")[1] if ":" in lever else None
        model = torch.compile(run.step_model, mode=mode)
    ms = time_steps(run, model, steps, warmup)
    print(f"{preset} {lever}: {ms:.0f} ms/step", flush=True)
