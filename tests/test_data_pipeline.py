"""Samplers, batched augmentation and the device-resident two-stream loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glmc.augment import CifarAugment, Normalise, random_crop_flip
from glmc.data.loader import TwoStreamLoader, evaluation_batches
from glmc.data.samplers import class_probabilities, image_weights
from glmc.errors import ConfigError

COUNTS = [400, 120, 40, 10]


def long_tailed_labels(counts=COUNTS) -> torch.Tensor:
    return torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])


def drawn_class_frequencies(scheme: str, q: float, draws: int = 200_000) -> np.ndarray:
    labels = long_tailed_labels()
    weights = image_weights(labels, COUNTS, scheme, q)
    picks = torch.multinomial(weights, draws, replacement=True, generator=torch.Generator().manual_seed(0))
    return np.bincount(labels[picks].numpy(), minlength=len(COUNTS)) / draws


@pytest.mark.parametrize("q", [0.0, 0.2, 0.5, 1.0, 2.0])
def test_power_sampler_draws_classes_in_proportion_to_n_to_the_one_minus_q(q):
    counts = np.array(COUNTS, dtype=float)
    expected = counts ** (1 - q) / (counts ** (1 - q)).sum()
    observed = drawn_class_frequencies("power", q)
    # 200k draws: binomial standard error < 0.0012, so 0.005 is over four of them
    np.testing.assert_allclose(observed, expected, atol=0.005)


def test_q_zero_is_uniform_over_images_and_q_one_balances_classes():
    np.testing.assert_allclose(class_probabilities(COUNTS, "power", 0.0), np.array(COUNTS) / sum(COUNTS))
    np.testing.assert_allclose(class_probabilities(COUNTS, "power", 1.0), [0.25] * 4)


def test_reversed_sampler_draws_classes_in_proportion_to_nmax_over_n():
    inverse = 1 / np.array(COUNTS, dtype=float)
    np.testing.assert_allclose(drawn_class_frequencies("reversed", 0.0), inverse / inverse.sum(), atol=0.005)


def test_sampler_options_are_validated():
    with pytest.raises(ConfigError, match="q must be >= 0"):
        class_probabilities(COUNTS, "power", -0.1)
    with pytest.raises(ConfigError, match="did you mean 'reversed'"):
        class_probabilities(COUNTS, "reversd")


def test_crop_flip_keeps_shape_and_dtype_and_pads_with_zeros():
    images = torch.full((256, 3, 32, 32), 255, dtype=torch.uint8)
    out = random_crop_flip(images, 4, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    zero_rows = (out[:, 0] == 0).all(dim=2).sum(dim=1)  # rows of pure padding per image
    zero_cols = (out[:, 0] == 0).all(dim=1).sum(dim=1)
    assert zero_rows.max() == 4 and zero_cols.max() == 4 and (zero_rows == 0).any()
    assert set(torch.unique(out).tolist()) <= {0, 255}


def reference_crop_flip(image, top, left, mirrored, padding=4):
    """One image at a time, the slow obvious way."""
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    crop = padded[:, top : top + 32, left : left + 32]
    return crop.flip(2) if mirrored else crop


def test_each_crop_is_a_window_of_the_padded_image_possibly_mirrored():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = random_crop_flip(images, 4, torch.Generator().manual_seed(2))
    windows = [(t, l, m) for t in range(9) for l in range(9) for m in (False, True)]
    for image, crop in zip(images, out):
        assert any(torch.equal(crop, reference_crop_flip(image, *w)) for w in windows)


def test_flip_mirrors_about_half_and_can_be_switched_off():
    images = torch.zeros(4000, 1, 8, 8, dtype=torch.uint8)
    images[..., 0] = 255  # a white left edge
    flipped = random_crop_flip(images, 0, torch.Generator().manual_seed(3))
    share = (flipped[:, 0, 0, -1] == 255).float().mean().item()
    assert 0.46 < share < 0.54  # 4000 fair coins: sd 0.008
    kept = random_crop_flip(images, 0, torch.Generator().manual_seed(3), flip=False)
    assert torch.equal(kept, images)


def test_normalise_maps_uint8_to_standardised_floats():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    out = Normalise(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))(images)
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-2.0, -1.0, -0.5]))
    assert torch.allclose(out[1, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def make_loader(seed=0, batch_size=32, drop_last=False, counts=(50, 20, 7)):
    labels = long_tailed_labels(counts)
    images = torch.arange(len(labels), dtype=torch.int64).view(-1, 1, 1, 1).expand(-1, 3, 8, 8) % 251
    augment = CifarAugment(Normalise((0.0,) * 3, (1 / 255,) * 3), padding=0, flip=False)  # identity: float pixel values
    return TwoStreamLoader(images.to(torch.uint8).contiguous(), labels, counts, batch_size, augment,
                           sampler="power", resample_weighting=1.0, seed=seed, drop_last=drop_last)


def flatten(epoch_batches):
    return [torch.cat([b.uniform.view1.flatten(), b.uniform.view2.flatten(), b.resampled.view1.flatten(),
                       b.uniform.labels, b.resampled.labels]) for b in epoch_batches]


def test_the_loader_is_deterministic_under_a_seed_and_varies_with_it():
    first, again, other = (flatten(make_loader(seed=s).epoch(0)) for s in (5, 5, 6))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert not all(torch.equal(a, b) for a, b in zip(first, flatten(make_loader(seed=5).epoch(1))))


def test_uniform_stream_visits_every_image_once_per_epoch_and_streams_match_in_size():
    loader = make_loader(batch_size=32)
    batches = list(loader.epoch(3))
    assert len(batches) == len(loader) == 3  # 77 images: 32 + 32 + 13
    seen = torch.cat([b.uniform.view1[:, 0, 0, 0] for b in batches]).round().long()
    assert sorted(seen.tolist()) == list(range(77))
    assert [len(b.resampled.labels) for b in batches] == [32, 32, 13]
    assert len(make_loader(batch_size=32, drop_last=True)) == 2


def test_labels_stay_with_their_images_in_both_streams():
    for batch in make_loader().epoch(0):
        for stream in (batch.uniform, batch.resampled):
            index = stream.view1[:, 0, 0, 0].round().long()
            assert torch.equal(long_tailed_labels((50, 20, 7))[index], stream.labels)


def test_views_are_augmented_independently():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loader = TwoStreamLoader(images, torch.zeros(64, dtype=torch.int64), [64], 16, CifarAugment(Normalise((0.5,) * 3, (0.5,) * 3)))
    batch = next(loader.epoch(0))
    assert not torch.equal(batch.uniform.view1, batch.uniform.view2)


def test_starting_mid_epoch_reproduces_the_remaining_steps():
    loader = make_loader()
    assert all(torch.equal(a, b) for a, b in zip(flatten(loader.epoch(2))[1:], flatten(loader.epoch(2, start_step=1))))


def test_batch_larger_than_the_dataset_is_refused():
    with pytest.raises(ConfigError, match="batch size must be in \\[1, 77\\]"):
        make_loader(batch_size=78)


def test_evaluation_batches_cover_the_test_set_in_order():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2)
    batches = list(evaluation_batches(images, torch.arange(10), 4, Normalise((0.0,) * 3, (1 / 255,) * 3)))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.cat([x[:, 0, 0, 0] for x, _ in batches]).round().tolist() == list(range(10))
