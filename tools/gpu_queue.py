"""The GPU campaign (tools/README.md): a whole GPU session's work from a bare machine, resumable across sessions.

Here, on the development machine, before asking for the GPU:

    python tools/gpu_queue.py prepare     # gpu/: CIFAR-10 (the npz, cut to the images CIFAR-10-LT presets use),
                                            #   the wheels the GPU image lacks, the commit

On the GPU machine (the device tool's run; each call's carry as `prepare` printed it):

    python3 tools/gpu_queue.py loan       # the three below in one call (timeout_s 600): start, the queue's
                                            #   LOAN_CALL_QUEUE_MINUTES, status, pack
    python3 tools/gpu_queue.py start      # materialise CIFAR-10, start the queue in the background (setsid)
    python3 tools/gpu_queue.py status     # which item runs, its last lines, what is finished
    python3 tools/gpu_queue.py pack [K]   # stop the queue (its runs save); results and partial runs as parts
                                            #   of 15 MiB under $OUT, PARTS_PER_CALL a call; `pack 2`... the rest

Back here, with the files the calls returned:

    python tools/gpu_queue.py unpack FILES_AT...  # -> results/; commit them (the next session skips them)
    python tools/gpu_queue.py restore             # the session brought nothing back: put parked weights back

On the GPU machine everything the queue makes stays under the git-ignored gpu/ (results in gpu/results/, FRESH,
which `pack` brings back as results/gpu-campaign/): the device keeps ignored paths between calls, while the
checkout's own files there are a copy of this one's.

When the checkout and gpu/ together are over the device's 64 MiB, `prepare` parks the committed
fp16 weights under results/ (removes them from the working tree; git keeps them): the GPU machine
skips a finished item on its summary.json and never reads them. `unpack` and `restore` put them back.

The queue (`queue()`) is fitted to a loan of about LOAN_MINUTES of GPU work: the two CIFAR benches
first, the compiled step where the authors' run would not fit in a loan, the authors' IF100 row
(skipped once the CPU campaign has committed it), SHARING_JOBS benches at once where two runs
would not fit in a loan (the rows of several runs then use `glmc reproduce --jobs` if the runs went
SHARING_GAIN faster together), then the rest of the campaign in order, the authors' wide ResNet-32
on the standard split among them. Every item is skipped when its results are already committed under
results/, so each session advances it. Training goes through `glmc reproduce` (tables in
src/glmc/tables.yaml and tools/gpu_tables.yaml), so an item interrupted within a session resumes from
its checkpoint when `start` is called again. What comes back of a finished run is compact: summaries,
metrics, configs, tables, logs and fp16 safetensors weights with their fp32 evaluation
(`weights-eval.json`), never optimiser state.

A run a loan does not finish comes back whole with `pack` (its records and last checkpoint, in at most
MAX_RETURN_CALLS calls of parts), `unpack` puts it in gpu/campaign/, and it continues exactly on the next
loan. Where the partial runs do not fit one carry beside the rest of gpu/ and the checkout (a wide
ResNet-32's checkpoint with its optimiser state is 60 MB), `prepare` copies their bytes into parts,
gpu-more-1/..., that the loan's next calls carry, one each, and `start` waits for all of them, checks
each file's SHA-256 and puts the runs together. `prepare` prints every call's carry.

`GLMC_QUEUE_SMOKE=1` runs the same queue on the CPU (one-epoch ResNet-8 runs, 4-step benches,
small images) to check the script itself without a GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "gpu"  # git-ignored; carried to the GPU machine
sys.path[:0] = [str(ROOT / "src"), str(WORK / "site")]  # glmc from the checkout, no install; the carried wheels
DATA = WORK / "data"  # cifar-10-batches-py/ after `start`
CAMPAIGN = WORK / "campaign"  # reproduce outputs, one folder per table
LOGS = WORK / "logs"
SMOKE = os.environ.get("GLMC_QUEUE_SMOKE") == "1"
RESULTS = (WORK / "smoke-results") if SMOKE else (ROOT / "results" / "gpu-campaign")  # a smoke check commits nothing
# What the GPU machine adds to RESULTS in a loan, under the git-ignored gpu/: the device keeps ignored paths between
# calls, while the checkout's own files there are a copy of this one's. `pack` brings FRESH back as RESULTS.
FRESH = RESULTS if SMOKE else WORK / "results"
NPZ = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
WHEELS = ["kornia", "kornia_rs"]  # what the GPU image lacks (device tool's KINDS.md lists the rest as present)
COLLECTED = WORK / "collected.txt"  # what this machine added under FRESH: what `pack` brings back
PART_BYTES = 15 * 2**20
PARTS_PER_CALL = 4  # 60 MiB: a call brings back at most 8 files and 64 MiB together
MAX_RETURN_CALLS = 3  # of `pack`: a partial run that would need more stays behind and starts again on the next loan
CARRY_LIMIT = 64 * 2**20  # what the device tool carries: the checkout and the carried folders together
CARRY_MARGIN = 2**20
OVERFLOW = WORK / "overflow.json"  # the partial runs' files that travel in calls of their own, and in which
OVERFLOW_PREFIX = "gpu-more-"  # ROOT/gpu-more-1/part, ...: git-ignored, each carried by one call
STOP_SECONDS = 120  # what `pack` waits for the queue's training to save and exit


def glmc(*args: str) -> list[str]:
    return [sys.executable, "-m", "glmc", *args]


def device() -> str:
    return "cpu" if SMOKE else "cuda"


LOAN_MINUTES = 8.0  # of GPU work one loan gives (15 minutes of device time, start-ups and calls included)
# What `loan` lets the queue work before it packs: its call (at most 10 minutes) also starts the queue (materialising
# CIFAR-10, installing the wheels), stops it (its runs save) and packs, so about two minutes are kept for those.
LOAN_CALL_QUEUE_MINUTES = 7.5
POLL_SECONDS = 5.0  # how often `loan` looks whether the queue has ended


@dataclass(frozen=True)
class Item:
    """One step of the campaign: its commands, made when it starts (they may read what earlier items measured), run in
    order; done when every `marks` path exists under RESULTS (or FRESH), or when another machine finished it
    (`elsewhere`)."""

    name: str
    commands: Callable[[], list[list[str]]]
    marks: list[str] = field(default_factory=list)  # relative to RESULTS and FRESH
    elsewhere: list[str] = field(default_factory=list)  # relative to results/: any one of them means done

    def done(self) -> bool:
        if not self.marks and not self.elsewhere:  # an item that decides for itself whether anything is left to do
            return self.commands() == []
        return bool(self.marks) and all(result_path(mark).exists() for mark in self.marks) or any(
            (ROOT / "results" / path).exists() for path in self.elsewhere)


def result_path(relative: str) -> Path:
    """A result as this loan made it (FRESH), else as committed (RESULTS)."""
    fresh = FRESH / relative
    return fresh if fresh.exists() else RESULTS / relative


# the smoke check on a CPU: one epoch of the small ResNet-8 per run, small images for the large-image items
SMOKE_SETS = ["train.epochs=1", "model.backbone=resnet8"] if SMOKE else []
SMOKE_RUN = [arg for value in SMOKE_SETS for arg in ("--set", value)]
SMOKE_LARGE = ["train.batch_size=8", "data.image_size=64", "data.resize=72", "model.backbone=resnet10"] if SMOKE else []


def reproduce(table: str, *rows: str, seeds: int = 1, tables: str | None = None, compile_if_faster: str = "",
              share_if_faster: str = "") -> list[str]:
    """`glmc reproduce` of some rows; with `compile_if_faster` (a preset), `--compile --compile-mode MODE` where this
    loan's benches found that preset's step compiled in MODE the fastest (the same loss: tests/test_bench.py checks
    it); with `share_if_faster` (a preset), `--jobs SHARING_JOBS` where runs of it sharing the GPU were measured faster
    together (`jobs_for`)."""
    extra = SMOKE_RUN
    only = [arg for row in rows for arg in ("--only", row)]
    source = ["--tables", str(ROOT / "tools" / tables)] if tables else []
    mode = fastest_compile(compile_if_faster) if compile_if_faster else None
    compiled = ["--compile", "--compile-mode", mode] if mode else []
    jobs = ["--jobs", str(jobs_for(share_if_faster))] if share_if_faster else []
    return glmc("reproduce", table, *source, *only, "--seeds", str(seeds), "--output", str(CAMPAIGN / table),
                "--data-root", str(DATA), "--device", device(), "--export", "--quiet", *compiled, *jobs, *extra)


def bench_result(name: str) -> dict | None:
    try:
        return json.loads(result_path(f"bench/{name}").read_text())
    except (OSError, ValueError):
        return None


def run_minutes(bench: dict, epochs: int = 200) -> float:
    """The minutes of training steps a run of `epochs` takes at a bench's speed."""
    return bench["ms_per_step"] * bench["steps_per_epoch"] * epochs / 60000


