"""tools/gpu_queue.py: what travels to the GPU machine: the CIFAR-10 it carries (cut to what the CIFAR-10-LT presets
train on), a carried folder cleared of leftovers, a checkout without its committed weights when they would not fit, and
the partial runs a loan brings back to continue; the queue fitted to a loan (benches first, the compiled step only
where a run does not fit, the authors' row skipped when the CPU campaign finished it)."""

from __future__ import annotations

import dataclasses
import json
import importlib.util
import io
import math
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glmc.config import build_config, load_presets
from glmc.data.cifar_lt import cifar_lt_indices
from glmc.data.datasets import DATASETS

ROOT = Path(__file__).resolve().parents[1]
SHARED_NPZ = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
SHARED_MATERIALIZE = SHARED_NPZ / "materialize.py"


@pytest.fixture(scope="module")
def gpu_queue():
    spec = importlib.util.spec_from_file_location("gpu_queue", ROOT / "tools" / "gpu_queue.py")
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    sys.modules["gpu_queue"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    sys.path[:] = path  # the script puts the checkout's src/ and gpu/site first
    yield module
    del sys.modules["gpu_queue"]


def test_the_kept_training_images_are_every_cifar10_lt_presets_split_and_not_the_whole_set(gpu_queue):
    labels = np.random.RandomState(1).permutation(np.repeat(np.arange(10), 5000))
    kept = gpu_queue.presets_train_indices(labels)
    assert np.all(np.diff(kept) > 0)
    for imbalance_factor, split in [(100, "standard"), (10, "standard"), (100, "glmc"), (50, "glmc"), (10, "glmc")]:
        assert np.isin(cifar_lt_indices("cifar10-lt", labels, imbalance_factor, split), kept).all()
    assert len(kept) < 0.6 * len(labels)  # what makes the carry lighter
    assert not np.isin(cifar_lt_indices("cifar10-lt", labels, 2, "standard"), kept).all()  # no preset trains at IF 2


def fake_npz(path: Path, train: np.ndarray, test: np.ndarray) -> None:
    """The shared npz's layout: JPEG bytes of N x 32 x 32 x 3 images, back to back, with offsets."""

    def encode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blobs = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=90)
            blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
        return np.concatenate(blobs), np.concatenate([[0], np.cumsum([len(blob) for blob in blobs])]).astype(np.int64)

    (train_jpeg, train_offsets), (test_jpeg, test_offsets) = encode(train), encode(test)
    np.savez(path, train_jpeg=train_jpeg, train_offsets=train_offsets, train_labels=np.arange(len(train)) % 10,
             test_jpeg=test_jpeg, test_offsets=test_offsets, test_labels=np.arange(len(test)) % 10,
             classes=np.array([f"class{k}" for k in range(10)]))


def unpickle(path: Path) -> dict:
    with open(path, "rb") as file:
        return pickle.load(file, encoding="bytes")


@pytest.mark.skipif(not SHARED_MATERIALIZE.is_file(), reason=f"the shared materialize.py is not at {SHARED_MATERIALIZE}")
def test_a_trimmed_copy_materialises_the_kept_images_exactly_and_the_others_black(gpu_queue, tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8), rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    full, trimmed = tmp_path / "full", tmp_path / "trimmed"
    for folder in (full, trimmed):
        folder.mkdir()
        shutil.copy2(SHARED_MATERIALIZE, folder / "materialize.py")
    fake_npz(full / "cifar10_jpeg.npz", train, test)
    keep = np.array([0, 3, 4, 17, 29])

    assert gpu_queue.trim_cifar(full / "cifar10_jpeg.npz", trimmed / "cifar10_jpeg.npz", keep) == len(keep)
    assert (trimmed / "cifar10_jpeg.npz").stat().st_size < (full / "cifar10_jpeg.npz").stat().st_size
    gpu_queue.materialise(full / "materialize.py", full / "data")  # nothing emptied: the script as it is
    gpu_queue.materialise(trimmed / "materialize.py", trimmed / "data")

    batches = "data/cifar-10-batches-py"
    reference, cut = unpickle(full / batches / "data_batch_1"), unpickle(trimmed / batches / "data_batch_1")
    assert cut[b"labels"] == reference[b"labels"]
    assert np.array_equal(cut[b"data"][keep], reference[b"data"][keep])
    assert reference[b"data"][keep].any()
    assert not np.delete(cut[b"data"], keep, axis=0).any()
    assert np.array_equal(unpickle(trimmed / batches / "test_batch")[b"data"], unpickle(full / batches / "test_batch")[b"data"])


