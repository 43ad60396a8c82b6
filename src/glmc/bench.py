"""`glmc bench`: how fast a preset's training step runs, and where the time goes.

Runs a preset's real training step (its loader, then `glmc.engine.train_step`) on its real data
when present, otherwise on random images of the same shape and class counts. Reports
training samples per second (elements of the uniform batch, not augmented views), ms per
step and its split into data / forward / backward / optimiser, peak memory, and the
achieved FLOP rate (on CUDA also as a fraction of the device's dense bf16 peak).

The split needs the device synchronised as each phase ends, which the training loop never
does. On a device that queues work (CUDA) those waits stall a launch-bound step, so there the
headline figures come from a second window of as many steps run as the training loop runs
them, synchronised only at its two ends; on the CPU, where nothing is queued, one window
serves both.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from glmc.config import Config
from glmc.data.datasets import Dataset, create_dataset
from glmc.data.in_memory import InMemoryDataset
from glmc.data.longtail import exponential_profile
from glmc.engine import step_rng, train_step
from glmc.errors import DataError
from glmc.machine import OtherWork, machine_description, slowed_by_others
from glmc.provenance import device_name, git_commit
from glmc.trainer import Run, build_run

PHASES = ("data", "forward", "backward", "optimizer")

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device-name fragment.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "RTX 4090": 165e12}

# Shapes for random stand-in data: dataset -> (classes, n_max, image side)
STAND_IN_SHAPES = {"cifar10-lt": (10, 5000, 32), "cifar100-lt": (100, 500, 32)}


@dataclass
class BenchResult:
    preset: str
    device: str
    data: str  # "real" or "random (same shape)"
    backbone: str
    method: str
    precision: str  # of the training forward, resolved
    batch_size: int
    steps_per_epoch: int
    steps: int
    images_per_s: float
    ms_per_step: float  # as the training loop runs a step: no synchronisation between phases
    phase_ms: dict[str, float]
    phase_split_ms_per_step: float  # the split's own total, the device synchronised after every phase
    peak_memory_mb: float
    timed_window: tuple[float, float]  # Unix times of the timed steps' start and end: did benches run side by side?
    other_cpu_share: float | None  # of the CPU time while timed, what went to other work (glmc.machine.OtherWork)
    flops_per_step: float
    achieved_tflops: float
    bf16_peak_fraction: float | None
    threads: int
    torch: str
    machine: str
    git_commit: str | None

    def to_json(self) -> dict:
        return {key: value for key, value in self.__dict__.items()}

    def render(self) -> str:
        phases = "  ".join(f"{name} {self.phase_ms[name]:.1f} ms "
                           f"({100 * self.phase_ms[name] / self.phase_split_ms_per_step:.0f}%)" for name in PHASES)
        synchronised = (f" (synchronised after each phase: {self.phase_split_ms_per_step:.1f} ms/step)"
                        if self.phase_split_ms_per_step != self.ms_per_step else "")  # one window on the CPU
        peak = f", {100 * self.bf16_peak_fraction:.1f}% of bf16 peak" if self.bf16_peak_fraction is not None else ""
        return "\n".join([
            f"preset       {self.preset} ({self.backbone}, {self.method}, batch {self.batch_size}) on {self.device}, {self.precision}",
            f"data         {self.data}",
            f"throughput   {self.images_per_s:.1f} images/s, {self.ms_per_step:.1f} ms/step over {self.steps} steps",
            f"split        {phases}{synchronised}",
            f"compute      {self.flops_per_step / 1e9:.2f} GFLOP/step, {self.achieved_tflops:.3f} TFLOP/s{peak}",
            f"peak memory  {self.peak_memory_mb:.0f} MB",
        ])


def warn_if_shared(share: float | None) -> None:
    """Say on stderr when other work took a noticeable share of the CPUs during the timed steps."""
    if slowed_by_others(share):
        print(f"glmc: warning: other work took {100 * share:.0f}% of the CPU time while the steps were "
              "timed, so these figures are lower than the machine gives when it is idle", file=sys.stderr)


def run_bench(preset: str, config: Config, steps: int, warmup: int) -> BenchResult:
    dataset, source = dataset_or_stand_in(config)
    run = build_run(config, dataset)
    batches = endless_batches(run)
    for _ in range(warmup):  # allocator, cudnn autotuning, compilation
        timed_step(run, batches)
    flops = count_flops(run, batches)
    reset_peak_memory(run.device)
    other_work = OtherWork.start()
    phase_seconds, window = phase_split(run, batches, steps)
    split_seconds = sum(phase_seconds.values())
    step_seconds, window = free_running(run, batches, steps) if queues_work(run.device) else (split_seconds, window)
    other_share = other_work.share()
    warn_if_shared(other_share)
    achieved = flops / step_seconds
    return BenchResult(
        preset=preset,
        device=device_name(run.device),
        data=source,
        backbone=config.model.backbone,
        method=config.method.name,
        precision=run.precision,
        batch_size=config.train.batch_size,
        steps_per_epoch=len(run.loader),
        steps=steps,
        images_per_s=config.train.batch_size / step_seconds,
        ms_per_step=1000 * step_seconds,
        phase_ms={name: 1000 * seconds for name, seconds in phase_seconds.items()},
        phase_split_ms_per_step=1000 * split_seconds,
        peak_memory_mb=peak_memory_mb(run.device),
        timed_window=window,
        other_cpu_share=other_share,
        flops_per_step=flops,
        achieved_tflops=achieved / 1e12,
        bf16_peak_fraction=bf16_fraction(run.device, achieved),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        machine=machine_description(),
        git_commit=git_commit(),
    )


def dataset_or_stand_in(config: Config) -> tuple[Dataset, str]:
    try:
        return create_dataset(config.data), "real"
    except DataError as missing:
        if config.data.dataset not in STAND_IN_SHAPES:
            raise
        print(f"glmc: {missing}; benchmarking on random images of the same shape", file=sys.stderr)
        return random_stand_in(config), "random (same shape)"


def random_stand_in(config: Config) -> InMemoryDataset:
    classes, n_max, side = STAND_IN_SHAPES[config.data.dataset]
    counts = exponential_profile(n_max, classes, config.data.imbalance_factor)
    labels = np.repeat(np.arange(classes), counts)
    rng = np.random.default_rng(0)
    return InMemoryDataset(
        name=config.data.dataset,
        split="random stand-in",
        imbalance_factor=config.data.imbalance_factor,
        class_names=[f"class {k}" for k in range(classes)],
        train_images=rng.integers(0, 256, (len(labels), 3, side, side), dtype=np.uint8),
        train_labels=labels,
        train_indices=np.arange(len(labels)),
        test_images=rng.integers(0, 256, (classes, 3, side, side), dtype=np.uint8),
        test_labels=np.arange(classes),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def endless_batches(run: Run):
    epoch = 0
    while True:
        for step, batch in enumerate(run.loader.epoch(epoch)):
            yield epoch, step, batch
        epoch += 1


def phase_split(run: Run, batches, steps: int) -> tuple[dict[str, float], tuple[float, float]]:
    """Mean seconds per phase over `steps` synchronised steps, and the window's Unix start and end."""
    totals = dict.fromkeys(PHASES, 0.0)
    start = time.time()
    for _ in range(steps):
        for name, seconds in timed_step(run, batches).items():
            totals[name] += seconds
    return {name: total / steps for name, total in totals.items()}, (start, time.time())