# torch.compile's modes the queue benches where a run does not fit in a loan, by the name of their bench: inductor's
# kernels, and those replayed as CUDA graphs (what removes a launch-bound step's per-kernel host cost)
COMPILE_BENCHES = {"default": "compiled", "reduce-overhead": "cudagraphs"}


def compile_bench_name(preset: str, mode: str) -> str:
    return f"gpu-{preset}-{COMPILE_BENCHES[mode]}.json"


def bench_ms(name: str) -> float | None:
    """A bench's ms per step; None where it was not run, or ran and failed (`bench(..., may_fail=True)`)."""
    result = bench_result(name)
    return result.get("ms_per_step") if result else None


def fastest_compile(preset: str) -> str | None:
    """The torch.compile mode whose bench of `preset` beat the plain step and every other mode benched; None where
    none did, or none was measured."""
    plain = bench_ms(f"gpu-{preset}.json")
    timed = {mode: bench_ms(compile_bench_name(preset, mode)) for mode in COMPILE_BENCHES}
    faster = {mode: ms for mode, ms in timed.items() if ms is not None and plain is not None and ms < plain}
    return min(faster, key=faster.get) if faster else None


def compile_sets(mode: str | None) -> list[str]:
    return ["train.compile=true", f"train.compile_mode={mode}"] if mode else []


def compile_bench_if_needed(preset: str) -> list[list[str]]:
    """The compiled benches of `preset` not yet run, one per COMPILE_BENCHES mode, only where its plain bench says a
    200-epoch run does not fit in one loan. A mode that fails (CUDA graphs can) is recorded as failed, not used."""
    plain = bench_result(f"gpu-{preset}.json")
    if plain is None or run_minutes(plain) <= LOAN_MINUTES:
        return []
    return [bench(preset, compile_bench_name(preset, mode), *compile_sets(mode), may_fail=True)
            for mode in COMPILE_BENCHES if bench_result(compile_bench_name(preset, mode)) is None]


def bench(preset: str, name: str, *sets: str, data_root: str = str(DATA), steps: int = 50,
          may_fail: bool = False) -> list[str]:
    """The shell command of one bench; with `may_fail`, a failing bench writes {"failed": true} and the queue goes
    on."""
    line = bench_line(preset, name, *sets, data_root=data_root, steps=steps)
    failed = json.dumps({"preset": preset, "sets": list(sets), "failed": True})
    target = bench_target(name)
    return ["sh", "-c", f"{line} || {{ rm -f {target}.tmp; echo '{failed}' > {target}; }}" if may_fail else line]


def bench_target(name: str) -> Path:
    """Where the bench `name` writes its JSON on the machine that runs the queue."""
    return FRESH / "bench" / name


def bench_line(preset: str, name: str, *sets: str, data_root: str = str(DATA), steps: int = 50) -> str:
    counts = ["--steps", "4", "--warmup", "1"] if SMOKE else ["--steps", str(steps), "--warmup", "10"]
    extra = [arg for value in sets for arg in ("--set", value)]
    target = bench_target(name)  # written whole or not at all: an item is done when its files exist
    return " ".join(glmc("bench", "--preset", preset, "--data-root", data_root, "--device", device(), *counts, *extra,
                         "--json")) + f" > {target}.tmp && mv {target}.tmp {target}"


