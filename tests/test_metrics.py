"""Metrics: hand-computed accuracies, shot groups from training counts, batch accumulation."""

from __future__ import annotations

import dataclasses

import json

import numpy as np
import pytest
import torch

from glmc.errors import ConfigError
from glmc.metrics import (
    ConfusionCounter,
    Metrics,
    confusion_matrix,
    evaluate_logits,
    metrics_from_counts,
    top_k_correct,
)
from glmc.shots import AUTHORS, STANDARD, ShotBounds

# Six classes; class 4 has exactly 20 training images: medium by the standard bounds,
# few by the authors'. Standard: many {0, 1}, medium {2, 3, 4}, few {5}.
# Authors': many {0, 1}, medium {2, 3}, few {4, 5}.
TRAIN_COUNTS = [500, 150, 60, 30, 20, 5]
# (label, prediction, lowest-scoring class) for two test images per class.
SAMPLES = [
    (0, 0, 5), (0, 0, 5),  # class 0: 2/2 correct
    (1, 1, 5), (1, 0, 1),  # class 1: 1/2, the miss also outside the top 5
    (2, 2, 5), (2, 2, 5),  # class 2: 2/2
    (3, 0, 5), (3, 1, 3),  # class 3: 0/2, one outside the top 5
    (4, 4, 5), (4, 4, 5),  # class 4: 2/2
    (5, 0, 1), (5, 0, 5),  # class 5: 0/2, one outside the top 5
]