def free_running(run: Run, batches, steps: int) -> tuple[float, tuple[float, float]]:
    """Mean seconds per step over `steps` real steps run back to back as `glmc train` runs them, the device
    synchronised only at the window's two ends; and the window's Unix start and end."""
    synchronize(run.device)
    start, mark = time.time(), time.perf_counter()
    for _ in range(steps):
        epoch, step, batch = next(batches)
        train_step(run.step_model, run.method, run.optimizer, batch, epoch, step_rng(run.config.train.seed, epoch, step))
    synchronize(run.device)
    return (time.perf_counter() - mark) / steps, (start, time.time())


def timed_step(run: Run, batches) -> dict[str, float]:
    """One real training step (`glmc.engine.train_step`), the device synchronised between phases so each is timed alone."""
    seconds = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        synchronize(run.device)
        now = time.perf_counter()
        seconds[name] = now - mark
        mark = now

    epoch, step, batch = next(batches)
    lap("data")
    train_step(run.step_model, run.method, run.optimizer, batch, epoch, step_rng(run.config.train.seed, epoch, step), lap=lap)
    return seconds


def count_flops(run: Run, batches) -> float:
    """FLOPs of one training step: its forward and backward passes (SAM's second pass included). Counted on the
    model as written, which computes what its compiled form does, so that the counting never meets compiled
    kernels or CUDA graphs."""
    epoch, step, batch = next(batches)
    model = getattr(run.step_model, "_orig_mod", run.step_model)  # torch.compile's wrapper keeps the original there
    with FlopCounterMode(display=False) as counter:
        train_step(model, run.method, run.optimizer, batch, epoch, step_rng(run.config.train.seed, epoch, step))
    return float(counter.get_total_flops())