PRECISIONS = ("fp32", "bf16")  # LDAM-DRW at its own recipe, side by side: what bf16 costs, against its paper's fp32
SHARING_JOBS = 2  # runs sharing the GPU (`glmc reproduce --jobs`), where one launch-bound run leaves it idle
SHARING_GAIN = 1.1  # what the runs' summed samples/s must reach, against one run alone, for the queue to share
SHARING_STEPS = 300  # a long timed window, so that the processes' start-up skew is small beside it
SHARING_OVERLAP = 0.8  # of each process's timed window that the others' must cover for the figures to count


def shared_bench_names(preset: str) -> list[str]:
    return [f"gpu-{preset}-shared-{k}-of-{SHARING_JOBS}.json" for k in range(1, SHARING_JOBS + 1)]


def shared_bench_if_needed(preset: str) -> list[list[str]]:
    """SHARING_JOBS benches of `preset` at once on the GPU (compiled where that was faster alone), only where its plain
    bench says two 200-epoch runs do not fit in one loan and sharing has not been measured yet."""
    plain = bench_result(f"gpu-{preset}.json")
    names = shared_bench_names(preset)
    if plain is None or 2 * run_minutes(plain) <= LOAN_MINUTES or all(bench_result(name) for name in names):
        return []
    sets = compile_sets(fastest_compile(preset))
    started = " ".join(f"{bench_line(preset, name, *sets, steps=SHARING_STEPS)} & pids=\"$pids $!\";" for name in names)
    return [["sh", "-c", started + " for pid in $pids; do wait $pid || exit 1; done"]]


def windows_overlap(windows: list[tuple[float, float]], share: float = SHARING_OVERLAP) -> bool:
    """Whether every timed window is covered, for at least `share` of its length, by the span all of them share."""
    common = min(end for _, end in windows) - max(start for start, _ in windows)
    return all(end > start and common >= share * (end - start) for start, end in windows)


def sharing_gain(preset: str) -> float | None:
    """The shared benches' summed samples/s over one process alone on the same step (compiled where that was faster);
    None where not measured, or where the processes' timed windows did not overlap enough to count."""
    shared = [bench_result(name) for name in shared_bench_names(preset)]
    mode = fastest_compile(preset)
    alone = bench_result(compile_bench_name(preset, mode) if mode else f"gpu-{preset}.json")
    if alone is None or not all(shared) or not windows_overlap([tuple(bench["timed_window"]) for bench in shared]):
        return None
    return sum(bench["images_per_s"] for bench in shared) / alone["images_per_s"]


def jobs_for(preset: str) -> int:
    """SHARING_JOBS where runs of `preset` sharing the GPU went at least SHARING_GAIN faster together, else 1."""
    gain = sharing_gain(preset)
    return SHARING_JOBS if gain is not None and gain >= SHARING_GAIN else 1


def mark(table: str, preset: str, overrides: dict | None = None, seed: int = 0) -> str:
    """Where a finished run's summary lands under FRESH, then RESULTS (the run folder `glmc reproduce` names)."""
    from glmc.config import parse_override
    from glmc.reproduce import Row, extra_suffix

    smoke = extra_suffix(dict(map(parse_override, SMOKE_SETS)))  # "" outside the smoke check
    return f"{table}/{Row('', preset, overrides or {}).training}{smoke}/seed-{seed}/summary.json"


def queue() -> list[Item]:
    """The campaign fitted to the loans (about LOAN_MINUTES of GPU work each): the two CIFAR benches first (the first
    GPU figures, and every run's predicted time), then LDAM-DRW at its own recipe in fp32 and in bf16 (every bf16 CPU
    run lands 5-8 points below its paper; the two tell bf16 from the data and the pipeline), then the authors' IF100
    row unless the CPU campaign has finished it, then the rest in the campaign issue's order, the two baselines at
    their own recipes (unless the CPU campaign has finished them) after the standard IF100 rows; the rows of several
    runs share the GPU where that was measured faster."""
    photos = str(WORK / "photos")
    authors = "cifar10-lt-if100-authors"
    return [
        Item("1 bench", lambda: [bench(authors, f"gpu-{authors}.json"), bench("cifar10-lt-if100", "gpu-cifar10-lt-if100.json")],
             [f"bench/gpu-{authors}.json", "bench/gpu-cifar10-lt-if100.json"]),
        Item("1b LDAM-DRW at its own recipe in fp32 and in bf16: bf16, or the data and the pipeline?",
             lambda: [reproduce("gpu-campaign", *(f"LDAM-DRW IF100 own recipe {p}" for p in PRECISIONS),
                                tables="gpu_tables.yaml")],
             [mark("gpu-campaign", "cifar10-lt-if100-ldam-drw-own-recipe", {"train.precision": p}) for p in PRECISIONS]),
        Item("2 compiled benches, if the authors' run does not fit in a loan",
             lambda: compile_bench_if_needed(authors)),
        Item("3 authors IF100 + MaxNorm",
             lambda: [reproduce("glmc-cifar10-lt-authors", "IF100", "IF100 + MaxNorm", compile_if_faster=authors)],
             [mark("glmc-cifar10-lt-authors", authors)],
             elsewhere=["cifar10-lt/cifar10-lt-if100-authors-cpu/summary.json"]),  # the CPU campaign (tools/cpu_campaign.py)
        Item("4 shared benches, if two runs do not fit in a loan",
             lambda: [*shared_bench_if_needed(authors), *shared_bench_if_needed("cifar10-lt-if100")]),
        Item("5 standard IF100: GLMC, CE, Balanced Softmax",
             lambda: [reproduce("cifar10-lt-standard", "GLMC IF100", "CE IF100", "Balanced Softmax IF100",
                                share_if_faster="cifar10-lt-if100")],
             [mark("cifar10-lt-standard", preset) for preset in
              ("cifar10-lt-if100", "cifar10-lt-if100-ce", "cifar10-lt-if100-balanced-softmax")]),
        *(Item(f"5{letter} standard IF100, {title} at its own paper's recipe",
               lambda row=row: [reproduce("cifar10-lt-standard", row)],
               [mark("cifar10-lt-standard", preset)],
               elsewhere=[f"cifar10-lt/{preset}-cpu/summary.json"])  # the CPU campaign's queue (tools/cpu_queue.yaml)
          for letter, title, row, preset in (
              ("b", "Balanced Softmax", "Balanced Softmax IF100, own recipe", "cifar10-lt-if100-balanced-softmax-own-recipe"),
              ("c", "LDAM-DRW", "LDAM-DRW IF100, own recipe", "cifar10-lt-if100-ldam-drw-own-recipe"))),
        Item("6 authors IF50, IF10",
             lambda: [reproduce("glmc-cifar10-lt-authors", "IF50", "IF10", compile_if_faster=authors, share_if_faster=authors)],
             [mark("glmc-cifar10-lt-authors", "cifar10-lt-if50-authors"), mark("glmc-cifar10-lt-authors", "cifar10-lt-if10-authors")]),
        Item("7 authors IF100 + SAM",
             lambda: [reproduce("gpu-campaign", "IF100 authors + SAM", tables="gpu_tables.yaml", compile_if_faster=authors)],
             [mark("gpu-campaign", authors, {"optim.sam_rho": 0.05})]),
        Item("8 standard IF100 GLMC, seeds 1 and 2",
             lambda: [reproduce("cifar10-lt-standard", "GLMC IF100", seeds=3, share_if_faster="cifar10-lt-if100")],
             [mark("cifar10-lt-standard", "cifar10-lt-if100", seed=seed) for seed in (1, 2)]),
        Item("9 standard IF100 GLMC in fp32", lambda: [reproduce("gpu-campaign", "GLMC IF100 fp32", tables="gpu_tables.yaml")],
             [mark("gpu-campaign", "cifar10-lt-if100", {"train.precision": "fp32"})]),
        Item("10 standard split, the authors' wide ResNet-32 (network or split?)",
             lambda: [reproduce("gpu-campaign", "GLMC IF100 wide ResNet-32, standard split", tables="gpu_tables.yaml",
                                compile_if_faster=authors)],
             [mark("gpu-campaign", "cifar10-lt-if100", {"model.backbone": "resnet32-wide"})]),
        Item("11 the other benches: standard compiled, ImageNet-LT", lambda: [
            bench("cifar10-lt-if100", "gpu-cifar10-lt-if100-compiled.json", "train.compile=true"),
            [sys.executable, "-c", f"from glmc.bench import write_photo_stand_ins; write_photo_stand_ins({photos!r}, files=512)"],
            bench("imagenet-lt-authors", "gpu-imagenet-lt-authors.json", "data.dataset=folder", "data.workers=12",
                  *SMOKE_LARGE, data_root=photos),
        ], ["bench/gpu-cifar10-lt-if100-compiled.json", "bench/gpu-imagenet-lt-authors.json"]),
        Item("12 ImageNet-LT: one-process NCCL torchrun smoke", lambda: [
            ["sh", "-c", f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node=1 -m glmc train "
                         f"--preset imagenet-lt-authors --set data.dataset=folder --data-root {photos} --device {device()} "
                         f"--max-steps 10 --set data.workers=12 {' '.join('--set ' + v for v in SMOKE_LARGE)} --quiet "
                         f"--output {WORK / 'nccl-smoke'} --resume-if-exists "
                         f"> {LOGS / 'nccl-smoke.log'} 2>&1"],
        ], ["nccl-smoke/summary.json"]),
    ]