@pytest.mark.skipif(not (SHARED_NPZ / "cifar10_jpeg.npz").is_file(), reason=f"the real CIFAR-10 npz is not in {SHARED_NPZ}")
def test_the_trimmed_real_cifar10_gives_every_cifar10_lt_preset_the_same_training_and_test_sets(gpu_queue, cifar10_root,
                                                                                             tmp_path):
    shutil.copy2(SHARED_MATERIALIZE, tmp_path / "materialize.py")
    gpu_queue.trim_cifar(SHARED_NPZ / "cifar10_jpeg.npz", tmp_path / "cifar10_jpeg.npz")
    gpu_queue.materialise(tmp_path / "materialize.py", tmp_path / "data")
    settings = {(config.data.imbalance_factor, config.data.split): config.data for config in map(build_config, load_presets())
                if config.data.dataset == "cifar10-lt"}
    assert len(settings) >= 4
    for data in settings.values():
        full, trimmed = (DATASETS.get("cifar10-lt")(dataclasses.replace(data, data_root=str(root))) for root in (cifar10_root, tmp_path / "data"))
        assert (trimmed.fingerprint, trimmed.content_digest()) == (full.fingerprint, full.content_digest())


def test_prepare_clears_what_a_smoke_check_left_in_the_carried_folder_and_keeps_what_it_carries(gpu_queue, tmp_path,
                                                                                             monkeypatch):
    work = tmp_path / "gpu"
    for name in ("data/cifar-10-batches-py/data_batch_1", "campaign/t/run/checkpoint_last.pt", "queue.pid",
                 "wheels/kornia.whl", "cifar10_jpeg.npz", "materialize.py", "COMMIT"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text("x")
    monkeypatch.setattr(gpu_queue, "ROOT", tmp_path)
    monkeypatch.setattr(gpu_queue, "WORK", work)
    gpu_queue.clear_leftovers()
    assert {path.name for path in work.iterdir()} == {"wheels", "cifar10_jpeg.npz", "materialize.py", "COMMIT"}
    assert (work / "wheels" / "kornia.whl").is_file()


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, capture_output=True,
                          text=True, check=True).stdout


def test_parked_weights_leave_the_carried_checkout_and_come_back_from_git_byte_for_byte(gpu_queue, tmp_path, monkeypatch):
    run = tmp_path / "results" / "gpu-campaign" / "table" / "run" / "seed-0"
    run.mkdir(parents=True)
    weights = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    (run / "checkpoint_last-fp16.safetensors").write_bytes(weights)
    (run / "summary.json").write_text("{}")  # what the queue's skip reads: it must stay
    (tmp_path / "notes-fp16.safetensors").write_bytes(b"x")  # outside results/: not the campaign's
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "results")
    (run.parent / "seed-1").mkdir()
    (run.parent / "seed-1" / "checkpoint_last-fp16.safetensors").write_bytes(b"new")  # unpacked, not yet committed
    monkeypatch.setattr(gpu_queue, "ROOT", tmp_path)
    carried_before = sum(gpu_queue.checkout_files().values())

    parked = gpu_queue.park_weights()
    weights_file = "results/gpu-campaign/table/run/seed-0/checkpoint_last-fp16.safetensors"
    assert parked == {weights_file: len(weights)}
    assert sum(gpu_queue.checkout_files().values()) == carried_before - len(weights)
    assert (run / "summary.json").is_file() and (tmp_path / "notes-fp16.safetensors").is_file()
    assert (run.parent / "seed-1" / "checkpoint_last-fp16.safetensors").read_bytes() == b"new"

    assert gpu_queue.restore_weights() == [weights_file]
    assert (tmp_path / weights_file).read_bytes() == weights
    assert git(tmp_path, "status", "--porcelain", "--untracked-files=no") == ""
    assert gpu_queue.restore_weights() == []  # nothing parked: nothing to do