def queues_work(device: torch.device) -> bool:
    """Whether the host only queues the device's work, so that waiting for it (`synchronize`) can stall a step."""
    return device.type == "cuda"


def synchronize(device: torch.device) -> None:
    if queues_work(device):
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS (KiB on Linux)


def bf16_fraction(device: torch.device, flops_per_s: float) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((value for fragment, value in BF16_PEAK.items() if fragment in name), None)
    return None if peak is None else flops_per_s / peak


# ---------------------------------------------------------------- the input pipeline of image files

STAND_IN_PHOTO = (500, 375)  # width, height: about the mean ImageNet training image
STAND_IN_FILES = 256


@dataclass
class InputBenchResult:
    preset: str
    data: str  # the data root, or "generated JPEGs (...)"
    image_size: int
    workers: int
    steps: int
    batch_size: int
    images_per_s: float  # source images decoded and cropped twice, per second, by all workers
    images_per_s_per_worker: float  # the same in one process (workers=0)
    machine: str
    git_commit: str | None

    def to_json(self) -> dict:
        return dict(self.__dict__)

    def render(self) -> str:
        return "\n".join([
            f"preset       {self.preset}: decode + 2 random resized crops of {self.image_size} + flip, per image",
            f"data         {self.data}",
            f"throughput   {self.images_per_s:.1f} images/s with {self.workers} workers "
            f"({2 * self.images_per_s:.1f} crops/s), {self.steps} steps of 2 x {self.batch_size} images",
            f"one worker   {self.images_per_s_per_worker:.1f} images/s",
            f"machine      {self.machine}",
        ])


def write_photo_stand_ins(folder, files: int = STAND_IN_FILES, classes: int = 4) -> None:
    """JPEGs of ImageNet's typical size and file size (~100 KB at quality 90): smooth random
    colour fields with sensor-like noise, in the folder layout (train/ and test/)."""
    rng = np.random.default_rng(0)
    for part, count in (("train", files), ("test", classes)):
        for index in range(count):
            label = index % classes
            target = Path(folder) / part / f"class{label}"
            target.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            smooth = np.asarray(Image.fromarray(coarse).resize(STAND_IN_PHOTO, Image.Resampling.BICUBIC), dtype=np.float32)
            noisy = np.clip(smooth + rng.normal(0, 18, smooth.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(target / f"{index:05d}.jpg", quality=90)


def run_input_bench(preset: str, config: Config, steps: int, warmup: int) -> InputBenchResult:
    """Images per second through the workers' half of the image-file loader (no device work)."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            dataset, source = create_dataset(config.data), config.data.data_root
        except DataError as missing:
            print(f"glmc: {missing}; benchmarking on generated JPEGs", file=sys.stderr)
            write_photo_stand_ins(scratch)
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset="folder", data_root=scratch))
            dataset = create_dataset(config.data)
            source = f"generated JPEGs ({STAND_IN_PHOTO[0]}x{STAND_IN_PHOTO[1]}, quality 90, {STAND_IN_FILES} files)"
        if not dataset.from_files:
            raise DataError(f"--input-only times the image-file loader; {dataset.name} is held in memory")
        loader = dataset.train_loader(config.data, config.train.batch_size, torch.device("cpu"),
                                      resample_weighting=config.train.resample_weighting, seed=config.train.seed)

        def rate(workers: int, timed_steps: int) -> float:
            return loader.decoding_rate(workers, timed_steps, warmup)

        parallel = rate(config.data.workers, steps)
        single = rate(0, max(1, steps // 4))
    return InputBenchResult(
        preset=preset, data=source, image_size=config.data.image_size, workers=config.data.workers, steps=steps,
        batch_size=config.train.batch_size, images_per_s=parallel, images_per_s_per_worker=single,
        machine=machine_description(),
        git_commit=git_commit(),
    )
