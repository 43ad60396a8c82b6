"""Where a preset's real training step spends its time: torch.profiler over two steps, the top operators by self CPU time.

    python benchmarks/cpu_profile_step.py PRESET [STEPS] [KEY=VALUE ...]     (run from the repository root)

Times STEPS steps first (default 3, after 2 untimed), then profiles 2 more. Real CIFAR-10 from data/cifar10
when present, else random images of the same shape.
"""
import sys, time, torch
from torch.profiler import profile, ProfilerActivity
from glmc.config import build_config
from glmc.bench import dataset_or_stand_in, endless_batches, timed_step
from glmc.provenance import measured_on
from glmc.trainer import build_run

print(measured_on(), flush=True)
preset = sys.argv[1]; steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
sets = dict(a.split("=", 1) for a in sys.argv[3:])
config = build_config(preset, {"data.data_root": "data/cifar10", "train.device": "cpu", **sets})
dataset, _ = dataset_or_stand_in(config)
run = build_run(config, dataset)
batches = endless_batches(run)
for _ in range(2): timed_step(run, batches)
t = time.perf_counter()
for _ in range(steps): timed_step(run, batches)
print(f"{preset} {sets}: {1000*(time.perf_counter()-t)/steps:.0f} ms/step", flush=True)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(2): timed_step(run, batches)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=45))