# ---------------------------------------------------------------- the queue fitted to a loan


def write_bench(gpu_queue, name: str, ms_per_step: float, window: tuple[float, float] = (0.0, 1.0)) -> None:
    (gpu_queue.RESULTS / "bench").mkdir(parents=True, exist_ok=True)
    (gpu_queue.RESULTS / "bench" / name).write_text(json.dumps({"ms_per_step": ms_per_step, "steps_per_epoch": 194,
                                                                 "images_per_s": 64000 / ms_per_step,
                                                                 "timed_window": list(window)}))


@pytest.fixture
def sandbox(gpu_queue, tmp_path, monkeypatch):
    """The script's folders moved under tmp_path."""
    machine(gpu_queue, monkeypatch, tmp_path)
    return tmp_path


def test_the_queue_benches_first_and_skips_the_authors_row_the_cpu_campaign_finished(gpu_queue, sandbox):
    items = gpu_queue.queue()
    assert items[0].name == "1 bench" and all("bench" in " ".join(command) for command in items[0].commands())
    (twins,) = items[1].commands()  # then the question every CPU run asks: is bf16 what costs 5-8 points?
    assert [twins[i + 1] for i, arg in enumerate(twins) if arg == "--only"] == [
        "LDAM-DRW IF100 own recipe fp32", "LDAM-DRW IF100 own recipe bf16"] and "gpu_tables.yaml" in " ".join(twins)
    authors = next(item for item in items if item.name.startswith("3 authors IF100"))
    assert not authors.done()
    cpu_run = sandbox / "results" / "cifar10-lt" / "cifar10-lt-if100-authors-cpu"
    cpu_run.mkdir(parents=True)
    (cpu_run / "summary.json").write_text("{}")
    assert authors.done()
    names = [item.name for item in items]
    assert names.index("5 standard IF100: GLMC, CE, Balanced Softmax") + 1 == names.index(
        "5b standard IF100, Balanced Softmax at its own paper's recipe")
    for item, preset in ((items[names.index("5b standard IF100, Balanced Softmax at its own paper's recipe")],
                          "cifar10-lt-if100-balanced-softmax-own-recipe"),
                         (items[names.index("5c standard IF100, LDAM-DRW at its own paper's recipe")],
                          "cifar10-lt-if100-ldam-drw-own-recipe")):
        (command,) = item.commands()
        assert command[command.index("--only") + 1].endswith(", own recipe") and not item.done()
        cpu_row = sandbox / "results" / "cifar10-lt" / f"{preset}-cpu"  # the queue's run names (tools/cpu_queue.yaml)
        cpu_row.mkdir(parents=True)
        (cpu_row / "summary.json").write_text("{}")
        assert item.done()


def compile_flag(command: list[str]) -> str | None:
    assert ("--compile" in command) == ("--compile-mode" in command)
    return command[command.index("--compile-mode") + 1] if "--compile-mode" in command else None


