"""Shared fixtures: the real CIFAR-10 folder and generated CIFAR folders.

Real data comes from the folder named by GLMC_CIFAR10_ROOT (it holds
cifar-10-batches-py/); failing that, from ../shared/data/cifar10-jpeg, materialised once
per session. Tests that need it are skipped, with the reason, when neither exists.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REAL_DATA_ENV = "GLMC_CIFAR10_ROOT"
# what a metrics.jsonl record holds of the machine rather than of the training: left out where two runs are compared
RECORD_TIMINGS = ("seconds", "other_cpu_share")
SHARED_CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg"


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    configured = os.environ.get(REAL_DATA_ENV)
    if configured:
        root = Path(configured)
        if not (root / "cifar-10-batches-py").is_dir():
            pytest.skip(f"{REAL_DATA_ENV}={configured} has no cifar-10-batches-py/")
        return root
    if not (SHARED_CIFAR10 / "materialize.py").is_file():
        pytest.skip(f"real CIFAR-10 not found: set {REAL_DATA_ENV} or provide {SHARED_CIFAR10}")
    root = tmp_path_factory.mktemp("cifar10")
    done = subprocess.run([sys.executable, str(SHARED_CIFAR10 / "materialize.py"), str(root)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"could not materialise {SHARED_CIFAR10}: {done.stderr.strip().splitlines()[-1:]}")
    return root


def write_pickle(path: Path, entry: dict, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(entry, file, protocol=protocol)


def synthetic_labels(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def write_cifar100(root: Path, per_class_train: int = 500, per_class_test: int = 100) -> Path:
    """A generated folder in the official CIFAR-100 layout (train, test, meta)."""
    folder = root / "cifar-100-python"
    for name, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = synthetic_labels(100, per_class, seed=len(name))
        images = np.repeat(labels.astype(np.uint8)[:, None], 3072, axis=1)  # N x 3072, pixel = label
        write_pickle(
            folder / name,
            {b"data": images, b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(), b"filenames": []},
        )
    names = [f"class_{k:02d}".encode() for k in range(100)]
    write_pickle(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": names[:20]})
    return root


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory) -> Path:
    return write_cifar100(tmp_path_factory.mktemp("cifar100"))


def write_small_cifar10(root: Path, per_class: int = 6, protocol: int = 2, str_keys: bool = False, image_shape=(3072,)) -> Path:
    """A tiny folder in the CIFAR-10 layout, optionally as another tool might write it."""
    key = (lambda k: k) if str_keys else (lambda k: k.encode())
    folder = root / "cifar-10-batches-py"
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        labels = synthetic_labels(10, per_class, seed=len(name))
        images = rng.integers(0, 256, (len(labels), *image_shape), dtype=np.uint8)
        write_pickle(folder / name, {key("data"): images, key("labels"): labels.tolist()}, protocol)
    write_pickle(folder / "batches.meta", {key("label_names"): [f"c{k}" for k in range(10)]}, protocol)
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished two-epoch GLMC run (ResNet-8 on synthetic-lt, CPU) for tests that read run folders."""
    from glmc.config import build_config
    from glmc.trainer import train

    output = tmp_path_factory.mktemp("tiny_run")
    config = build_config(None, {"data.dataset": "synthetic-lt", "model.backbone": "resnet8", "optim.lr": "0.05",
                                 "train.epochs": "2", "train.batch_size": "128", "train.device": "cpu"})
    train(config, output, quiet=True)
    return output


# ---------------------------------------------------------------- image-file datasets

IMAGE_CLASSES = ("circle", "cross", "square")  # sorted: the folder dataset's label order
CLASS_COLOURS = ((220, 40, 40), (40, 200, 60), (50, 70, 230))  # one dominant colour per class: learnable


def write_cosine_checkpoint(source: Path, output: Path, ldam_scale: float | None = None) -> Path:
    """`source` with LDAM's cosine prediction head (fc_cb without its bias); with `ldam_scale`, as an LDAM-DRW run
    with that s, whose logits the model scales."""
    from glmc.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(source)
    checkpoint["config"]["model"]["classifier"] = "cosine"
    if ldam_scale is not None:
        checkpoint["config"]["method"] = {"name": "ldam-drw", "ldam_scale": ldam_scale}
    del checkpoint["model"]["heads.fc_cb.bias"]
    save_checkpoint(output, checkpoint)
    return output


