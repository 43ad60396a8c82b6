"""The GPU campaign (README, Results): a whole GPU session's work from a bare machine, resumable across sessions.

Here, on the development machine, before asking for the GPU:

    python scripts/gpu_queue.py prepare     # gpu/: CIFAR-10 (the npz, cut to the images CIFAR-10-LT presets use),
                                            #   the wheels the GPU image lacks, the commit

On the GPU machine (the device tool's run, carry ["gpu"]), each a short call:

    python3 scripts/gpu_queue.py start      # materialise CIFAR-10, start the queue in the background (setsid)
    python3 scripts/gpu_queue.py status     # which item runs, its last lines, what is finished
    python3 scripts/gpu_queue.py pack       # finished results as at most 8 files of at most 15 MiB under $OUT

Back here, with the files the call returned:

    python scripts/gpu_queue.py unpack FILES_AT   # -> results/; commit them (the next session skips them)
    python scripts/gpu_queue.py restore           # the session brought nothing back: put parked weights back

When the checkout and gpu/ together are over the device's 64 MiB, `prepare` parks the committed
fp16 weights under results/ (removes them from the working tree; git keeps them): the GPU machine
skips a finished item on its summary.json and never reads them. `unpack` and `restore` put them back.

The queue is the GPU campaign issue's list, in order, then item 9: the authors' wide ResNet-32 on
the standard split (does the network or the split make the gap between the CPU run's 79.50 and
the authors' 88.50?). Every item is skipped when its results
are already committed under results/, so each session advances it. Training goes through
`glmc reproduce` (tables in src/glmc/tables.yaml and scripts/gpu_tables.yaml), so an item
interrupted within a session resumes from its checkpoint when `start` is called again. What
comes back is compact: summaries, metrics, configs, tables, logs and fp16 safetensors weights
with their fp32 evaluation (`weights-eval.json`), never optimiser state.

`GLMC_QUEUE_SMOKE=1` runs the same queue on the CPU (one-epoch ResNet-8 runs, 4-step benches,
small images) to check the script itself without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "gpu"  # git-ignored; carried to the GPU machine
sys.path[:0] = [str(ROOT / "src"), str(WORK / "site")]  # glmc from the checkout, no install; the carried wheels
DATA = WORK / "data"  # cifar-10-batches-py/ after `start`
CAMPAIGN = WORK / "campaign"  # reproduce outputs, one folder per table
LOGS = WORK / "logs"
SMOKE = os.environ.get("GLMC_QUEUE_SMOKE") == "1"
RESULTS = (WORK / "smoke-results") if SMOKE else (ROOT / "results" / "gpu-campaign")  # a smoke check commits nothing
NPZ = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
WHEELS = ["kornia", "kornia_rs"]  # what the GPU image lacks (device tool's KINDS.md lists the rest as present)
COLLECTED = WORK / "collected.txt"  # what this machine added under RESULTS: what `pack` brings back
PART_BYTES = 15 * 2**20
MAX_FILES = 8
CARRY_LIMIT = 64 * 2**20  # what the device tool carries: the checkout and the carried folders together


def glmc(*args: str) -> list[str]:
    return [sys.executable, "-m", "glmc", *args]


def device() -> str:
    return "cpu" if SMOKE else "cuda"


@dataclass(frozen=True)
class Item:
    """One step of the campaign: commands run in order; done when every `marks` path exists under RESULTS."""

    name: str
    commands: list[list[str]]
    marks: list[str] = field(default_factory=list)  # relative to RESULTS


# the smoke check on a CPU: one epoch of the small ResNet-8 per run, small images for the large-image items
SMOKE_SETS = ["train.epochs=1", "model.backbone=resnet8"] if SMOKE else []
SMOKE_RUN = [arg for value in SMOKE_SETS for arg in ("--set", value)]
SMOKE_LARGE = ["train.batch_size=8", "data.image_size=64", "data.resize=72", "model.backbone=resnet10"] if SMOKE else []


def reproduce(table: str, *rows: str, seeds: int = 1, tables: str | None = None) -> list[str]:
    extra = SMOKE_RUN
    only = [arg for row in rows for arg in ("--only", row)]
    source = ["--tables", str(ROOT / "scripts" / tables)] if tables else []
    return glmc("reproduce", table, *source, *only, "--seeds", str(seeds), "--output", str(CAMPAIGN / table),
                "--data-root", str(DATA), "--device", device(), "--export", "--quiet", *extra)


def bench(preset: str, name: str, *sets: str, data_root: str = str(DATA)) -> list[str]:
    steps = ["--steps", "4", "--warmup", "1"] if SMOKE else ["--steps", "100", "--warmup", "20"]
    extra = [arg for value in sets for arg in ("--set", value)]
    return ["sh", "-c", " ".join(glmc("bench", "--preset", preset, "--data-root", data_root, "--device", device(), *steps,
                                      *extra, "--json")) + f" > {RESULTS / 'bench' / name}"]


def mark(table: str, preset: str, overrides: dict | None = None, seed: int = 0) -> str:
    """Where a finished run's summary lands under RESULTS (the run folder `glmc reproduce` names)."""
    from glmc.config import parse_override
    from glmc.reproduce import Row, extra_suffix

    smoke = extra_suffix(dict(map(parse_override, SMOKE_SETS)))  # "" outside the smoke check
    return f"{table}/{Row('', preset, overrides or {}).training}{smoke}/seed-{seed}/summary.json"