def test_what_a_loan_makes_is_written_where_git_ignores_it_and_a_result_counts_made_or_committed(gpu_queue):
    # The device copies the checkout afresh for every call and keeps only ignored paths between calls: a result
    # written among the checkout's own files could be gone by the call that packs it.
    made = gpu_queue.FRESH / "bench" / "gpu-x.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(made.relative_to(ROOT))], cwd=ROOT)
    assert ignored.returncode == 0 and gpu_queue.returned_name(made) == "results/gpu-campaign/bench/gpu-x.json"
    assert gpu_queue.bench("p", "gpu-x.json")[-1].endswith(f"{made}.tmp && mv {made}.tmp {made}")


def test_an_item_is_done_by_results_made_this_loan_or_committed(gpu_queue, sandbox):
    item = gpu_queue.queue()[0]
    assert item.name == "1 bench" and not item.done()
    write_bench(gpu_queue, "gpu-cifar10-lt-if100-authors.json", 10.0)  # committed (RESULTS)
    (gpu_queue.FRESH / "bench").mkdir(parents=True)
    (gpu_queue.FRESH / "bench" / "gpu-cifar10-lt-if100.json").write_text('{"ms_per_step": 5.0}')  # made this loan
    assert item.done() and gpu_queue.bench_ms("gpu-cifar10-lt-if100.json") == 5.0


def test_the_compiled_benches_run_only_when_the_authors_run_does_not_fit_and_the_fastest_mode_is_kept(gpu_queue,
                                                                                                      sandbox):
    authors = "cifar10-lt-if100-authors"
    item = next(item for item in gpu_queue.queue() if item.name.startswith("2 compiled"))
    assert item.commands() == []  # no bench yet: nothing to decide
    write_bench(gpu_queue, f"gpu-{authors}.json", 10.0)  # 200 epochs: 6.5 min, fits a loan
    assert item.commands() == []
    write_bench(gpu_queue, f"gpu-{authors}.json", 20.0)  # 12.9 min: does not fit
    inductor, cudagraphs = (command[-1] for command in item.commands())
    assert "train.compile=true" in inductor and "train.compile_mode=default" in inductor
    assert f"gpu-{authors}-compiled.json" in inductor
    assert "train.compile_mode=reduce-overhead" in cudagraphs and f"gpu-{authors}-cudagraphs.json" in cudagraphs
    authors_row = next(item for item in gpu_queue.queue() if item.name.startswith("3 authors IF100"))
    assert compile_flag(authors_row.commands()[0]) is None
    write_bench(gpu_queue, f"gpu-{authors}-compiled.json", 15.0)
    assert compile_flag(authors_row.commands()[0]) == "default"
    assert len(item.commands()) == 1  # what is left to measure: the CUDA graphs
    write_bench(gpu_queue, f"gpu-{authors}-cudagraphs.json", 6.0)
    assert compile_flag(authors_row.commands()[0]) == "reduce-overhead" and item.commands() == []
    (gpu_queue.RESULTS / "bench" / f"gpu-{authors}-cudagraphs.json").write_text('{"failed": true}')  # it failed
    assert compile_flag(authors_row.commands()[0]) == "default" and item.commands() == []  # measured: not again
    write_bench(gpu_queue, f"gpu-{authors}-compiled.json", 25.0)  # slower compiled: the plain step
    assert compile_flag(authors_row.commands()[0]) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where a CUDA bench fails")
def test_a_compiled_bench_that_fails_is_recorded_as_failed_and_the_queue_goes_on(gpu_queue, sandbox, capsys):
    authors = "cifar10-lt-if100-authors"
    write_bench(gpu_queue, f"gpu-{authors}.json", 20.0)
    (gpu_queue.FRESH / "bench").mkdir(parents=True)  # as `start` makes it
    (command, _) = gpu_queue.compile_bench_if_needed(authors)
    assert subprocess.run(command, capture_output=True, timeout=120).returncode == 0  # glmc bench on CUDA, here none
    assert gpu_queue.bench_result(f"gpu-{authors}-compiled.json")["failed"] is True
    assert gpu_queue.bench_ms(f"gpu-{authors}-compiled.json") is None and gpu_queue.fastest_compile(authors) is None
    assert not list((gpu_queue.FRESH / "bench").glob("*.tmp"))
    gpu_queue.status()
    assert f"gpu-{authors}-compiled.json: failed" in capsys.readouterr().out


