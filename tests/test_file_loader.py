"""The image-file loader: decoding in workers, crops, device colour, sharding, unreadable files, training."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import IMAGE_CLASSES, write_image_tree
from helpers.locked_items import HELD, LockedItems
from glmc.augment import CifarAugment, ImageNetColour, Normalise, blur_kernel_size
from glmc.cli import main
from glmc.data.files import (
    CROP_RATIO,
    CROP_SCALE,
    FileTestSet,
    FileTwoStreamLoader,
    UnreadableImage,
    centre_view,
    decode_rgb,
    make_loader,
    random_resized_box,
)
from glmc.data.images import ImageFiles
from glmc.data.loader import TwoStreamLoader
from glmc.distributed import Shard
from glmc.errors import DataError

SIZE = 24
NORMALISE = Normalise((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tree")
    return root, write_image_tree(root)


def files_of(root: Path, entries: list[tuple[str, int]]) -> ImageFiles:
    return ImageFiles(str(root), [path for path, _ in entries], np.array([label for _, label in entries], dtype=np.int64))


def readable(tree) -> ImageFiles:
    root, written = tree
    return files_of(root, [entry for entry in written["train"] if entry[0] != written["corrupt"]])


def loader(files: ImageFiles, **options) -> FileTwoStreamLoader:
    counts = np.bincount(files.labels, minlength=3).tolist()
    settings = dict(batch_size=6, device=torch.device("cpu"), colour=ImageNetColour(NORMALISE, SIZE), image_size=SIZE,
                    seed=5, workers=0, resample_weighting=1.0) | options
    return FileTwoStreamLoader(files, counts, **settings)


def flat(batch) -> list[torch.Tensor]:
    return [batch.uniform.view1, batch.uniform.view2, batch.uniform.labels,
            batch.resampled.view1, batch.resampled.view2, batch.resampled.labels]


# ---------------------------------------------------------------- decoding and views


def test_every_kind_of_image_decodes_as_rgb_and_the_corrupt_one_says_why(tree):
    root, written = tree
    modes = set()
    for path, _ in written["train"]:
        if path == written["corrupt"]:
            with pytest.raises(UnreadableImage):
                decode_rgb(str(root / path))
            continue
        with Image.open(root / path) as original:
            modes.add(original.mode)
            size = original.size
        image = decode_rgb(str(root / path))
        assert image.mode == "RGB" and image.size == size
    assert {"L", "CMYK", "RGBA", "P", "RGB"} <= modes  # the tree really holds every awkward kind


def test_grayscale_stays_gray_and_alpha_is_dropped_not_blended(tmp_path):
    gray = Image.fromarray(np.full((10, 12), 77, dtype=np.uint8), "L")
    gray.save(tmp_path / "g.png")
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert (np.asarray(decode_rgb(str(tmp_path / "g.png"))) == 77).all()
    assert (np.asarray(decode_rgb(str(tmp_path / "a.png")))[..., 0] == 200).all()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 600), st.integers(1, 600), st.integers(0, 2**32 - 1))
def test_random_resized_box_lies_inside_with_bounded_area_and_ratio(width, height, seed):
    left, top, right, bottom = random_resized_box(width, height, np.random.default_rng(seed))
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    w, h = right - left, bottom - top
    fallback = (left, top) == ((width - w) // 2, (height - h) // 2)
    if not fallback:  # a drawn box: its area and ratio are in range (up to rounding to whole pixels)
        assert CROP_SCALE[0] * width * height * 0.8 - 2 * (w + h) <= w * h <= width * height
        assert CROP_RATIO[0] * 0.8 <= w / h <= CROP_RATIO[1] * 1.25 or min(w, h) < 8


def test_test_view_is_the_centre_of_the_resized_image():
    columns = np.tile(np.arange(200, dtype=np.uint8), (100, 1))  # 100 x 200, value = column
    image = Image.fromarray(np.stack([columns] * 3, axis=-1), "RGB")
    view = centre_view(image, size=40, resize=50)  # 100 x 200 -> 50 x 100 -> centre 40 x 40
    assert view.shape == (40, 40, 3)
    middle = view[20, :, 0].astype(float)
    assert abs(middle.mean() - 99.5) < 3  # centred: the mean column of the original
    assert np.all(np.diff(middle) >= 0)  # not mirrored


def test_blur_kernel_is_a_tenth_of_the_image_and_odd():
    assert blur_kernel_size(224) == 23 and blur_kernel_size(32) == 3 and blur_kernel_size(8) == 3


def test_device_colour_is_reproducible_by_seed_and_changes_pixels():
    colour = ImageNetColour(NORMALISE, 32)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    a, b, c = colour(images, 1), colour(images, 1), colour(images, 2)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, NORMALISE(images), atol=1e-3)  # jitter always applies
    state = torch.get_rng_state()
    colour(images, 3)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left as it was


# ---------------------------------------------------------------- the training loader


def test_batches_do_not_depend_on_the_number_of_workers(tree):
    files = readable(tree)
    serial = [flat(batch) for batch in loader(files, workers=0).epoch(1)]
    parallel = [flat(batch) for batch in loader(files, workers=2).epoch(1)]
    assert len(serial) == len(parallel) == math.ceil(len(files) / 6)
    for one, other in zip(serial, parallel):
        assert all(torch.equal(x, y) for x, y in zip(one, other))


def test_workers_start_while_another_thread_holds_a_lock():
    """A fork would copy the lock held and the worker would wait on it for ever (a rare hang of
    evaluations under torchrun, whose process group keeps threads of its own)."""
    batches = []
    reader = threading.Thread(target=lambda: batches.extend(
        indices.tolist() for indices, *_ in make_loader(LockedItems(), iter([[0, 1], [2]]), workers=1, pin=False)),
        daemon=True)
    with HELD:
        reader.start()
        reader.join(timeout=60)
    assert not reader.is_alive(), "the worker hung on a lock held in the loading process when it started"
    assert batches == [[0, 1], [2]]


def test_resuming_mid_epoch_yields_the_same_batches(tree):
    files = readable(tree)
    full = [flat(batch) for batch in loader(files).epoch(0)]
    resumed = [flat(batch) for batch in loader(files).epoch(0, start_step=1)]
    assert len(resumed) == len(full) - 1
    for one, other in zip(full[1:], resumed):
        assert all(torch.equal(x, y) for x, y in zip(one, other))


def test_views_are_crops_of_the_right_size_and_epochs_differ(tree):
    files = readable(tree)
    first = next(iter(loader(files).epoch(0)))
    assert first.uniform.view1.shape == (6, 3, SIZE, SIZE) and first.resampled.view2.shape == (6, 3, SIZE, SIZE)
    assert not torch.equal(first.uniform.view1, first.uniform.view2)  # two independent views
    other = next(iter(loader(files).epoch(1)))
    assert not torch.equal(first.uniform.labels, other.uniform.labels) or not torch.equal(first.uniform.view1, other.uniform.view1)


def test_resampled_stream_follows_the_sampler(tree):
    files = readable(tree)  # counts 9 / 5 / 3: q = 1 draws every class equally often
    labels = torch.cat([batch.resampled.labels for epoch in range(20) for batch in loader(files).epoch(epoch)])
    share = torch.bincount(labels, minlength=3).double() / len(labels)
    assert torch.allclose(share, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.06)


def test_shards_split_both_streams_without_overlap(tree):
    files = readable(tree)
    whole = loader(files, batch_size=8)
    parts = [loader(files, batch_size=8, shard=Shard(rank, 2)) for rank in range(2)]
    for step, keys in enumerate(whole.keys(0, 0)):
        shard_keys = [list(part.keys(0, step))[0] for part in parts]
        assert sorted(shard_keys[0] + shard_keys[1]) == sorted(keys)  # together: the single-process batch
        assert len(shard_keys[0]) == len(shard_keys[1])
        if step == 0:
            break


def test_partial_last_batch_too_small_for_every_rank_is_dropped(tree):
    files = readable(tree)  # 17 images: 2 full batches of 8 and 1 left over
    assert len(loader(files, batch_size=8)) == 3
    assert len(loader(files, batch_size=8, shard=Shard(0, 2))) == 2


def test_device_loader_shards_split_the_global_batch():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 2, 2).contiguous()
    labels = torch.arange(20) % 2
    identity = CifarAugment(Normalise((0.0,) * 3, (1 / 255,) * 3), padding=0, flip=False)  # float pixel values
    whole = TwoStreamLoader(images, labels, [10, 10], 8, identity, seed=3)
    parts = [TwoStreamLoader(images, labels, [10, 10], 8, identity, seed=3, shard=Shard(rank, 2)) for rank in range(2)]
    for batch, *shard_batches in zip(whole.epoch(0), *(part.epoch(0) for part in parts)):
        for stream in ("uniform", "resampled"):
            ids = lambda b: getattr(b, stream).view1[:, 0, 0, 0].tolist()  # noqa: E731
            assert sorted(ids(shard_batches[0]) + ids(shard_batches[1])) == sorted(ids(batch))


# ---------------------------------------------------------------- unreadable images


def test_an_unreadable_image_fails_naming_its_file(tree):
    root, written = tree
    files = files_of(root, written["train"])
    with pytest.raises(DataError, match=r"cannot read image .*train/cross/corrupt.jpg: .*data.unreadable=skip"):
        for _ in loader(files, batch_size=18).epoch(0):
            pass


def test_skipped_images_are_counted_and_streams_stay_equal(tree):
    root, written = tree
    files = files_of(root, written["train"])
    skipping = loader(files, batch_size=18, unreadable="skip")  # one step holds every image, the corrupt one too
    batch = next(iter(skipping.epoch(0)))
    assert skipping.unreadable.skipped_paths() == [written["corrupt"]]
    assert len(batch.uniform.labels) == len(batch.resampled.labels) <= 17


def test_test_set_views_in_order_and_shards_partition_it(tree):
    root, written = tree
    files = files_of(root, written["test"])
    whole = FileTestSet(files, NORMALISE, 4, torch.device("cpu"), image_size=SIZE, resize=28, workers=0)
    images, labels = map(torch.cat, zip(*whole.batches()))
    assert images.shape == (9, 3, SIZE, SIZE) and labels.tolist() == files.labels.tolist()
    again = torch.cat([x for x, _ in FileTestSet(files, NORMALISE, 5, torch.device("cpu"), image_size=SIZE, resize=28,
                                                 workers=2).batches()])
    assert torch.equal(images, again)  # deterministic, whatever the batching and workers
    shards = [torch.cat([x for x, _ in FileTestSet(files, NORMALISE, 4, torch.device("cpu"), image_size=SIZE, resize=28,
                                                   workers=0, shard=Shard(rank, 2)).batches()]) for rank in range(2)]
    assert torch.equal(shards[0], images[0::2]) and torch.equal(shards[1], images[1::2])


# ---------------------------------------------------------------- training on image files


TRAIN_ARGS = ["--set", "data.dataset=folder", "--set", "model.backbone=resnet10", "--set", f"data.image_size={SIZE}",
              "--set", "data.resize=28", "--set", "data.workers=1", "--set", "data.unreadable=skip",
              "--batch-size", "6", "--epochs", "2", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def folder_run(tree, tmp_path_factory) -> Path:
    root, _ = tree
    output = tmp_path_factory.mktemp("runs") / "folder"
    assert main(["train", "--data-root", str(root), "--output", str(output), *TRAIN_ARGS]) == 0
    return output


def test_a_few_steps_on_image_files_write_a_named_run(folder_run, tree):
    root, written = tree
    summary = json.loads((folder_run / "summary.json").read_text())
    assert summary["steps"] == 2 * 3 and summary["dataset"]["class_names"] == list(IMAGE_CLASSES)
    assert summary["unreadable_images"] == {"count": 1, "files": [written["corrupt"]]}
    assert summary["final"]["num_samples"] == 9
    assert (folder_run / "classes.txt").read_text().splitlines() == [f"{k}\t{n}" for k, n in enumerate(IMAGE_CLASSES)]


def test_eval_and_predict_of_an_image_file_checkpoint(folder_run, tree, capsys):
    root, written = tree
    checkpoint = str(folder_run / "checkpoint_last.pt")
    assert main(["eval", checkpoint, "--device", "cpu", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    final = json.loads((folder_run / "summary.json").read_text())["final"]
    assert metrics["per_class"] == final["per_class"] and metrics["top1"] == final["top1"]
    assert main(["predict", checkpoint, str(root / "test" / "square"), "--device", "cpu", "--json", "--topk", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and {top["class"] for top in lines[0]["top"]} == set(IMAGE_CLASSES)


def test_resume_on_image_files_continues_exactly(tree, folder_run, tmp_path):
    root, _ = tree
    output = tmp_path / "stopped"
    assert main(["train", "--data-root", str(root), "--output", str(output), *TRAIN_ARGS, "--max-steps", "4"]) == 0
    assert main(["train", "--resume", str(output), "--set", "train.max_steps=none", "--quiet"]) == 0
    resumed = torch.load(output / "checkpoint_last.pt", weights_only=True)["model"]
    uninterrupted = torch.load(folder_run / "checkpoint_last.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)


def test_calibrate_and_report_work_on_an_image_file_run(folder_run, tmp_path, capsys):
    checkpoint = folder_run / "checkpoint_last.pt"
    output = tmp_path / "maxnorm.pt"
    assert main(["calibrate", str(checkpoint), "--method", "maxnorm", "--set", "epochs=1", "--output", str(output),
                 "--device", "cpu", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert output.is_file() and record["after"]["num_samples"] == 9
    assert main(["report", str(folder_run), "--output", str(tmp_path / "report"), "--device", "cpu"]) == 0
    confusion = json.loads((folder_run / "report" / "confusion.json").read_text())["confusion"]  # cached in the run
    final = json.loads((folder_run / "summary.json").read_text())["final"]
    assert sum(map(sum, confusion)) == 9
    assert [100 * row[k] / sum(row) for k, row in enumerate(confusion)] == pytest.approx(final["per_class"], abs=1e-3)
