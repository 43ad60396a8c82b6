"""Mixing helpers against hand computations on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glmc.mixing import (
    box_area_fraction,
    cutmix,
    cutmix_box,
    mixed_targets,
    mixup,
    sample_lambda,
)


class FixedCentre:
    """Stands in for a numpy Generator: `integers` returns preset values in order."""

    def __init__(self, *values: int) -> None:
        self.values = list(values)
        self.calls: list[tuple[int, int]] = []

    def integers(self, low: int, high: int) -> int:
        self.calls.append((low, high))
        return self.values.pop(0)


def test_sample_lambda_uses_only_the_given_rng_and_is_reproducible():
    torch.manual_seed(0)
    np.random.seed(0)
    a = [sample_lambda(np.random.default_rng(5), 1.0) for _ in range(2)]
    np.random.seed(1)  # the global RNG must play no part
    b = sample_lambda(np.random.default_rng(5), 1.0)
    assert a[0] == a[1] == b
    assert isinstance(b, float) and 0.0 <= b <= 1.0


def test_beta_changes_the_lambda_distribution():
    # Var Beta(a, a) = 1 / (4 (2a + 1)): 1/12 = 0.083 for a = 1, 1/8 = 0.125 for a = 0.5.
    rng = np.random.default_rng(0)
    uniform = np.array([sample_lambda(rng, 1.0) for _ in range(20000)])
    u_shaped = np.array([sample_lambda(rng, 0.5) for _ in range(20000)])
    assert uniform.var() == pytest.approx(1 / 12, abs=0.005)
    assert u_shaped.var() == pytest.approx(1 / 8, abs=0.005)


def test_sample_lambda_rejects_non_positive_beta():
    with pytest.raises(ValueError):
        sample_lambda(np.random.default_rng(0), 0.0)


def test_mixup_by_hand():
    x_a = torch.tensor([[1.0, 2.0]])
    x_b = torch.tensor([[3.0, 6.0]])
    # 0.25 * [1, 2] + 0.75 * [3, 6] = [0.25 + 2.25, 0.5 + 4.5]
    assert torch.allclose(mixup(x_a, x_b, 0.25), torch.tensor([[2.5, 5.0]]))
    assert torch.equal(x_a, torch.tensor([[1.0, 2.0]]))


@pytest.mark.parametrize(
    "height, width, lam, centre, box",
    [
        # 8 * sqrt(0.25) = 4 per side, half = 2; centre (4, 4) fits: area 16 / 64 = 1 - lam.
        (8, 8, 0.75, (4, 4), (2, 6, 2, 6)),
        # Same box at the top-left corner: clipped to rows 0:2, columns 0:2.
        (8, 8, 0.75, (0, 0), (0, 2, 0, 2)),
        # Centre (7, 3): rows 5:9 clipped to 5:8, columns 1:5.
        (8, 8, 0.75, (7, 3), (5, 8, 1, 5)),
        # 8 * sqrt(0.5) = 5.66 -> ceil 6, half 3: rows 1:7, columns 4:10 clipped to 4:8.
        (8, 8, 0.5, (4, 7), (1, 7, 4, 8)),
        # Non-square: ceil(4 * 0.5) = 2 -> half 1; ceil(10 * 0.5) = 5 -> half 2.
        (4, 10, 0.75, (3, 9), (2, 4, 7, 10)),
        # lam = 1: no box; lam = 0: the whole image (centre at the middle).
        (8, 8, 1.0, (3, 5), (3, 3, 5, 5)),
        (8, 8, 0.0, (4, 4), (0, 8, 0, 8)),
    ],
)
def test_cutmix_box_by_hand(height, width, lam, centre, box):
    rng = FixedCentre(*centre)
    assert cutmix_box(height, width, lam, rng) == box
    # The centre row is drawn over [0, H), then the column over [0, W).
    assert rng.calls == [(0, height), (0, width)]


@pytest.mark.parametrize(
    "box, expected",
    [((2, 6, 2, 6), 16 / 64), ((0, 2, 0, 2), 4 / 64), ((5, 8, 1, 5), 12 / 64), ((3, 3, 5, 5), 0.0)],
)
def test_box_area_fraction(box, expected):
    assert box_area_fraction(box, 8, 8) == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    lam=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_cutmix_box_stays_inside_the_image(height, width, lam, seed):
    y1, y2, x1, x2 = cutmix_box(height, width, lam, np.random.default_rng(seed))
    assert all(isinstance(v, int) for v in (y1, y2, x1, x2))
    assert 0 <= y1 <= y2 <= height and 0 <= x1 <= x2 <= width
    # Clipping only ever shrinks the box below its nominal (1 - lam) share.
    side_h, side_w = math.ceil(height * math.sqrt(1 - lam)), math.ceil(width * math.sqrt(1 - lam))
    assert (y2 - y1) * (x2 - x1) <= side_h * side_w


def test_cutmix_takes_the_box_from_b_and_leaves_inputs_alone():
    x_a = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    x_b = -torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) - 1
    a_before, b_before = x_a.clone(), x_b.clone()
    box = (1, 3, 2, 5)
    mixed = cutmix(x_a, x_b, box)
    assert torch.equal(x_a, a_before) and torch.equal(x_b, b_before)
    for i in range(4):
        for j in range(5):
            inside = 1 <= i < 3 and 2 <= j < 5
            source = x_b if inside else x_a
            assert torch.equal(mixed[:, :, i, j], source[:, :, i, j])
    assert mixed.data_ptr() != x_a.data_ptr()


def test_cutmix_passes_gradients_to_both_inputs():
    x_a = torch.ones(1, 1, 2, 2, requires_grad=True)
    x_b = torch.ones(1, 1, 2, 2, requires_grad=True)
    cutmix(x_a, x_b, (0, 1, 0, 2)).sum().backward()
    assert torch.equal(x_a.grad, torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]]))
    assert torch.equal(x_b.grad, torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]))


def test_mixed_targets_by_hand():
    labels_a = torch.tensor([0, 2])
    labels_b = torch.tensor([1, 2])
    # Row 0: 0.3 on class 0, 0.7 on class 1; row 1: both images are class 2.
    expected = torch.tensor([[0.3, 0.7, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(mixed_targets(labels_a, labels_b, 0.3, 3), expected)
    weights = torch.tensor([1.0, 2.0, 3.0])
    # Each share times its class weight: [0.3 * 1, 0.7 * 2, 0], [0, 0, 1 * 3].
    expected_w = torch.tensor([[0.3, 1.4, 0.0], [0.0, 0.0, 3.0]])
    assert torch.allclose(mixed_targets(labels_a, labels_b, 0.3, 3, weights), expected_w)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=16),
    lam=st.floats(0.0, 1.0),
)
def test_unweighted_mixed_target_rows_sum_to_one(labels, lam):
    labels_a = torch.tensor([a for a, _ in labels])
    labels_b = torch.tensor([b for _, b in labels])
    targets = mixed_targets(labels_a, labels_b, lam, 7)
    assert targets.shape == (len(labels), 7) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(dim=1), torch.ones(len(labels)))
    assert bool((targets >= 0).all())