def test_runs_share_the_gpu_only_where_two_do_not_fit_and_sharing_was_measured_faster_side_by_side(gpu_queue, sandbox):
    authors = "cifar10-lt-if100-authors"
    item = next(item for item in gpu_queue.queue() if item.name.startswith("4 shared"))
    two_runs = next(item for item in gpu_queue.queue() if item.name.startswith("6 authors IF50"))
    one, two = gpu_queue.shared_bench_names(authors)
    assert item.commands() == []  # no bench yet: nothing to decide
    write_bench(gpu_queue, f"gpu-{authors}.json", 5.0)  # 200 epochs: 3.2 min, two of them fit a loan
    assert item.commands() == []
    write_bench(gpu_queue, f"gpu-{authors}.json", 10.0)  # 6.5 min: two do not fit
    (command,) = item.commands()
    assert " ".join(command).count(" bench ") == 2 and one in command[-1] and two in command[-1]
    assert "--steps 300" in command[-1] and "train.compile" not in command[-1]
    assert "--jobs 1" in " ".join(two_runs.commands()[0])

    write_bench(gpu_queue, one, 10 / 0.6, (100.0, 110.0))  # each at 0.6 of one alone, side by side: 1.2x together
    write_bench(gpu_queue, two, 10 / 0.6, (101.0, 111.0))
    assert gpu_queue.sharing_gain(authors) == pytest.approx(1.2)
    assert "--jobs 2" in " ".join(two_runs.commands()[0]) and item.commands() == []  # measured once
    write_bench(gpu_queue, two, 10 / 0.6, (105.0, 115.0))  # half of each window alone: the figures do not count
    assert gpu_queue.sharing_gain(authors) is None and "--jobs 1" in " ".join(two_runs.commands()[0])
    write_bench(gpu_queue, two, 10 / 0.52, (101.0, 111.0))  # 1.12x together: over SHARING_GAIN
    assert "--jobs 2" in " ".join(two_runs.commands()[0])
    write_bench(gpu_queue, two, 10 / 0.45, (101.0, 111.0))  # 1.05x: not worth it
    assert "--jobs 1" in " ".join(two_runs.commands()[0])

    write_bench(gpu_queue, f"gpu-{authors}-compiled.json", 8.0)  # compiled is faster alone: sharing is measured
    (gpu_queue.RESULTS / "bench" / one).unlink()                 # compiled, and against the compiled step
    assert "train.compile=true" in item.commands()[0][-1]
    write_bench(gpu_queue, one, 8 / 0.55, (100.0, 110.0))
    write_bench(gpu_queue, two, 8 / 0.55, (101.0, 111.0))
    assert gpu_queue.sharing_gain(authors) == pytest.approx(1.1)


def test_the_shared_bench_command_runs_its_benches_at_once_and_fails_if_any_fails(gpu_queue, sandbox, monkeypatch):
    write_bench(gpu_queue, "gpu-cifar10-lt-if100.json", 10.0)
    marks = sandbox / "marks"
    marks.mkdir()

    def fake_bench(preset, name, *sets, steps, **_):  # each waits until both have started: only true concurrency ends
        return f"touch {marks}/{name}; for i in $(seq 50); do [ $(ls {marks} | wc -l) -ge 2 ] && exit 0; sleep 0.1; done; exit 1"
    monkeypatch.setattr(gpu_queue, "bench_line", fake_bench)
    (command,) = gpu_queue.shared_bench_if_needed("cifar10-lt-if100")
    assert subprocess.run(command, timeout=30).returncode == 0 and len(list(marks.iterdir())) == 2
    monkeypatch.setattr(gpu_queue, "bench_line", lambda preset, name, *sets, **_: "exit 3" if name.endswith("2-of-2.json") else "true")
    (command,) = gpu_queue.shared_bench_if_needed("cifar10-lt-if100")
    assert subprocess.run(command, timeout=30).returncode != 0