def queue() -> list[Item]:
    photos = str(WORK / "photos")
    return [
        Item("1 bench", [
            bench("cifar10-lt-if100", "gpu-cifar10-lt-if100.json"),
            bench("cifar10-lt-if100", "gpu-cifar10-lt-if100-compiled.json", "train.compile=true"),
            bench("cifar10-lt-if100-authors", "gpu-cifar10-lt-if100-authors.json"),
            bench("cifar10-lt-if100-authors", "gpu-cifar10-lt-if100-authors-compiled.json", "train.compile=true"),
            [sys.executable, "-c", f"from glmc.bench import write_photo_stand_ins; write_photo_stand_ins({photos!r}, files=512)"],
            bench("imagenet-lt-authors", "gpu-imagenet-lt-authors.json", "data.dataset=folder", "data.workers=12",
                  *SMOKE_LARGE, data_root=photos),
        ], ["bench/gpu-cifar10-lt-if100.json", "bench/gpu-imagenet-lt-authors.json"]),
        Item("2 authors IF100 + MaxNorm", [reproduce("glmc-cifar10-lt-authors", "IF100", "IF100 + MaxNorm")],
             [mark("glmc-cifar10-lt-authors", "cifar10-lt-if100-authors")]),
        Item("3 standard IF100: GLMC, CE, Balanced Softmax",
             [reproduce("cifar10-lt-standard", "GLMC IF100", "CE IF100", "Balanced Softmax IF100")],
             [mark("cifar10-lt-standard", preset) for preset in
              ("cifar10-lt-if100", "cifar10-lt-if100-ce", "cifar10-lt-if100-balanced-softmax")]),
        Item("4 authors IF50, IF10", [reproduce("glmc-cifar10-lt-authors", "IF50", "IF10")],
             [mark("glmc-cifar10-lt-authors", "cifar10-lt-if50-authors"), mark("glmc-cifar10-lt-authors", "cifar10-lt-if10-authors")]),
        Item("5 authors IF100 + SAM", [reproduce("gpu-campaign", "IF100 authors + SAM", tables="gpu_tables.yaml")],
             [mark("gpu-campaign", "cifar10-lt-if100-authors", {"optim.sam_rho": 0.05})]),
        Item("6 standard IF100 GLMC, seeds 1 and 2", [reproduce("cifar10-lt-standard", "GLMC IF100", seeds=3)],
             [mark("cifar10-lt-standard", "cifar10-lt-if100", seed=seed) for seed in (1, 2)]),
        Item("7 standard IF100 GLMC in fp32", [reproduce("gpu-campaign", "GLMC IF100 fp32", tables="gpu_tables.yaml")],
             [mark("gpu-campaign", "cifar10-lt-if100", {"train.precision": "fp32"})]),
        Item("8 ImageNet-LT: one-process NCCL torchrun smoke", [
            ["sh", "-c", f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node=1 -m glmc train "
                         f"--preset imagenet-lt-authors --set data.dataset=folder --data-root {photos} --device {device()} "
                         f"--max-steps 10 --set data.workers=12 {' '.join('--set ' + v for v in SMOKE_LARGE)} --quiet "
                         f"--output {WORK / 'nccl-smoke'} --resume-if-exists "
                         f"> {LOGS / 'nccl-smoke.log'} 2>&1"],
        ], ["nccl-smoke/summary.json"]),
        Item("9 standard split, the authors' wide ResNet-32 (network or split?)",
             [reproduce("gpu-campaign", "GLMC IF100 wide ResNet-32, standard split", tables="gpu_tables.yaml")],
             [mark("gpu-campaign", "cifar10-lt-if100", {"model.backbone": "resnet32-wide"})]),
    ]