def class_image(label: int, index: int, size: tuple[int, int]):
    """A PIL RGB image of class `label`: its colour, noise and a varying size."""
    from PIL import Image

    rng = np.random.default_rng([label, index])
    width, height = size
    pixels = np.clip(np.array(CLASS_COLOURS[label]) + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_image_tree(root: Path, train_counts=(9, 5, 3), test_per_class: int = 3) -> dict:
    """A small JPEG tree in the folder layout (root/train/<class>/, root/test/<class>/) with the
    awkward kinds of file users have: grayscale and CMYK JPEGs, a PNG with alpha, a palette PNG,
    and one corrupt JPEG (train/cross/corrupt.jpg). Also writes ImageNet-LT style list files
    (train.txt, test.txt: `relative/path label`) naming the same images.

    Returns {"corrupt": relative path, "train": [(path, label)], "test": [(path, label)]}.
    """
    entries: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for part, counts in (("train", train_counts), ("test", (test_per_class,) * len(IMAGE_CLASSES))):
        for label, (name, count) in enumerate(zip(IMAGE_CLASSES, counts)):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image = class_image(label, index + (1000 if part == "test" else 0), (40 + 7 * index, 36 + 5 * (index % 3)))
                kind = index % 5 if part == "train" else 0
                if kind == 1:
                    relative, saved = f"{part}/{name}/{index:03d}.jpg", image.convert("L")
                elif kind == 2:
                    relative, saved = f"{part}/{name}/{index:03d}.jpg", image.convert("CMYK")
                elif kind == 3:
                    relative, saved = f"{part}/{name}/{index:03d}.png", image.convert("RGBA")
                elif kind == 4:
                    relative, saved = f"{part}/{name}/{index:03d}.png", image.convert("P")
                else:
                    relative, saved = f"{part}/{name}/{index:03d}.jpg", image
                saved.save(root / relative)
                entries[part].append((relative, label))
    corrupt = "train/cross/corrupt.jpg"
    good = (root / entries["train"][0][0]).read_bytes()
    (root / corrupt).write_bytes(good[: len(good) // 3])  # a JPEG cut short: the header reads, decoding fails
    entries["train"].append((corrupt, 1))
    for part in ("train", "test"):
        (root / f"{part}.txt").write_text("".join(f"{path} {label}\n" for path, label in entries[part]))
    return {"corrupt": corrupt, **entries}


# ---------------------------------------------------------------- refusals


def refusal(capsys, *args: str) -> str:
    """`glmc ARGS` run in this process, expected to refuse: exit status 2, nothing on stdout, one line on
    stderr and no traceback (argparse's own refusals print their usage first); returns stderr.

    The families of bad inputs check their messages this way, seconds cheaper each than a Python process of
    their own; tests that run glmc as a command check the same contract where a process matters."""
    from glmc.cli import main

    capsys.readouterr()
    by_argparse = False
    try:
        status = main(list(args))
    except SystemExit as exit:  # argparse: the usage, then the error
        status, by_argparse = exit.code, True
    out, err = capsys.readouterr()
    assert status == 2 and out == "" and "Traceback" not in err, (status, out, err)
    lines = err.splitlines()
    if by_argparse:
        assert lines[0].startswith("usage: ") and ": error: " in lines[-1], err
    else:
        assert len(lines) == 1, err
    return err


# ---------------------------------------------------------------- torchrun

TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1",  # two processes on two cores: one thread each
                "PYTHONFAULTHANDLER": "1"}  # SIGABRT prints every thread's stack: what a hung rank waited on


def torchrun_command(*target: str, processes: int = 2, restarts: int = 0) -> list[str]:
    """torchrun of `target` (a script, or "-m", a module and its arguments) in `processes` CPU processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            f"--max-restarts={restarts}", *target]


def run_torchrun(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a torchrun command to its end; past `timeout` seconds, fail with where each process waited."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV)
    return finish_torchrun(process, timeout)


def finish_torchrun(process: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Wait for a torchrun started by the test (which may have signalled it); past `timeout` seconds, fail with
    where each process waited."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun ran past {timeout:.0f} s and was aborted; its stderr ends:\n{abort_process_tree(process)[-6000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def wait_until(condition, process: subprocess.Popen, timeout: float, waiting_for: str) -> None:
    """Poll `condition` while `process` (a glmc or torchrun the test started) runs; fail at once if the process ends
    first, and past `timeout` seconds abort its whole tree and fail with where each of its processes waited."""
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process ended (exit {process.returncode}) before {waiting_for}; stderr ends:\n{process.communicate()[1][-2000:]}")
        if time.time() > deadline:
            pytest.fail(f"{waiting_for}: not reached in {timeout:.0f} s; stderr ends:\n{abort_process_tree(process)[-6000:]}")
        time.sleep(0.05)


def abort_process_tree(process: subprocess.Popen) -> str:
    """Abort a process (torchrun, glmc) and every process below it; return its captured stderr, which ends with
    their threads' stacks.

    torchrun starts its ranks in sessions of their own, so killing torchrun alone would leave them
    (and their loader workers) running: every descendant is aborted, which prints its threads'
    stacks to the captured stderr (PYTHONFAULTHANDLER), then killed."""
    family = [*descendants(process.pid), process.pid]  # torchrun last: it reports its ranks' ends
    for sig in (signal.SIGABRT, signal.SIGKILL):
        for pid in family:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)
    return process.communicate()[1] or ""


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, deepest first."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [below for child in map(int, children) for below in (*descendants(child), child)]