# ---------------------------------------------------------------- here


def prepare() -> int:
    """gpu/: the CIFAR-10 npz, the wheels, the commit; all the GPU machine needs that is not in the checkout."""
    WORK.mkdir(exist_ok=True)
    restore_weights()  # what an earlier `prepare` parked: the commit below is read from a whole checkout
    clear_overflow()
    clear_leftovers()
    kept = trim_cifar(NPZ / "cifar10_jpeg.npz", WORK / "cifar10_jpeg.npz")
    print(f"CIFAR-10: the {kept} training images some CIFAR-10-LT preset trains on, and the test set")
    shutil.copy2(NPZ / "materialize.py", WORK / "materialize.py")
    wheels = WORK / "wheels"
    wheels.mkdir(exist_ok=True)
    platforms = [arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for arg in ("--platform", tag)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", *platforms, "-d", str(wheels), *WHEELS], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout
    (WORK / "COMMIT").write_text(commit + ("-dirty" if dirty.strip() else "") + "\n")
    if tree_bytes(WORK) + sum(checkout_files().values()) > CARRY_LIMIT:
        parked = park_weights()
        print(f"parked {len(parked)} committed weight files ({sum(parked.values()) / 2**20:.1f} MiB): the GPU machine "
              "skips a finished item on its summary.json and never reads them; `unpack` or `restore` puts them back")
    checkout = checkout_files()
    overflow = []
    if tree_bytes(WORK) + sum(checkout.values()) > CARRY_LIMIT:
        overflow = split_overflow(CARRY_LIMIT - sum(checkout.values()) - CARRY_MARGIN)
    calls = carries(overflow)
    size = sum(tree_bytes(ROOT / path) for path in calls[0])
    total = size + sum(checkout.values())
    print(f"gpu/ ready: {size / 2**20:.1f} MiB to carry, {total / 2**20:.1f} MiB with the checkout, commit {commit[:12]}")
    if total > CARRY_LIMIT:
        largest = sorted(checkout.items(), key=lambda item: -item[1])[:5]
        print(f"that is over the device's {CARRY_LIMIT / 2**20:.0f} MiB: move large files out of the checkout for the "
              "GPU session (a partial run's checkpoint under results/ can resume from runs/, which is ignored); largest: "
              + ", ".join(f"{path} ({bytes_ / 2**20:.1f} MiB)" for path, bytes_ in largest), file=sys.stderr)
        return 1
    if overflow:
        print(f"the partial runs' {tree_bytes(CAMPAIGN) / 2**20:.0f} MiB travel in {len(overflow)} more call(s), each "
              "at once after the one before: a call finds what the last one carried only while the machine is warm")
    for number, carry in enumerate(calls, 1):
        command = "loan" if number == len(calls) else "start"
        print(f"  call {number}: carry {json.dumps(carry)}, timeout_s 600, "
              f"command: python3 tools/gpu_queue.py {command}")
    print("  then, where `pack` says the rest comes back with `pack 2`...: one call each, carrying nothing")
    return 0


def tree_bytes(path: Path) -> int:
    """The bytes of a file, or of every file under a folder (0 where it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    return sum(inner.stat().st_size for inner in path.rglob("*") if inner.is_file())


def carries(overflow: list[str]) -> list[list[str]]:
    """What each of a loan's first calls carries: gpu/ (without its partial runs where `overflow` holds their bytes),
    then each overflow folder."""
    if not overflow:
        return [[str(WORK.relative_to(ROOT))]]
    first = [str(path.relative_to(ROOT)) for path in sorted(WORK.iterdir()) if path != CAMPAIGN]
    return [first, *([folder] for folder in overflow)]


def split_overflow(budget: int) -> list[str]:
    """Copy the bytes of the partial runs' files (all under gpu/campaign/), back to back, into parts of at most
    `budget` bytes, ROOT/gpu-more-K/part, one per call; OVERFLOW (in gpu/) lists the parts and each file with its
    size and SHA-256, for `rejoin_overflow` there. The files stay here as they are. Returns the parts' folders."""
    contents = [(path, path.read_bytes()) for path in sorted(CAMPAIGN.rglob("*")) if path.is_file()]
    data = b"".join(content for _, content in contents)
    folders = []
    for number, start in enumerate(range(0, len(data), budget), 1):
        folder = ROOT / f"{OVERFLOW_PREFIX}{number}"
        folder.mkdir()
        (folder / "part").write_bytes(data[start : start + budget])
        folders.append(folder.name)
    files = [{"path": str(path.relative_to(WORK)), "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
             for path, content in contents]
    OVERFLOW.write_text(json.dumps({"parts": folders, "files": files}, indent=1) + "\n")
    return folders


def clear_overflow() -> None:
    """Remove what an earlier `prepare` split off (the partial runs' files themselves stayed in gpu/campaign/)."""
    OVERFLOW.unlink(missing_ok=True)
    for folder in sorted(ROOT.glob(f"{OVERFLOW_PREFIX}*")):
        shutil.rmtree(folder)


CARRIED = {"cifar10_jpeg.npz", "materialize.py", "wheels", "COMMIT"}  # what `prepare` puts in gpu/


def clear_leftovers() -> None:
    """Remove from gpu/ what `start`, `pack` or `unpack` left (a smoke check's data, runs and logs), which would
    otherwise travel to the GPU machine with the carry; keep the partial runs a loan brought back (gpu/campaign/), to
    continue on the next one."""
    keep = {path for run, _, _ in partial_runs() for path in partial_files(run)}
    for path in sorted(WORK.iterdir()):
        if path.name in CARRIED:
            continue
        if path == CAMPAIGN and keep:
            for inner in sorted(CAMPAIGN.rglob("*"), reverse=True):  # files first, then the folders they leave empty
                if inner.is_file() and inner not in keep:
                    inner.unlink()
                elif inner.is_dir() and not any(inner.iterdir()):
                    inner.rmdir()
            print(f"kept {len(keep)} files of partial runs under {CAMPAIGN.relative_to(ROOT)}, to continue")
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        print(f"removed {path.relative_to(ROOT)} (not carried)")


def presets_train_indices(train_labels: np.ndarray) -> np.ndarray:
    """Every CIFAR-10 training image that some CIFAR-10-LT preset trains on: the union of their splits, ascending."""
    from glmc.config import build_config, load_presets
    from glmc.data.cifar_lt import cifar_lt_indices

    settings = {(config.data.imbalance_factor, config.data.split) for config in map(build_config, load_presets())
                if config.data.dataset == "cifar10-lt"}
    return np.unique(np.concatenate([cifar_lt_indices("cifar10-lt", train_labels, *setting) for setting in sorted(settings)]))


def trim_cifar(source: Path, dest: Path, keep: np.ndarray | None = None) -> int:
    """`source` (the shared npz: JPEG bytes with offsets) without the JPEGs of training images outside `keep`
    (default: those of `presets_train_indices`), which become empty; the carry is about 20 MiB lighter.
    `materialise` leaves them black. Returns how many training images were kept."""
    npz = np.load(source)
    arrays = {key: npz[key] for key in npz.files}
    jpeg, offsets = arrays["train_jpeg"], arrays["train_offsets"]
    keep = presets_train_indices(arrays["train_labels"]) if keep is None else np.unique(keep)
    sizes = np.zeros(len(offsets) - 1, dtype=offsets.dtype)
    sizes[keep] = np.diff(offsets)[keep]
    arrays["train_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(offsets.dtype)
    arrays["train_jpeg"] = np.concatenate([jpeg[offsets[i]:offsets[i + 1]] for i in keep])
    dest.unlink(missing_ok=True)  # the shared copy is read-only
    with open(dest, "wb") as file:  # np.savez(path) would add ".npz" to a name that lacks it
        np.savez(file, **arrays)
    return len(keep)


def checkout_files() -> dict[str, int]:
    """What the device copies of the checkout: tracked files and untracked ones git does not ignore, with their sizes."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    return {name: (ROOT / name).stat().st_size for name in listed.split("\0") if name and (ROOT / name).is_file()}


def committed_weights() -> list[str]:
    """The fp16 weights committed under results/, which the device would carry with the checkout (about 15 MB
    for each wide ResNet-32): a few of them put the checkout alone over the device's limit."""
    from glmc.weights import COMPACT_SUFFIX

    listed = subprocess.run(["git", "ls-files", "-z", "--", "results"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    return [name for name in listed.split("\0") if name.endswith(COMPACT_SUFFIX)]


def park_weights() -> dict[str, int]:
    """Take the committed weights out of the working tree (git keeps them); returns what was parked, with sizes."""
    parked = {name: (ROOT / name).stat().st_size for name in committed_weights() if (ROOT / name).is_file()}
    for name in parked:
        (ROOT / name).unlink()
    return parked


def restore_weights() -> list[str]:
    """Put back, from the commit, the committed weights missing from the working tree (what `park_weights` took)."""
    missing = [name for name in committed_weights() if not (ROOT / name).exists()]
    if missing:
        subprocess.run(["git", "checkout", "--", *missing], cwd=ROOT, check=True)
        print(f"restored {len(missing)} committed weight files")
    return missing


def unpack(folders: list[str]) -> int:
    """The parts `pack` wrote (the folders its calls returned), joined and extracted into the checkout: results/...,
    and gpu/campaign/ for the partial runs, each replacing the copy that went out."""
    parts, total = returned_parts(folders)
    if not parts:
        print(f"no campaign.tar.gz.part* under {', '.join(folders)}", file=sys.stderr)
        return 2
    missing = sorted(set(range(1, total + 1)) - set(parts))
    if missing:
        calls = sorted({(number - 1) // PARTS_PER_CALL + 1 for number in missing})
        print(f"parts {', '.join(map(str, missing))} of {total} are missing: they come back with "
              + ", ".join(f"`pack {call}`" for call in calls), file=sys.stderr)
        return 2
    restore_weights()
    joined = WORK / "campaign.tar.gz"
    WORK.mkdir(parents=True, exist_ok=True)
    with open(joined, "wb") as out:
        for number in range(1, total + 1):
            out.write(parts[number].read_bytes())
    with tarfile.open(joined) as archive:
        returned_runs = {Path(member.name).parent for member in archive.getmembers()
                         if Path(member.name).is_relative_to(CAMPAIGN.relative_to(ROOT))}
        for run in returned_runs:  # the copy that went out: files it had and the new one lacks must not stay beside it
            shutil.rmtree(ROOT / run, ignore_errors=True)
        archive.extractall(ROOT, filter="data")
    print(f"unpacked {total} parts into {RESULTS}; now write each run's RUN.md from its summary and commit")
    for run in sorted(CAMPAIGN.glob("*/*/seed-*")):
        if (RESULTS / run.relative_to(CAMPAIGN) / "summary.json").is_file():  # collect()'s layout
            shutil.rmtree(run)
            print(f"partial run {run.relative_to(ROOT)} went out and came back finished: removed, it is not carried again")
    for run, epoch, epochs in partial_runs():
        print(f"partial run {run.relative_to(ROOT)}: {epoch} of {epochs} epochs; the next `prepare` carries it to continue")
    return 0


# ---------------------------------------------------------------- there


def start() -> int:
    """Put CIFAR-10 in place, then run the queue in a new process session (it outlives this command). Where the
    partial runs travel in calls of their own, wait for all of them, then put the partial runs together."""
    if not (WORK / "COMMIT").is_file():
        print(f"{WORK.relative_to(ROOT)}/ is not on this machine (a fresh one?): call `start` with the carry of call 1 "
              "that `prepare` printed", file=sys.stderr)
        return 2
    if OVERFLOW.is_file():
        missing = overflow_to_come()
        if missing:
            print(f"waiting for {', '.join(missing)}: call `start` again at once, carrying {json.dumps(missing[:1])}")
            return 0
        rejoin_overflow()
    LOGS.mkdir(parents=True, exist_ok=True)
    (FRESH / "bench").mkdir(parents=True, exist_ok=True)
    if not (DATA / "cifar-10-batches-py").is_dir():
        materialise(WORK / "materialize.py", DATA)
    if running():
        print("the queue is already running; `status` shows where it is")
        return 0
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{WORK / 'site'}", "PYTHONUNBUFFERED": "1"}
    wheels = sorted((WORK / "wheels").glob("*.whl"))
    if wheels and not SMOKE and not (WORK / "site").is_dir():  # the smoke check runs in this venv, which has them
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(WORK / "site"), *map(str, wheels)], check=True)
    with open(LOGS / "queue.log", "a") as log:
        process = subprocess.Popen([sys.executable, __file__, "run"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    (WORK / "queue.pid").write_text(str(process.pid))
    print(f"queue started (pid {process.pid}); log {LOGS / 'queue.log'}")
    return 0


def overflow_to_come() -> list[str]:
    """The folders of parts (`split_overflow`) that no call has carried to this machine yet."""
    return [folder for folder in json.loads(OVERFLOW.read_text())["parts"] if not (ROOT / folder / "part").is_file()]


def loan(minutes: float = LOAN_CALL_QUEUE_MINUTES) -> int:
    """A loan's work in one call: `start`, the queue's work for `minutes` (or until it ends), `status`, `pack`."""
    started = start()
    if started != 0 or OVERFLOW.is_file():  # refused, or still waiting for parts: no queue runs yet
        return started
    deadline = time.time() + 60 * minutes
    while running() and time.time() < deadline:
        time.sleep(POLL_SECONDS)
    status()
    return pack()


def rejoin_overflow() -> None:
    """The partial runs' files from the parts the calls carried (see `split_overflow`), each checked against its
    SHA-256; the parts are removed."""
    manifest = json.loads(OVERFLOW.read_text())
    data = b"".join((ROOT / folder / "part").read_bytes() for folder in manifest["parts"])
    if len(data) != sum(entry["size"] for entry in manifest["files"]):
        raise SystemExit(f"{', '.join(manifest['parts'])} hold {len(data)} bytes, not what {OVERFLOW.name} lists: "
                         "carry them again")
    offset = 0
    for entry in manifest["files"]:
        content, offset = data[offset : offset + entry["size"]], offset + entry["size"]
        if hashlib.sha256(content).hexdigest() != entry["sha256"]:
            raise SystemExit(f"{entry['path']} does not match its SHA-256 in {OVERFLOW.name}: carry the parts again")
        target = WORK / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    for folder in manifest["parts"]:
        shutil.rmtree(ROOT / folder)
    OVERFLOW.unlink()
    print(f"put together {len(manifest['files'])} files of partial runs from {', '.join(manifest['parts'])}")


def materialise(script: Path, data: Path) -> None:
    """The shared script's pickles from the trimmed npz beside it; the training images `trim_cifar` emptied are black."""
    spec = importlib.util.spec_from_file_location("materialize", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    decode = module.decode

    def decode_kept(jpeg: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        kept = np.flatnonzero(np.diff(offsets))
        images = np.zeros((len(offsets) - 1, 3072), np.uint8)
        images[kept] = decode(jpeg, np.append(offsets[kept], offsets[-1]))  # empty entries add no bytes between kept ones
        return images

    module.decode = decode_kept
    module.main(str(data))


def queue_group() -> int | None:
    """The process group the queue leads (`start` wrote its pid); None where no queue was started here."""
    try:
        return int((WORK / "queue.pid").read_text())
    except (OSError, ValueError):
        return None


def running() -> bool:
    """Whether the queue, or anything it started, still runs."""
    group = queue_group()
    return group is not None and group_alive(group)


def group_alive(group: int) -> bool:
    """Whether a process of process group `group` is still running; a zombie (exited, not yet reaped) is not."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # it exited while being read
        if state != "Z" and int(pgrp) == group:
            return True
    return False


def stop_queue() -> None:
    """SIGTERM the queue and all it started, and wait for them to exit: training saves its checkpoint at the next
    step, so the partial runs `pack` brings back are whole and as far as the loan took them. `start` continues."""
    group = queue_group()
    if group is None or not group_alive(group):
        return
    os.killpg(group, signal.SIGTERM)
    deadline = time.time() + STOP_SECONDS
    while group_alive(group):
        if time.time() > deadline:
            print(f"the queue still runs {STOP_SECONDS} s after SIGTERM; packing what is there", file=sys.stderr)
            return
        time.sleep(0.2)
    print("stopped the queue (its runs saved their checkpoints); `start` continues it")


def run() -> int:
    """The queue itself, in order; an item whose results are committed is skipped."""
    for item in queue():
        if item.done():
            print(f"{time.strftime('%H:%M:%S')} skip {item.name}: its results are committed", flush=True)
            continue
        print(f"{time.strftime('%H:%M:%S')} start {item.name}", flush=True)
        started = time.time()
        for command in item.commands():
            with open(LOGS / f"{item.name.split()[0]}.log", "a") as log:
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                print(f"{time.strftime('%H:%M:%S')} FAILED {item.name} ({done.returncode}): {' '.join(command)}", flush=True)
                return done.returncode
        collect(item)
        note_collected(FRESH / "bench", FRESH / "nccl-smoke")
        print(f"{time.strftime('%H:%M:%S')} done {item.name} in {time.time() - started:.0f} s", flush=True)
    print(f"{time.strftime('%H:%M:%S')} queue finished", flush=True)
    return 0


def compact_files() -> tuple[str, ...]:
    """What comes back of a finished run: its records, and its weights (and those of its MaxNorm-calibrated
    checkpoint, with that calibration's metrics) as fp16 safetensors; never optimiser state."""
    from glmc.calibration import default_output, metrics_path
    from glmc.weights import compact_path
    from glmc.rundir import LAST_CHECKPOINT, RECORD_FILES

    maxnorm = default_output(LAST_CHECKPOINT, "maxnorm")
    return (*RECORD_FILES, compact_path(LAST_CHECKPOINT).name, metrics_path(maxnorm).name, compact_path(maxnorm).name)


def note_collected(*paths: Path) -> None:
    with open(COLLECTED, "a") as listing:
        for path in paths:
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                if file.suffix != ".tmp":  # a bench's output before it is whole
                    listing.write(f"{file.relative_to(ROOT)}\n")


def collect(item: Item) -> None:
    """Copy the compact part of every finished run (and the tables) from CAMPAIGN to FRESH; evaluate the
    fp16 weights in fp32 and record that top-1 beside them (`weights-eval.json`), which a test re-checks on a CPU."""
    from glmc.weights import COMPACT_SUFFIX, evaluation_path, write_evaluation  # installed by `start` on the GPU machine

    for summary in sorted(CAMPAIGN.glob("*/*/seed-*/summary.json")):
        run = summary.parent
        target = FRESH / run.relative_to(CAMPAIGN)
        target.mkdir(parents=True, exist_ok=True)
        for name in compact_files():
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
        for weights in sorted(target.glob("*" + COMPACT_SUFFIX)):
            if not evaluation_path(weights).is_file():
                done = subprocess.run(glmc("eval", str(weights), "--data-root", str(DATA), "--device", device(), "--json"),
                                      capture_output=True, text=True)
                if done.returncode == 0:
                    write_evaluation(weights, json.loads(done.stdout))
        commit = (WORK / "COMMIT").read_text().strip() if (WORK / "COMMIT").is_file() else "unknown"
        (target / "SOURCE.json").write_text(json.dumps({"commit": commit, "run_folder": str(run.relative_to(CAMPAIGN)),
                                                         "item": item.name}) + "\n")
        note_collected(target)
    for table in sorted(CAMPAIGN.glob("*/table.*")):
        (FRESH / table.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(table, FRESH / table.relative_to(CAMPAIGN))
        note_collected(FRESH / table.relative_to(CAMPAIGN))
    if "NCCL" in item.name and (WORK / "nccl-smoke" / "summary.json").is_file():
        (FRESH / "nccl-smoke").mkdir(parents=True, exist_ok=True)
        shutil.copy2(WORK / "nccl-smoke" / "summary.json", FRESH / "nccl-smoke" / "summary.json")


def status() -> int:
    print("queue:", "running" if running() else "not running")
    log = LOGS / "queue.log"
    if log.is_file():
        print("".join(log.read_text().splitlines(keepends=True)[-12:]), end="")
    for item in queue():
        print(f"  {'done' if item.done() else 'todo'}  {item.name}")
    for run, epoch, epochs in partial_runs():
        print(f"  partial  {run.relative_to(CAMPAIGN)}: {epoch} of {epochs} epochs, continues from its checkpoint")
    benches = {path.name for folder in (RESULTS, FRESH) for path in (folder / "bench").glob("gpu-*.json")}
    for name in sorted(benches):
        bench = bench_result(name) or {}
        if "ms_per_step" in bench:
            print(f"  {name}: {bench['images_per_s']:.0f} samples/s, a 200-epoch run {run_minutes(bench):.1f} min "
                  f"of steps ({'fits' if run_minutes(bench) <= LOAN_MINUTES else 'does not fit'} in a loan)")
        elif bench.get("failed"):
            print(f"  {name}: failed (its item's log under {LOGS.relative_to(ROOT)}/), so not used")
    for preset in ("cifar10-lt-if100-authors", "cifar10-lt-if100"):
        gain = sharing_gain(preset)
        if gain is not None:
            print(f"  {SHARING_JOBS} runs of {preset} sharing the GPU: {gain:.2f}x the samples/s of one alone "
                  f"(the queue runs {jobs_for(preset)} at once)")
    return 0


def partial_runs() -> list[tuple[Path, int, int]]:
    """The runs under CAMPAIGN begun and not finished: (folder, epochs done by its last checkpoint, epochs)."""
    from glmc.checkpoint import load_latest_good
    from glmc.errors import GlmcError
    from glmc.rundir import LAST_CHECKPOINT, SUMMARY_FILE

    runs = []
    for checkpoint in sorted(CAMPAIGN.glob(f"*/*/seed-*/{LAST_CHECKPOINT}")):
        if (checkpoint.parent / SUMMARY_FILE).exists():
            continue
        try:
            saved = load_latest_good(checkpoint)
        except GlmcError:
            continue
        runs.append((checkpoint.parent, int(saved["state"]["epoch"]), int(saved["config"]["train"]["epochs"])))
    return runs


def partial_files(run: Path) -> list[Path]:
    """What a partial run needs to continue exactly on the next loan: its records and its last checkpoint."""
    from glmc.checkpoint import checksum_path
    from glmc.rundir import LAST_CHECKPOINT, RECORD_FILES

    names = (*RECORD_FILES, LAST_CHECKPOINT, checksum_path(Path(LAST_CHECKPOINT)).name)
    return [run / name for name in names if (run / name).is_file()]


def pack(call: int = 1) -> int:
    """Call 1 stops the queue and writes what this machine made (FRESH, as results/gpu-campaign), the logs and the
    partial runs as one tar.gz; each call puts the next PARTS_PER_CALL parts of it under $OUT (what one call brings
    back)."""
    out = Path(os.environ.get("OUT", WORK / "out"))
    out.mkdir(parents=True, exist_ok=True)
    archive = WORK / "campaign.tar.gz"
    if call == 1:
        stop_queue()
        write_archive(archive)
    elif not archive.is_file():
        print("no archive here yet: `pack` (call 1) writes it", file=sys.stderr)
        return 2
    data = archive.read_bytes()
    parts = [data[start : start + PART_BYTES] for start in range(0, len(data), PART_BYTES)]
    calls = math.ceil(len(parts) / PARTS_PER_CALL)
    if not 1 <= call <= calls:
        print(f"the archive comes back in {calls} call(s): there is no call {call}", file=sys.stderr)
        return 2
    numbers = range((call - 1) * PARTS_PER_CALL + 1, min(call * PARTS_PER_CALL, len(parts)) + 1)
    for number in numbers:
        (out / part_name(number, len(parts))).write_bytes(parts[number - 1])
    print(f"packed parts {numbers[0]}-{numbers[-1]} of {len(parts)} ({len(data) / 2**20:.1f} MiB in all) under {out}")
    if call < calls:
        following = f"`pack {call + 1}`" if call + 1 == calls else f"`pack {call + 1}` to `pack {calls}`, a call each"
        print(f"the rest comes back with {following}; `unpack` takes all the calls' folders")
    return 0


def write_archive(archive: Path) -> None:
    """The tar.gz of `pack`: the results and logs, then each partial run while the whole stays within
    MAX_RETURN_CALLS calls of parts (a partial run left out starts again on the next loan)."""
    added = sorted(set(COLLECTED.read_text().split())) if COLLECTED.is_file() else []
    room = MAX_RETURN_CALLS * PARTS_PER_CALL * PART_BYTES
    with tarfile.open(archive, "w:gz") as tar:
        for relative in added:
            if (ROOT / relative).is_file():
                tar.add(ROOT / relative, arcname=returned_name(ROOT / relative))
                room -= tree_bytes(ROOT / relative)
        if LOGS.is_dir():
            tar.add(LOGS, arcname=str((RESULTS / "logs").relative_to(ROOT)))
            room -= tree_bytes(LOGS)
        for run, epoch, epochs in partial_runs():  # back to gpu/campaign/ here, carried on the next loan
            files = partial_files(run)
            size = sum(map(tree_bytes, files))
            if size > room:
                print(f"partial run {run.relative_to(CAMPAIGN)} ({epoch} of {epochs} epochs) stays behind: its checkpoint "
                      f"and records ({size / 2**20:.0f} MiB) would make more than {MAX_RETURN_CALLS} calls of parts; it "
                      "starts again on the next loan")
                continue
            for path in files:
                tar.add(path, arcname=str(path.relative_to(ROOT)))
            room -= size
            print(f"partial run {run.relative_to(CAMPAIGN)}: {epoch} of {epochs} epochs, its checkpoint comes back")


def returned_name(path: Path) -> str:
    """Where a file this machine made lands in the checkout back here: FRESH's under RESULTS."""
    home = RESULTS / path.relative_to(FRESH) if path.is_relative_to(FRESH) else path
    return str(home.relative_to(ROOT))


def part_name(number: int, total: int) -> str:
    return f"campaign.tar.gz.part{number:02d}-of-{total:02d}"


def returned_parts(folders: list[str]) -> tuple[dict[int, Path], int]:
    """The parts under `folders` (one per `pack` call) by number, and how many the archive has."""
    parts, totals = {}, set()
    for path in (path for folder in folders for path in Path(folder).rglob("campaign.tar.gz.part*")):
        match = re.fullmatch(r"campaign\.tar\.gz\.part(\d+)-of-(\d+)", path.name)
        if match:
            parts[int(match[1])] = path
            totals.add(int(match[2]))
    if len(totals) > 1:
        raise SystemExit(f"the parts under {', '.join(folders)} come from different archives (of {sorted(totals)} parts)")
    return parts, totals.pop() if totals else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["prepare", "start", "loan", "run", "status", "pack", "unpack", "restore"])
    parser.add_argument("where", nargs="*", help="unpack: the folders the `pack` calls' files came back in; "
                                                  "pack: which call of it (default 1, the one that writes the archive); "
                                                  f"loan: the queue's minutes (default {LOAN_CALL_QUEUE_MINUTES})")
    args = parser.parse_args()
    if args.command == "unpack":
        return unpack(args.where or ["."])
    if args.command == "pack":
        return pack(int(args.where[0]) if args.where else 1)
    if args.command == "restore":
        restore_weights()
        return 0
    if args.command == "loan":
        return loan(float(args.where[0]) if args.where else LOAN_CALL_QUEUE_MINUTES)
    return {"prepare": prepare, "start": start, "run": run, "status": status}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