def logits_for(samples, num_classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits 1 for the prediction, -1 for the lowest class, 0 elsewhere: (N x K, N)."""
    logits = torch.zeros(len(samples), num_classes)
    for row, (_, prediction, lowest) in enumerate(samples):
        logits[row, prediction] = 1.0
        logits[row, lowest] = -1.0
    labels = torch.tensor([label for label, _, _ in samples])
    return logits, labels


def test_hand_computed_top1_top5_and_per_class():
    metrics = evaluate_logits(*logits_for(SAMPLES), TRAIN_COUNTS)
    assert metrics.num_samples == 12
    assert metrics.top1 == pytest.approx(100 * 7 / 12)
    assert metrics.top5 == pytest.approx(100 * 9 / 12)  # three labels scored lowest of six
    assert metrics.per_class == pytest.approx([100.0, 50.0, 100.0, 0.0, 100.0, 0.0])


def test_standard_shot_groups_average_per_class_accuracy():
    metrics = evaluate_logits(*logits_for(SAMPLES), TRAIN_COUNTS, STANDARD)
    assert metrics.shot_bounds == "standard"
    assert metrics.many == pytest.approx((100 + 50) / 2)
    assert metrics.medium == pytest.approx((100 + 0 + 100) / 3)
    assert metrics.few == pytest.approx(0.0)


def test_authors_bounds_move_the_class_with_twenty_images_into_few():
    metrics = evaluate_logits(*logits_for(SAMPLES), TRAIN_COUNTS, AUTHORS)
    assert metrics.shot_bounds == "authors"
    assert metrics.many == pytest.approx(75.0)
    assert metrics.medium == pytest.approx((100 + 0) / 2)
    assert metrics.few == pytest.approx((100 + 0) / 2)


def test_shot_bounds_by_name_equal_the_objects():
    logits, labels = logits_for(SAMPLES)
    assert evaluate_logits(logits, labels, TRAIN_COUNTS, "authors") == evaluate_logits(logits, labels, TRAIN_COUNTS, AUTHORS)
    with pytest.raises(ConfigError, match="did you mean 'authors'"):
        evaluate_logits(logits, labels, TRAIN_COUNTS, "author")


def test_unregistered_bounds_are_named_by_their_values():
    metrics = evaluate_logits(*logits_for(SAMPLES), TRAIN_COUNTS, ShotBounds(many_min=200, few_max=50))
    assert metrics.shot_bounds == "many>=200,few<=50"
    assert metrics.many == pytest.approx(100.0)  # class 0 only


def test_groups_come_from_training_counts_not_test_counts():
    # A balanced test set with head-heavy training counts: only the training counts split it.
    logits, labels = logits_for(SAMPLES)
    metrics = evaluate_logits(logits, labels, [5, 5, 5, 5, 5, 500])
    assert (metrics.many, metrics.medium) == (pytest.approx(0.0), None)
    assert metrics.few == pytest.approx((100 + 50 + 100 + 0 + 100) / 5)


def test_empty_groups_are_none_not_zero_or_nan():
    metrics = evaluate_logits(*logits_for(SAMPLES), [500] * 6)
    assert metrics.many == pytest.approx(100 * 7 / 12)  # mean of per-class = top-1 when balanced
    assert metrics.medium is None and metrics.few is None
    assert json.loads(json.dumps(metrics.to_json()))["few"] is None


def test_to_json_has_exactly_the_fields_and_rounds_only_there():
    metrics = evaluate_logits(*logits_for(SAMPLES), TRAIN_COUNTS)
    payload = metrics.to_json()
    assert set(payload) == {"top1", "top5", "per_class", "many", "medium", "few", "num_samples", "shot_bounds",
                            "ece", "nll", "ece_many", "ece_medium", "ece_few", "reliability"}
    assert payload["top1"] == 58.3333
    assert metrics.top1 == 100 * 7 / 12  # the object keeps full precision
    assert payload["medium"] == 66.6667
    json.dumps(payload)


@pytest.mark.parametrize("num_classes", [2, 3, 4])
def test_top5_with_fewer_than_five_classes_is_top_k(num_classes):
    logits = torch.tensor([[float(-k) for k in range(num_classes)]] * num_classes)  # class 0 always wins
    labels = torch.arange(num_classes)  # including the class ranked last
    metrics = evaluate_logits(logits, labels, [500] * num_classes)
    assert metrics.top5 == 100.0
    assert metrics.top1 == pytest.approx(100.0 / num_classes)


def test_top_k_correct_counts_hits():
    logits, labels = logits_for(SAMPLES)
    assert int(top_k_correct(logits, labels, 1)) == 7
    assert int(top_k_correct(logits, labels, 5)) == 9
    assert int(top_k_correct(logits, labels, 6)) == 12


def test_confusion_matrix_rows_are_true_classes():
    predictions = torch.tensor([0, 2, 2, 1, 0])
    labels = torch.tensor([0, 0, 2, 1, 1])
    expected = [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    confusion = confusion_matrix(predictions, labels, 3)
    assert confusion.dtype == torch.int64
    assert confusion.tolist() == expected


def test_confusion_matrix_matches_a_reference_count():
    generator = torch.Generator().manual_seed(0)
    predictions = torch.randint(0, 7, (500,), generator=generator)
    labels = torch.randint(0, 7, (500,), generator=generator)
    reference = np.zeros((7, 7), dtype=np.int64)
    np.add.at(reference, (labels.numpy(), predictions.numpy()), 1)
    np.testing.assert_array_equal(confusion_matrix(predictions, labels, 7).numpy(), reference)


def test_accumulating_batches_equals_one_batch():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(103, 10, generator=generator)
    labels = torch.randint(0, 10, (103,), generator=generator)
    counts = [500, 300, 180, 100, 60, 40, 20, 15, 8, 5]
    counter = ConfusionCounter(10)
    for start in range(0, 103, 17):  # the last batch is partial
        counter.update(logits[start : start + 17], labels[start : start + 17])
    whole, batched = evaluate_logits(logits, labels, counts), counter.finish(counts)
    # sums of confidences in another order: equal up to float64 rounding
    calibration = ("ece", "nll", "ece_many", "ece_medium", "ece_few")
    for name in calibration:
        assert getattr(batched, name) == pytest.approx(getattr(whole, name), rel=1e-12), name
    same = {name: getattr(whole, name) for name in (*calibration, "reliability")}
    assert dataclasses.replace(batched, **same) == whole
    assert batched.reliability["count"] == whole.reliability["count"]
    assert whole.num_samples == 103
    assert torch.equal(counter.confusion, confusion_matrix(logits.argmax(1), labels, 10))


def test_a_class_without_test_samples_is_none_and_left_out_of_its_group():
    samples = [sample for sample in SAMPLES if sample[0] != 1]  # class 1 untested
    metrics = evaluate_logits(*logits_for(samples), TRAIN_COUNTS)
    assert metrics.per_class[1] is None
    assert metrics.many == pytest.approx(100.0)  # class 0 alone


def test_metrics_from_counts_is_the_host_side_formula():
    confusion = np.array([[3, 1], [2, 4]])
    metrics = metrics_from_counts(confusion, top5_correct=10, class_counts=[200, 10])
    assert metrics == Metrics(
        top1=70.0, top5=100.0, per_class=[75.0, 200 / 3], many=75.0, medium=None, few=200 / 3,
        num_samples=10, shot_bounds="standard",
    )


def test_bad_inputs_are_refused():
    counter = ConfusionCounter(3)
    with pytest.raises(ValueError, match="no batches"):
        counter.finish([1, 1, 1])
    with pytest.raises(ValueError, match="N x 3"):
        counter.update(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have shape"):
        counter.update(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    counter.update(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="2 training class counts for 3 classes"):
        counter.finish([1, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counting_on_cuda_never_syncs_until_finish():
    logits, labels = logits_for(SAMPLES)
    on_device = logits.cuda(), labels.cuda()
    counter = ConfusionCounter(6)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for start in range(0, 12, 5):
            counter.update(on_device[0][start : start + 5], on_device[1][start : start + 5])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert counter.confusion.device.type == "cuda"
    assert counter.finish(TRAIN_COUNTS) == evaluate_logits(logits, labels, TRAIN_COUNTS)