# ---------------------------------------------------------------- here


def prepare() -> int:
    """gpu/: the CIFAR-10 npz, the wheels, the commit; all the GPU machine needs that is not in the checkout."""
    WORK.mkdir(exist_ok=True)
    restore_weights()  # what an earlier `prepare` parked: the commit below is read from a whole checkout
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
    size = sum(p.stat().st_size for p in WORK.rglob("*") if p.is_file())
    if size + sum(checkout_files().values()) > CARRY_LIMIT:
        parked = park_weights()
        print(f"parked {len(parked)} committed weight files ({sum(parked.values()) / 2**20:.1f} MiB): the GPU machine "
              "skips a finished item on its summary.json and never reads them; `unpack` or `restore` puts them back")
    checkout = checkout_files()
    total = size + sum(checkout.values())
    print(f"gpu/ ready: {size / 2**20:.1f} MiB to carry, {total / 2**20:.1f} MiB with the checkout, commit {commit[:12]}")
    if total > CARRY_LIMIT:
        largest = sorted(checkout.items(), key=lambda item: -item[1])[:5]
        print(f"that is over the device's {CARRY_LIMIT / 2**20:.0f} MiB: move large files out of the checkout for the "
              "GPU session (a partial run's checkpoint under results/ can resume from runs/, which is ignored); largest: "
              + ", ".join(f"{path} ({bytes_ / 2**20:.1f} MiB)" for path, bytes_ in largest), file=sys.stderr)
        return 1
    return 0


CARRIED = {"cifar10_jpeg.npz", "materialize.py", "wheels", "COMMIT"}  # what `prepare` puts in gpu/


def clear_leftovers() -> None:
    """Remove from gpu/ what `start`, `pack` or `unpack` left (a smoke check's data, runs and logs), which would
    otherwise travel to the GPU machine with the carry."""
    for path in sorted(WORK.iterdir()):
        if path.name not in CARRIED:
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


