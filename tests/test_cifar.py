"""CIFAR readers: official files, other tools' copies, bad folders, and the download."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from glmc.data.cifar import CIFAR10, CIFAR100, download_cifar, load_cifar
from glmc.data.datasets import DataConfig, create_dataset
from glmc.errors import DataError

from conftest import write_pickle, write_small_cifar10


@pytest.mark.real_data
def test_real_cifar10_has_the_official_sizes_and_names(cifar10_root):
    data = load_cifar(CIFAR10, cifar10_root)
    assert data.train.images.shape == (50000, 3, 32, 32) and data.train.images.dtype == np.uint8
    assert data.test.images.shape == (10000, 3, 32, 32)
    assert np.bincount(data.train.labels).tolist() == [5000] * 10
    assert data.class_names[:3] == ["airplane", "automobile", "bird"]


@pytest.mark.parametrize(
    "protocol, str_keys, image_shape",
    [(2, False, (3072,)), (4, True, (3072,)), (5, True, (3, 32, 32)), (2, True, (3, 32, 32))],
)
def test_copies_written_by_other_tools_load_identically(tmp_path, protocol, str_keys, image_shape):
    official = load_cifar(CIFAR10, write_small_cifar10(tmp_path / "official"))
    copy = load_cifar(CIFAR10, write_small_cifar10(tmp_path / "copy", protocol=protocol, str_keys=str_keys, image_shape=image_shape))
    assert np.array_equal(official.train.images, copy.train.images)
    assert np.array_equal(official.test.labels, copy.test.labels)
    assert copy.class_names == [f"c{k}" for k in range(10)]


def test_rows_are_read_in_channel_major_order(tmp_path):
    root = write_small_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "rb") as file:
        entry = pickle.load(file, encoding="bytes")
    row = np.zeros(3072, dtype=np.uint8)
    row[1024:2048] = 7  # the green plane
    entry[b"data"][0] = row
    write_pickle(batch, entry)
    image = load_cifar(CIFAR10, root).train.images[0]
    assert (image[1] == 7).all() and (image[0] == 0).all() and (image[2] == 0).all()


def test_cifar100_layout_reads_fine_labels_and_builds_the_lt_profile(cifar100_root):
    dataset = create_dataset(DataConfig(dataset="cifar100-lt", data_root=str(cifar100_root), imbalance_factor=100))
    card = dataset.card()
    assert (card.num_classes, card.total, card.many, card.medium, card.few) == (100, 10847, 35, 35, 30)
    assert card.test_total == 10000 and np.bincount(dataset.test_labels).tolist() == [100] * 100
    assert card.class_names[5] == "class_05"
    # generated pixels equal the label: images and labels stay paired through the split
    assert (dataset.train_images[:, 0, 0, 0] == dataset.train_labels).all()


def test_missing_folder_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as error:
        load_cifar(CIFAR100, tmp_path)
    message = str(error.value)
    assert str(tmp_path / "cifar-100-python") in message and "--download" in message and "\n" not in message


def test_partial_folder_names_the_missing_files(tmp_path):
    write_small_cifar10(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError, match="incomplete \\(missing data_batch_3\\)"):
        load_cifar(CIFAR10, tmp_path)


def corrupt(tmp_path, edit):
    write_small_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    with open(path, "rb") as file:
        entry = pickle.load(file, encoding="bytes")
    edit(entry)
    write_pickle(path, entry)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda e: e.pop(b"labels"), "no 'labels' entry"),
        (lambda e: e.update({b"data": e[b"data"][:, :100]}), "'data' has shape \\(60, 100\\)"),
        (lambda e: e.update({b"data": e[b"data"].astype(np.float32)}), "dtype float32, expected uint8"),
        (lambda e: e.update({b"labels": e[b"labels"][:-1]}), "expected \\(59, 3072\\)"),
        (lambda e: e.update({b"labels": [10] + e[b"labels"][1:]}), "1 labels outside \\[0, 10\\), e.g. 10"),
        (lambda e: e.update({b"labels": [-1] + e[b"labels"][1:]}), "outside \\[0, 10\\)"),
        (lambda e: e.update({b"data": e[b"data"].tolist()}), "'data' is a list"),
    ],
)
def test_malformed_batches_are_one_line_errors_naming_the_file(tmp_path, edit, message):
    corrupt(tmp_path, edit)
    with pytest.raises(DataError, match=message) as error:
        load_cifar(CIFAR10, tmp_path)
    assert "data_batch_2" in str(error.value) and "\n" not in str(error.value)


def test_truncated_pickle_is_a_data_error(tmp_path):
    write_small_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch is not a readable CIFAR pickle"):
        load_cifar(CIFAR10, tmp_path)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_small_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "batches.meta", {b"label_names": RunsCode()})
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar(CIFAR10, tmp_path)
    assert not (tmp_path / "pwned").exists()


def make_archive(source_root, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source_root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_checks_md5_and_extracts(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = make_archive(write_small_cifar10(tmp_path / "source"), archive)
    target = download_cifar(CIFAR10, tmp_path / "root", url=archive.as_uri(), md5=md5)
    assert target == tmp_path / "root" / "cifar-10-batches-py"
    assert load_cifar(CIFAR10, tmp_path / "root").train.images.shape == (300, 3, 32, 32)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["cifar-10-batches-py"]  # no leftovers


def test_download_with_wrong_md5_leaves_nothing_behind(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_archive(write_small_cifar10(tmp_path / "source"), archive)
    with pytest.raises(DataError, match="MD5"):
        download_cifar(CIFAR10, tmp_path / "root", url=archive.as_uri(), md5="0" * 32)
    assert list((tmp_path / "root").iterdir()) == []


def test_archive_escaping_its_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="refusing"):
        download_cifar(CIFAR10, tmp_path / "root", url=archive.as_uri(), md5=md5)
    assert not (tmp_path / "escaped").exists()


def test_offline_download_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="could not download .*offline.*cifar-10-batches-py/ sits inside --data-root"):
        download_cifar(CIFAR10, tmp_path, url="http://127.0.0.1:9/cifar-10-python.tar.gz")