@pytest.mark.parametrize("windows, overlap", [([(0, 10), (1, 11)], True), ([(0, 10), (5, 15)], False),
                                              ([(0, 10), (0, 2)], False), ([(3, 3), (3, 3)], False)])
def test_side_by_side_means_every_timed_window_mostly_shared(gpu_queue, windows, overlap):
    assert gpu_queue.windows_overlap(windows) is overlap


def machine(gpu_queue, monkeypatch, root: Path) -> None:
    """The script's folders moved to `root`: the other machine, or this one again."""
    monkeypatch.setattr(gpu_queue, "ROOT", root)
    monkeypatch.setattr(gpu_queue, "WORK", root / "gpu")
    monkeypatch.setattr(gpu_queue, "CAMPAIGN", root / "gpu" / "campaign")
    monkeypatch.setattr(gpu_queue, "RESULTS", root / "results" / "gpu-campaign")
    monkeypatch.setattr(gpu_queue, "FRESH", root / "gpu" / "results")
    monkeypatch.setattr(gpu_queue, "LOGS", root / "gpu" / "logs")
    monkeypatch.setattr(gpu_queue, "COLLECTED", root / "gpu" / "collected.txt")
    monkeypatch.setattr(gpu_queue, "OVERFLOW", root / "gpu" / "overflow.json")