def unpack(files_at: str) -> int:
    """The parts `pack` wrote, joined and extracted into the checkout (results/...)."""
    parts = sorted(Path(files_at).rglob("campaign.tar.gz.part*"))
    if not parts:
        print(f"no campaign.tar.gz.part* under {files_at}", file=sys.stderr)
        return 2
    restore_weights()
    joined = WORK / "campaign.tar.gz"
    WORK.mkdir(exist_ok=True)
    with open(joined, "wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    with tarfile.open(joined) as archive:
        archive.extractall(ROOT, filter="data")
    print(f"unpacked {len(parts)} parts into {RESULTS}; now write each run's RUN.md from its summary and commit")
    return 0


# ---------------------------------------------------------------- there


def start() -> int:
    """Put CIFAR-10 in place, then run the queue in a new process session (it outlives this command)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench").mkdir(parents=True, exist_ok=True)
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


def running() -> bool:
    pid_file = WORK / "queue.pid"
    if not pid_file.is_file():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def run() -> int:
    """The queue itself, in order; an item whose results are committed is skipped."""
    for item in queue():
        if item.marks and all((RESULTS / mark).exists() for mark in item.marks):
            print(f"{time.strftime('%H:%M:%S')} skip {item.name}: its results are committed", flush=True)
            continue
        print(f"{time.strftime('%H:%M:%S')} start {item.name}", flush=True)
        started = time.time()
        for command in item.commands:
            with open(LOGS / f"{item.name.split()[0]}.log", "a") as log:
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                print(f"{time.strftime('%H:%M:%S')} FAILED {item.name} ({done.returncode}): {' '.join(command)}", flush=True)
                return done.returncode
        collect(item)
        note_collected(RESULTS / "bench", RESULTS / "nccl-smoke")
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
            for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
                listing.write(f"{file.relative_to(ROOT)}\n")


def collect(item: Item) -> None:
    """Copy the compact part of every finished run (and the tables) from CAMPAIGN to RESULTS; evaluate the
    fp16 weights in fp32 and record that top-1 beside them (`weights-eval.json`), which a test re-checks on a CPU."""
    from glmc.weights import COMPACT_SUFFIX, evaluation_path, write_evaluation  # installed by `start` on the GPU machine

    for summary in sorted(CAMPAIGN.glob("*/*/seed-*/summary.json")):
        run = summary.parent
        target = RESULTS / run.relative_to(CAMPAIGN)
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
        (RESULTS / table.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(table, RESULTS / table.relative_to(CAMPAIGN))
        note_collected(RESULTS / table.relative_to(CAMPAIGN))
    if item.name.startswith("8") and (WORK / "nccl-smoke" / "summary.json").is_file():
        (RESULTS / "nccl-smoke").mkdir(parents=True, exist_ok=True)
        shutil.copy2(WORK / "nccl-smoke" / "summary.json", RESULTS / "nccl-smoke" / "summary.json")


def status() -> int:
    print("queue:", "running" if running() else "not running")
    log = LOGS / "queue.log"
    if log.is_file():
        print("".join(log.read_text().splitlines(keepends=True)[-12:]), end="")
    for item in queue():
        done = item.marks and all((RESULTS / mark).exists() for mark in item.marks)
        print(f"  {'done' if done else 'todo'}  {item.name}")
    for bench_file in sorted((RESULTS / "bench").glob("gpu-*.json")):
        bench = json.loads(bench_file.read_text() or "{}")
        if "ms_per_step" in bench:
            minutes = bench["ms_per_step"] * bench["steps_per_epoch"] * 200 / 60000
            print(f"  {bench_file.name}: {bench['images_per_s']:.0f} samples/s, a 200-epoch run {minutes:.1f} min of steps")
    return 0


def pack() -> int:
    """What this machine added under results/gpu-campaign, plus the logs, as a tar.gz cut into parts for $OUT."""
    out = Path(os.environ.get("OUT", WORK / "out"))
    out.mkdir(parents=True, exist_ok=True)
    archive = WORK / "campaign.tar.gz"
    added = sorted(set(COLLECTED.read_text().split())) if COLLECTED.is_file() else []
    with tarfile.open(archive, "w:gz") as tar:
        for relative in added:
            if (ROOT / relative).is_file():
                tar.add(ROOT / relative, arcname=relative)
        if LOGS.is_dir():
            tar.add(LOGS, arcname=str((RESULTS / "logs").relative_to(ROOT)))
    data = archive.read_bytes()
    parts = [data[start : start + PART_BYTES] for start in range(0, len(data), PART_BYTES)]
    if len(parts) > MAX_FILES:
        print(f"{len(data) / 2**20:.0f} MiB is more than {MAX_FILES} parts: commit some results, then pack again",
              file=sys.stderr)
        return 2
    for index, part in enumerate(parts):
        (out / f"campaign.tar.gz.part{index:02d}").write_bytes(part)
    print(f"packed {len(data) / 2**20:.1f} MiB in {len(parts)} parts under {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["prepare", "start", "run", "status", "pack", "unpack", "restore"])
    parser.add_argument("files_at", nargs="?", help="unpack: the folder the device tool returned the parts in")
    args = parser.parse_args()
    if args.command == "unpack":
        return unpack(args.files_at or ".")
    if args.command == "restore":
        restore_weights()
        return 0
    return {"prepare": prepare, "start": start, "run": run, "status": status, "pack": pack}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
