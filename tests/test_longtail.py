"""Imbalance profiles, split protocols and fingerprints: golden numbers and the algorithms."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from glmc.data.cifar import CIFAR10, load_cifar
from glmc.data.datasets import DataConfig, create_dataset
from glmc.data.longtail import exponential_profile, long_tailed_indices, split_fingerprint
from glmc.errors import ConfigError, DataError
from glmc.shots import AUTHORS, STANDARD

from conftest import synthetic_labels

# METHOD.md section 4: (classes, n_max, IF) -> total, many, medium, few
GOLDEN = {
    (10, 5000, 100): (12406, 8, 2, 0),
    (10, 5000, 50): (13996, 9, 1, 0),
    (10, 5000, 10): (20431, 10, 0, 0),
    (100, 500, 100): (10847, 35, 35, 30),
    (100, 500, 50): (12608, 41, 41, 18),
    (100, 500, 10): (19573, 69, 31, 0),
}


@pytest.mark.parametrize("setting", GOLDEN)
def test_profile_totals_and_shots_match_the_published_table(setting):
    num_classes, n_max, factor = setting
    counts = exponential_profile(n_max, num_classes, factor)
    sizes = STANDARD.sizes(counts)
    assert (sum(counts), sizes["many"], sizes["medium"], sizes["few"]) == GOLDEN[setting]
    assert counts[0] == n_max
    assert counts[-1] == int(n_max / factor)
    assert counts == sorted(counts, reverse=True)


def test_cifar10_if100_class_counts_are_the_known_ones():
    assert exponential_profile(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_imbalance_factor_one_is_balanced():
    assert exponential_profile(500, 100, 1) == [500] * 100


@pytest.mark.parametrize("factor", [0.99, 0, -5, float("nan")])
def test_imbalance_factor_below_one_is_refused(factor):
    with pytest.raises(ConfigError, match="imbalance factor must be >= 1"):
        exponential_profile(5000, 10, factor)


def test_authors_shot_bounds_move_twenty_into_few():
    counts = [200, 100, 21, 20, 19]
    assert STANDARD.sizes(counts) == {"many": 1, "medium": 3, "few": 1}
    assert AUTHORS.sizes(counts) == {"many": 1, "medium": 2, "few": 2}


def reference_standard_split(labels, counts):
    """Cao et al.'s code, written independently with numpy's global legacy RNG."""
    np.random.seed(0)
    kept = []
    for k, n_k in zip(np.unique(labels), counts):
        idx = np.where(labels == k)[0]
        np.random.shuffle(idx)
        kept.extend(idx[:n_k].tolist())
    return np.array(kept)


def reference_glmc_split(labels, counts):
    """The authors' code: seed 3407, per class a choice without replacement in file order."""
    np.random.seed(3407)
    kept = []
    for k, n_k in enumerate(counts):
        original = np.arange(len(labels))[(labels >= k) & (labels < k + 1)]
        kept.extend(original[np.random.choice(len(original), n_k, replace=False)].tolist())
    return np.array(kept)


REFERENCES = {"standard": reference_standard_split, "glmc": reference_glmc_split}


@pytest.mark.parametrize("protocol", REFERENCES)
@pytest.mark.parametrize("num_classes, n_max, factor", [(10, 5000, 100), (100, 500, 50)])
def test_protocols_equal_the_reference_code_on_generated_labels(protocol, num_classes, n_max, factor):
    labels = synthetic_labels(num_classes, n_max)
    counts = exponential_profile(n_max, num_classes, factor)
    ours = long_tailed_indices(labels, counts, protocol)
    assert np.array_equal(ours, REFERENCES[protocol](labels, counts))
    assert np.bincount(labels[ours], minlength=num_classes).tolist() == counts
    assert len(np.unique(ours)) == len(ours)


def test_the_two_protocols_choose_different_images():
    labels = synthetic_labels(10, 5000)
    counts = exponential_profile(5000, 10, 100)
    assert split_fingerprint(long_tailed_indices(labels, counts, "standard")) != split_fingerprint(
        long_tailed_indices(labels, counts, "glmc")
    )


def test_too_few_images_in_a_class_is_a_data_error():
    labels = synthetic_labels(10, 100)
    with pytest.raises(DataError, match="class 0 has 100 training images, the profile needs 5000"):
        long_tailed_indices(labels, exponential_profile(5000, 10, 100), "standard")


def test_unknown_protocol_names_the_close_match():
    with pytest.raises(ConfigError, match="did you mean 'glmc'"):
        long_tailed_indices(np.zeros(3, dtype=np.int64), [1], "glmcc")


def test_fingerprint_is_sha256_of_sorted_little_endian_int64():
    indices = np.array([7, 2, 40000], dtype=np.int32)
    expected = hashlib.sha256(np.array([2, 7, 40000], dtype="<i8").tobytes()).hexdigest()
    assert split_fingerprint(indices) == f"sha256:{expected}"
    assert split_fingerprint(indices[::-1]) == split_fingerprint(indices)
    assert split_fingerprint([2, 7, 40001]) != split_fingerprint(indices)


# Pinned on real CIFAR-10 (official order and labels): a silent change to a protocol breaks these.
REAL_FINGERPRINTS = {
    ("standard", 100): "sha256:f7669c469c9dd",
    ("standard", 50): "sha256:620184a289667",
    ("standard", 10): "sha256:448d422a25745",
    ("glmc", 100): "sha256:5dcc44fd189db",
    ("glmc", 50): "sha256:c0c42696258e3",
    ("glmc", 10): "sha256:c72739052ad3e",
}


@pytest.mark.real_data
@pytest.mark.parametrize("protocol, factor", REAL_FINGERPRINTS)
def test_real_cifar10_lt_matches_reference_split_and_pinned_fingerprint(cifar10_root, protocol, factor):
    dataset = create_dataset(DataConfig(data_root=str(cifar10_root), imbalance_factor=factor, split=protocol))
    labels = load_cifar(CIFAR10, cifar10_root).train.labels
    counts = exponential_profile(5000, 10, factor)
    assert np.array_equal(dataset.train_indices, REFERENCES[protocol](labels, counts))
    assert dataset.fingerprint.startswith(REAL_FINGERPRINTS[(protocol, factor)])
    assert dataset.class_counts == counts
    assert np.array_equal(dataset.train_labels, labels[dataset.train_indices])
    assert np.bincount(dataset.test_labels).tolist() == [1000] * 10
