"""Image-file datasets: list files and class folders, their cards, subsets and bad input."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import IMAGE_CLASSES, write_image_tree
from glmc.cli import main
from glmc.data.datasets import DataConfig, create_dataset
from glmc.data.images import AS_LISTED, ImageFileDataset
from glmc.data.longtail import exponential_profile
from glmc.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tree")
    return root, write_image_tree(root)


def folder(root: Path, **changes) -> ImageFileDataset:
    return create_dataset(DataConfig(dataset="folder", data_root=str(root), **changes))


def image_list(root: Path, **changes) -> ImageFileDataset:
    values = {"train_list": "train.txt", "test_list": "test.txt", **changes}
    return create_dataset(DataConfig(dataset="image-list", data_root=str(root), **values))


def test_both_layouts_list_the_same_images_with_folder_class_names(tree):
    root, written = tree
    by_folder, by_list = folder(root), image_list(root)
    for dataset in (by_folder, by_list):
        assert dataset.class_names == list(IMAGE_CLASSES)
        assert dataset.class_counts == [9, 6, 3]  # the corrupt file is listed: only decoding finds it out
        assert dataset.split == AS_LISTED and dataset.imbalance_factor == 3.0
        assert sorted(zip(dataset.test.paths, dataset.test_labels.tolist())) == sorted(written["test"])
    assert sorted(zip(by_list.train.paths, by_list.train_labels.tolist())) == sorted(written["train"])
    assert by_folder.fingerprint == by_list.fingerprint  # names the images, not where they are listed


def test_fingerprint_changes_with_any_image_or_label(tree, tmp_path):
    root, written = tree
    base = image_list(root).fingerprint
    lines = (root / "train.txt").read_text().splitlines()
    (tmp_path / "fewer.txt").write_text("\n".join(lines[1:]) + "\n")
    relabelled = [lines[0].rsplit(" ", 1)[0] + " 2"] + lines[1:]
    (tmp_path / "relabelled.txt").write_text("\n".join(relabelled) + "\n")
    assert image_list(root, train_list=str(tmp_path / "fewer.txt")).fingerprint != base
    assert image_list(root, train_list=str(tmp_path / "relabelled.txt")).fingerprint != base


def test_class_ids_name_classes_when_folders_do_not(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    write_image_tree(root)
    lines = [line.split() for line in (root / "train.txt").read_text().splitlines()]
    # the same images, but labels no longer follow the folders: names fall back to the ids
    (root / "mixed.txt").write_text("".join(f"{path} {k % 3}\n" for k, (path, _) in enumerate(lines)))
    assert image_list(root, train_list="mixed.txt").class_names == ["0", "1", "2"]


def test_long_tailed_subset_follows_the_profile_and_protocol(tmp_path):
    root = tmp_path / "balanced"
    write_image_tree(root, train_counts=(8, 8, 8))
    for split in ("standard", "glmc"):
        dataset = folder(root, long_tailed_subset=True, imbalance_factor=4.0, split=split)
        assert dataset.class_counts == exponential_profile(8, 3, 4.0) == [8, 4, 2]
        assert dataset.split == split and dataset.imbalance_factor == 4.0
        assert set(dataset.train.paths) <= set(folder(root).train.paths)
    standard = folder(root, long_tailed_subset=True, imbalance_factor=4.0, split="standard")
    glmc = folder(root, long_tailed_subset=True, imbalance_factor=4.0, split="glmc")
    assert standard.fingerprint != glmc.fingerprint
    with pytest.raises(DataError, match="too few for a long-tailed subset"):
        folder(root, long_tailed_subset=True, imbalance_factor=100.0)


def test_validation_folder_and_list_are_optional_and_checked(tree, tmp_path):
    root, _ = tree
    assert folder(root).val is None
    dataset = image_list(root, val_list="test.txt")
    assert len(dataset.val) == len(dataset.test)
    with pytest.raises(DataError, match="image list not found"):
        image_list(root, val_list="missing.txt")


def test_the_training_images_can_be_evaluated_like_the_test_set(tree):
    root, _ = tree
    config = DataConfig(dataset="folder", data_root=str(root), image_size=24, resize=28, workers=1, unreadable="skip")
    dataset = create_dataset(config)
    train_set = dataset.test_set(config, 4, torch.device("cpu"), part="train")
    labels = torch.cat([batch_labels for _, batch_labels in train_set.batches()]).tolist()
    # every training image once, in order, but the tree's one corrupt JPEG (a "cross"), skipped as asked
    assert Counter(dataset.train_labels.tolist()) - Counter(labels) == Counter({IMAGE_CLASSES.index("cross"): 1})
    assert len(labels) == len(dataset.train_labels) - 1 and len(train_set.unreadable_paths()) == 1


def test_named_list_datasets_use_their_standard_file_names_and_class_counts(tree, tmp_path):
    root, _ = tree
    with pytest.raises(DataError, match="ImageNet_LT_train.txt"):
        create_dataset(DataConfig(dataset="imagenet-lt", data_root=str(root)))
    # our 3-class lists under ImageNet-LT's names: classes 3..999 have no training images
    shutil.copy(root / "train.txt", tmp_path / "ImageNet_LT_train.txt")
    shutil.copy(root / "test.txt", tmp_path / "ImageNet_LT_test.txt")
    lists = {"train_list": str(tmp_path / "ImageNet_LT_train.txt"), "test_list": str(tmp_path / "ImageNet_LT_test.txt")}
    with pytest.raises(DataError, match="997 of 1000 classes have no training images"):
        create_dataset(DataConfig(dataset="imagenet-lt", data_root=str(root), **lists))


# ---------------------------------------------------------------- bad input


def write_list(root: Path, name: str, lines: list[str]) -> str:
    (root / name).write_text("\n".join(lines) + "\n")
    return name


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("train/circle/404.jpg 0", r"bad.txt, line 2: image .*train/circle/404.jpg does not exist"),
        ("train/circle/000.jpg 7", r"bad.txt, line 2: label 7 is outside \[0, 3\)"),
        ("train/circle/000.jpg -1", r"bad.txt, line 2: label -1 is outside \[0, 3\)"),
        ("train/circle/000.jpg 0 extra", r"bad.txt, line 2: expected 2 columns .* found 3"),
        ("train/circle/000.jpg", r"bad.txt, line 2: expected 2 columns .* found 1"),
        ("train/circle/000.jpg zero", r"bad.txt, line 2: label 'zero' is not an integer"),
    ],
)
def test_bad_test_list_lines_name_the_file_and_line(tree, line, message):
    root, _ = tree
    name = write_list(root, "bad.txt", ["test/circle/000.jpg 0", line, "test/square/000.jpg 2"])
    with pytest.raises(DataError, match=message):
        image_list(root, test_list=name)


def test_missing_file_in_the_training_list_names_the_line(tree):
    root, _ = tree
    name = write_list(root, "bad_train.txt", ["train/circle/000.jpg 0", "", "train/cross/gone.jpg 1"])
    with pytest.raises(DataError, match=r"bad_train.txt, line 3: image .*gone.jpg does not exist"):
        image_list(root, train_list=name)


def test_a_class_without_training_images_is_an_error(tree):
    root, _ = tree
    name = write_list(root, "gap.txt", ["train/circle/000.jpg 0", "train/square/000.jpg 2"])
    with pytest.raises(DataError, match=r"gap.txt: 1 of 3 classes have no training images \(1\)"):
        image_list(root, train_list=name)


def test_empty_and_unknown_class_folders_are_errors(tmp_path):
    root = tmp_path / "tree"
    write_image_tree(root)
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"class folder .*train/empty holds no images"):
        folder(root)
    shutil.rmtree(root / "train" / "empty")
    (root / "test" / "triangle").mkdir()
    shutil.copy(root / "test" / "circle" / "000.jpg", root / "test" / "triangle")
    with pytest.raises(DataError, match=r"test/triangle is not a class of the training set"):
        folder(root)
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match=r"no folder .*test: the folder dataset needs"):
        folder(root)


def test_missing_list_options_and_root_are_errors(tree, tmp_path):
    root, _ = tree
    with pytest.raises(DataError, match="needs data.train_list and data.test_list"):
        create_dataset(DataConfig(dataset="image-list", data_root=str(root)))
    with pytest.raises(DataError, match="is not a folder"):
        image_list(tmp_path / "nowhere")


# ---------------------------------------------------------------- glmc data


def test_glmc_data_prints_cards_of_both_layouts(tree, capsys):
    root, _ = tree
    assert main(["data", "--dataset", "folder", "--data-root", str(root), "--json"]) == 0
    by_folder = json.loads(capsys.readouterr().out)
    assert main(["data", "--dataset", "image-list", "--data-root", str(root), "--train-list", "train.txt",
                 "--test-list", "test.txt", "--json"]) == 0
    by_list = json.loads(capsys.readouterr().out)
    assert by_folder["class_counts"] == by_list["class_counts"] == [9, 6, 3]
    assert by_folder["class_names"] == list(IMAGE_CLASSES) and by_folder["test_total"] == 9
    assert by_folder["fingerprint"] == by_list["fingerprint"]
    assert main(["data", "--dataset", "folder", "--data-root", str(root)]) == 0
    assert "circle" in capsys.readouterr().out


def test_glmc_data_reports_a_bad_list_in_one_line(tree, capsys):
    root, _ = tree
    write_list(root, "cols.txt", ["train/circle/000.jpg 0 0"])
    assert main(["data", "--dataset", "image-list", "--data-root", str(root), "--train-list", "cols.txt",
                 "--test-list", "test.txt"]) == 2
    err = capsys.readouterr().err
    assert "cols.txt, line 1: expected 2 columns" in err and err.count("\n") == 1


def test_autoaugment_and_cutout_are_refused_for_image_files_in_one_line(tree):
    root, _ = tree
    for option in ({"autoaugment": "cifar10"}, {"cutout": 16}):
        config = DataConfig(dataset="folder", data_root=str(root), **option)
        with pytest.raises(ConfigError, match=r"^data.autoaugment and data.cutout apply to datasets held in memory"):
            create_dataset(config).train_loader(config, 4, torch.device("cpu"))