def test_partial_runs_come_back_over_several_calls_and_replace_the_copy_that_went_out(gpu_queue, sandbox, tmp_path,
                                                                                      monkeypatch, capsys):
    from glmc.config import build_config
    from glmc.trainer import train

    gpu = tmp_path / "gpu-machine"
    machine(gpu_queue, monkeypatch, gpu)
    small = gpu_queue.CAMPAIGN / "t" / "small" / "seed-0"
    train(build_config("quickstart", {"train.device": "cpu", "train.epochs": "3", "train.max_steps": "25"}), small, quiet=True)
    (small / "summary.json").unlink()  # as a run stopped mid-way leaves it
    big = gpu_queue.CAMPAIGN / "t" / "big" / "seed-0"
    shutil.copytree(small, big)
    checkpoint = (small / "checkpoint_last.pt").stat().st_size
    monkeypatch.setattr(gpu_queue, "PART_BYTES", checkpoint // 6)  # the small run alone takes several calls' parts
    monkeypatch.setattr(gpu_queue, "PARTS_PER_CALL", 2)
    monkeypatch.setattr(gpu_queue, "MAX_RETURN_CALLS", 5)  # room for 1.67 checkpoints: the small run, not the big one
    with open(big / "checkpoint_last.pt", "ab") as grown:  # its checksum no longer matches: the .prev copy is read
        grown.write(b"\0" * checkpoint)
    assert [(run.parent.name, epoch) for run, epoch, _ in gpu_queue.partial_runs()] == [("big", 1), ("small", 1)]
    finished = gpu_queue.FRESH / "t" / "done" / "seed-0"  # a run that went out partial and the loan finished
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text("{}")
    gpu_queue.note_collected(finished)

    monkeypatch.setenv("OUT", str(tmp_path / "out1"))
    assert gpu_queue.pack() == 0
    parts = math.ceil((gpu_queue.WORK / "campaign.tar.gz").stat().st_size / gpu_queue.PART_BYTES)
    calls = math.ceil(parts / 2)
    assert calls >= 2
    outs = [tmp_path / f"out{call}" for call in range(1, calls + 1)]
    for call, out in enumerate(outs[1:], 2):
        monkeypatch.setenv("OUT", str(out))
        assert gpu_queue.pack(call) == 0
    assert gpu_queue.pack(calls + 1) == 2
    assert [len(list(out.iterdir())) for out in outs] == [2] * (calls - 1) + [parts - 2 * (calls - 1)]
    printed = capsys.readouterr()
    assert "big/seed-0 (1 of 3 epochs) stays behind" in printed.out and "small/seed-0: 1 of 3 epochs" in printed.out
    assert "the rest comes back with `pack 2`" in printed.out and f"no call {calls + 1}" in printed.err

    here = tmp_path / "here"
    machine(gpu_queue, monkeypatch, here)
    monkeypatch.setattr(gpu_queue, "restore_weights", lambda: [])  # no git here
    went_out = here / "gpu" / "campaign" / "t" / "small" / "seed-0"
    went_out.mkdir(parents=True)
    (went_out / "checkpoint_last.pt.prev").write_text("an older piece")  # the copy that went out, left behind here
    (here / "gpu" / "campaign" / "t" / "done" / "seed-0").mkdir(parents=True)
    (here / "gpu" / "campaign" / "t" / "done" / "seed-0" / "checkpoint_last.pt").write_text("went out partial")
    assert gpu_queue.unpack([str(outs[0])]) == 2
    assert "come back with `pack 2`" in capsys.readouterr().err
    assert gpu_queue.unpack([str(out) for out in outs]) == 0
    assert (went_out / "checkpoint_last.pt").read_bytes() == (small / "checkpoint_last.pt").read_bytes()
    assert not (went_out / "checkpoint_last.pt.prev").exists()
    assert not (here / "gpu" / "campaign" / "t" / "big").exists()
    assert (here / "results" / "gpu-campaign" / "t" / "done" / "seed-0" / "summary.json").is_file()
    assert not (here / "gpu" / "campaign" / "t" / "done" / "seed-0").exists()  # finished there: not carried again
    (here / "gpu" / "COMMIT").write_text("x")
    gpu_queue.clear_leftovers()  # what `prepare` does before the next loan
    assert (went_out / "checkpoint_last.pt").is_file() and (went_out / "config.yaml").is_file()
    assert [run for run, _, _ in gpu_queue.partial_runs()] == [went_out]
    assert not (here / "gpu" / "campaign.tar.gz").exists()


def copy_path(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target) if source.is_dir() else shutil.copy2(source, target)


def test_partial_runs_too_large_for_one_carry_travel_in_parts_that_start_checks_and_puts_together(gpu_queue, tmp_path,
                                                                                                monkeypatch, capsys):
    here, there = tmp_path / "here", tmp_path / "there"
    machine(gpu_queue, monkeypatch, here)
    rng = np.random.default_rng(0)
    files = {"gpu/COMMIT": b"abc\n", "gpu/cifar10_jpeg.npz": b"npz", "gpu/wheels/kornia.whl": b"whl",
             "gpu/campaign/t/wide/seed-0/checkpoint_last.pt": rng.bytes(250_000),
             "gpu/campaign/t/wide/seed-0/checkpoint_last.pt.sha256": b"0" * 64,
             "gpu/campaign/t/wide/seed-0/config.yaml": b"model: wide\n"}
    for name, content in files.items():
        (here / name).parent.mkdir(parents=True, exist_ok=True)
        (here / name).write_bytes(content)

    folders = gpu_queue.split_overflow(100_000)
    assert folders == ["gpu-more-1", "gpu-more-2", "gpu-more-3"]
    assert all((here / folder / "part").stat().st_size <= 100_000 for folder in folders)
    calls = gpu_queue.carries(folders)
    assert calls[0] == ["gpu/COMMIT", "gpu/cifar10_jpeg.npz", "gpu/overflow.json", "gpu/wheels"]  # not gpu/campaign
    assert calls[1:] == [[folder] for folder in folders]
    assert (here / "gpu/campaign/t/wide/seed-0/checkpoint_last.pt").is_file()  # the runs stay here as they are

    machine(gpu_queue, monkeypatch, there)
    assert gpu_queue.start() == 2  # a fresh machine that got the overflow first has no gpu/
    assert "is not on this machine" in capsys.readouterr().err
    for number, carry in enumerate(calls):  # each call adds its carry to what the earlier ones left there
        for path in carry:
            copy_path(here / path, there / path)
        if number < len(calls) - 1:
            assert gpu_queue.start() == 0 and not gpu_queue.LOGS.exists()  # the queue waits for every part
            assert f"waiting for {', '.join(folders[number:])}" in capsys.readouterr().out
    good = (there / "gpu-more-2" / "part").read_bytes()
    (there / "gpu-more-2" / "part").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(SystemExit, match="SHA-256"):
        gpu_queue.rejoin_overflow()
    (there / "gpu-more-2" / "part").write_bytes(good)
    gpu_queue.rejoin_overflow()
    for name, content in files.items():
        assert (there / name).read_bytes() == content
    assert not any(there.glob("gpu-more-*")) and not gpu_queue.OVERFLOW.exists()

    machine(gpu_queue, monkeypatch, here)  # the next `prepare` starts from the runs here, never from old parts
    gpu_queue.clear_overflow()
    assert not any(here.glob("gpu-more-*")) and not gpu_queue.OVERFLOW.exists()
    assert (here / "gpu/campaign/t/wide/seed-0/checkpoint_last.pt").read_bytes() == files[
        "gpu/campaign/t/wide/seed-0/checkpoint_last.pt"]


def test_a_loan_starts_the_queue_lets_it_work_and_packs_unless_parts_are_still_to_come(gpu_queue, sandbox,
                                                                                       monkeypatch):
    calls = []
    monkeypatch.setattr(gpu_queue, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(gpu_queue, "start", lambda: calls.append("start") or 0)
    monkeypatch.setattr(gpu_queue, "status", lambda: calls.append("status") or 0)
    monkeypatch.setattr(gpu_queue, "pack", lambda call=1: calls.append(f"pack {call}") or 0)
    monkeypatch.setattr(gpu_queue, "running", lambda: calls.count("start") and time.time() < finished_at)
    finished_at = time.time() + 0.3  # the queue ends before the loan's minutes are up: pack at once
    assert gpu_queue.loan(minutes=1) == 0 and calls == ["start", "status", "pack 1"]
    assert time.time() - finished_at < 1  # waited for the queue, not for the minutes
    calls.clear()
    finished_at = time.time() + 60  # the minutes are up first
    assert gpu_queue.loan(minutes=0.01) == 0 and calls == ["start", "status", "pack 1"] and time.time() < finished_at
    calls.clear()
    gpu_queue.WORK.mkdir(parents=True)
    gpu_queue.OVERFLOW.write_text('{"parts": ["gpu-more-1"], "files": []}')  # start waits for a part: nothing to pack
    assert gpu_queue.loan(minutes=1) == 0 and calls == ["start"]


def test_pack_stops_the_queue_and_waits_for_what_it_started_to_save(gpu_queue, sandbox, tmp_path):
    saved = tmp_path / "saved"
    trainer = ("import signal, sys, time\n"
               "def save(*_):\n"
               f"    time.sleep(0.5); open({str(saved)!r}, 'w').write('checkpoint'); sys.exit(143)\n"
               "signal.signal(signal.SIGTERM, save)\n"
               "time.sleep(60)\n")
    queue = subprocess.Popen([sys.executable, "-c", trainer], start_new_session=True)  # leads its own group, as `start`'s
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "queue.pid").write_text(str(queue.pid))
    time.sleep(0.5)  # its handler is in place
    assert gpu_queue.running()
    gpu_queue.stop_queue()
    assert saved.read_text() == "checkpoint" and not gpu_queue.running()  # waited: a zombie does not count as running
    assert queue.wait(timeout=5) == 143
