"""`glmc predict`: rows and probabilities for generated images, the checkpoint's own preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_cosine_checkpoint
from glmc.checkpoint import load_checkpoint, save_checkpoint
from glmc.cli import main
from glmc.data.datasets import DataConfig, create_dataset
from glmc.models.heads import prediction_head
from glmc.predict import Predictor, predict_files

NUM_TEST_PNGS = 12


@pytest.fixture(scope="module")
def test_images():
    """The first synthetic-lt test images and labels (N x 3 x 32 x 32 uint8, N)."""
    dataset = create_dataset(DataConfig(dataset="synthetic-lt"))
    return dataset.test_images[:NUM_TEST_PNGS], dataset.test_labels[:NUM_TEST_PNGS]


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image.transpose(1, 2, 0))  # 3 x H x W -> H x W x 3


@pytest.fixture(scope="module")
def image_folder(test_images, tmp_path_factory):
    """Exact test images as RGB PNGs, plus other modes, sizes and formats in a subfolder."""
    folder = tmp_path_factory.mktemp("images")
    images, _ = test_images
    for index, image in enumerate(images):
        to_pil(image).save(folder / f"test_{index:02d}.png")
    other = folder / "other"
    other.mkdir()
    sample = to_pil(images[0])
    sample.convert("L").save(other / "grey.png")
    sample.convert("RGBA").save(other / "alpha.png")
    sample.convert("P").save(other / "palette.png")
    sample.resize((64, 48)).save(other / "larger.JPG", quality=90)
    (folder / "notes.txt").write_text("not an image")  # ignored: folders are searched for PNG/JPEG
    return folder


def test_predicts_one_row_per_image_with_probabilities_summing_to_one(tiny_run, image_folder):
    predictor = Predictor(tiny_run / "checkpoint_last.pt", device="cpu")
    rows = list(predict_files(predictor, [image_folder], topk=10, batch_size=5))
    assert len(rows) == NUM_TEST_PNGS + 4
    for row in rows:
        assert sum(row.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert row.probabilities == sorted(row.probabilities, reverse=True)
        assert sorted(row.indices) == list(range(10)) and row.classes[0] == predictor.class_names[row.indices[0]]


def test_png_test_images_get_the_same_prediction_as_the_evaluation(tiny_run, image_folder, test_images):
    images, _ = test_images
    predictor = Predictor(tiny_run / "checkpoint_last.pt", device="cpu")
    rows = list(predict_files(predictor, [image_folder / f"test_{i:02d}.png" for i in range(NUM_TEST_PNGS)], topk=1))
    expected = predictor.probabilities(images).argmax(dim=1).tolist()
    assert [row.indices[0] for row in rows] == expected


@pytest.mark.parametrize("scale", [10.0, 30.0])
def test_an_ldam_checkpoint_predicts_the_softmax_of_its_scaled_cosines(tiny_run, test_images, tmp_path, scale):
    # LDAM's loss trains softmax(s cos): the probabilities are those, not the near-uniform softmax of bare cosines
    predictor = Predictor(write_cosine_checkpoint(tiny_run / "checkpoint_last.pt", tmp_path / "ldam.pt", ldam_scale=scale),
                          device="cpu")
    images, _ = test_images
    with torch.no_grad():  # the bare cosines, from the head itself
        features = predictor.model(predictor.normalise(torch.from_numpy(images))).feature
        cosines = prediction_head(predictor.model)(features)
    assert bool((cosines.abs() <= 1 + 1e-5).all())
    expected = torch.softmax(scale * cosines.double(), dim=1)
    assert torch.allclose(predictor.probabilities(images).double(), expected, atol=1e-5)
    assert predictor.probabilities(images).max(dim=1).values.mean() > torch.softmax(cosines, dim=1).max(dim=1).values.mean()


def test_checkpoint_stores_its_preprocessing(tiny_run):
    checkpoint = load_checkpoint(tiny_run / "checkpoint_last.pt")
    dataset = create_dataset(DataConfig(dataset="synthetic-lt"))
    assert checkpoint["mean"] == pytest.approx(list(dataset.mean)) and checkpoint["std"] == pytest.approx(list(dataset.std))
    assert checkpoint["image_size"] == [32, 32]


def test_older_checkpoints_rebuild_the_dataset_for_their_preprocessing(tiny_run, image_folder, tmp_path):
    checkpoint = load_checkpoint(tiny_run / "checkpoint_last.pt")
    for key in ("mean", "std", "image_size"):
        del checkpoint[key]
    save_checkpoint(tmp_path / "old.pt", checkpoint)
    old = Predictor(tmp_path / "old.pt", device="cpu")
    new = Predictor(tiny_run / "checkpoint_last.pt", device="cpu")
    assert old.preprocessing == new.preprocessing
    rows_old = list(predict_files(old, [image_folder], topk=3))
    rows_new = list(predict_files(new, [image_folder], topk=3))
    assert np.allclose([r.probabilities for r in rows_old], [r.probabilities for r in rows_new])


def test_cli_json_lines(tiny_run, image_folder, capsys):
    assert main(["predict", str(tiny_run / "checkpoint_last.pt"), str(image_folder / "other"), str(image_folder / "test_00.png"),
                 "--topk", "3", "--json", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 5 and rows[-1]["path"].endswith("test_00.png")
    assert all(len(row["top"]) == 3 and {"class", "index", "probability"} <= set(row["top"][0]) for row in rows)


def test_cli_text_rows(tiny_run, image_folder, capsys):
    assert main(["predict", str(tiny_run / "checkpoint_last.pt"), str(image_folder / "other"), "--topk", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(len(line.split("  ")) == 3 for line in lines)


@pytest.mark.parametrize("content", [b"not a png at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_an_unreadable_image_is_one_line_naming_the_file(tiny_run, image_folder, tmp_path, capsys, content):
    broken = tmp_path / "broken.png"
    broken.write_bytes(content)
    assert main(["predict", str(tiny_run / "checkpoint_last.pt"), str(image_folder / "test_00.png"), str(broken),
                 "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # checked before anything is printed
    assert f"cannot read image {broken}" in captured.err and captured.err.count("\n") == 1


def test_missing_paths_and_bad_topk_are_errors(tiny_run, tmp_path, capsys):
    checkpoint = str(tiny_run / "checkpoint_last.pt")
    assert main(["predict", checkpoint, str(tmp_path / "nowhere.png"), "--device", "cpu"]) == 2
    assert "no such image file or folder" in capsys.readouterr().err
    assert main(["predict", checkpoint, str(tmp_path), "--device", "cpu"]) == 2
    assert "no images (.jpg, .jpeg, .png" in capsys.readouterr().err
    assert main(["predict", checkpoint, str(tmp_path), "--topk", "0", "--device", "cpu"]) == 2
    assert "--topk must be at least 1" in capsys.readouterr().err


def test_probabilities_are_a_softmax_of_the_logits(tiny_run, test_images):
    predictor = Predictor(tiny_run / "checkpoint_last.pt", device="cpu")
    images, _ = test_images
    probabilities = predictor.probabilities(images)
    assert probabilities.shape == (NUM_TEST_PNGS, 10)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(NUM_TEST_PNGS), atol=1e-5)
