"""Methods say what they read; the loader and the model's forward follow, and nothing else changes."""

from __future__ import annotations

import pytest
import torch

from conftest import write_image_tree
from glmc.config import build_config
from glmc.data.batch import BatchSpec
from glmc.data.datasets import DataConfig, create_dataset
from glmc.methods import METHODS, create_method, method_options
from glmc.models import create_model, use_heads
from glmc.trainer import build_run

BASELINES = ["ce", "cb", "drw", "ldam-drw", "balanced-softmax", "focal", "mixup", "cutmix"]


def needs(name: str):
    return create_method(method_options(name), [50, 20, 5], 10).needs


def test_glmc_and_its_ablations_declare_the_streams_views_and_heads_they_use():
    assert needs("glmc").batch == BatchSpec(resampled=True, views=(1, 2))
    assert needs("glmc").heads == {"fc", "fc_cb", "projection", "predictor"}
    assert needs("glmc-no-consistency").heads == {"fc", "fc_cb"}
    assert needs("glmc-no-cumulative").heads == {"fc_cb", "projection", "predictor"}
    assert (needs("glmc-global-only").batch.views, needs("glmc-local-only").batch.views) == ((1,), (2,))
    assert needs("glmc-global-only").heads == needs("glmc-local-only").heads == {"fc", "fc_cb"}


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_read_the_uniform_view_1_and_the_prediction_head(name):
    assert needs(name).batch == BatchSpec(resampled=False, views=(1,)) and needs(name).heads == {"fc_cb"}


def quick_run(method: str, **changes):
    values = {"method.name": method, "train.device": "cpu", "train.batch_size": "16", **changes}
    if method == "ldam-drw":
        values["model.classifier"] = "cosine"
    return build_run(build_config("quickstart", values))


def test_a_baseline_run_builds_no_resampled_stream_or_second_view_and_computes_one_head():
    run = quick_run("ce")
    batch = next(run.loader.epoch(0))
    assert batch.resampled is None and batch.uniform.view2 is None and batch.uniform.view1 is not None
    out = run.step_model(batch.uniform.view1)
    assert out.logits_fc is None and out.z is None and out.p is None
    trainable = {name for name, p in run.model.named_parameters() if p.requires_grad}
    assert not any(name.startswith(("heads.fc.", "heads.projection", "heads.predictor")) for name in trainable)
    assert {"heads.fc_cb.weight", "heads.fc_cb.bias"} <= trainable


def test_the_views_a_method_reads_are_the_ones_glmc_reads():
    """Skipping a view draws its randomness all the same: every method sees GLMC's crops."""
    full = next(quick_run("glmc").loader.epoch(2))
    for method, view in (("glmc-global-only", "view1"), ("glmc-local-only", "view2")):
        batch = next(quick_run(method).loader.epoch(2))
        for stream in ("uniform", "resampled"):
            assert torch.equal(getattr(getattr(batch, stream), view), getattr(getattr(full, stream), view))
    baseline = next(quick_run("ce").loader.epoch(2))
    assert torch.equal(baseline.uniform.view1, full.uniform.view1)
    assert torch.equal(baseline.uniform.labels, full.uniform.labels)


def test_image_files_decode_only_what_the_method_reads(tmp_path):
    write_image_tree(tmp_path)
    dataset = create_dataset(DataConfig(dataset="folder", data_root=str(tmp_path), unreadable="skip"))
    config = DataConfig(dataset="folder", data_root=str(tmp_path), image_size=24, resize=28, workers=0, unreadable="skip")
    baseline = dataset.train_loader(config, 6, torch.device("cpu"), spec=BatchSpec(resampled=False, views=(1,)))
    full = dataset.train_loader(config, 6, torch.device("cpu"))
    assert all(len(keys) == 6 for keys in baseline.keys(0, 0)) and all(len(keys) == 12 for keys in full.keys(0, 0))
    one, both = next(baseline.epoch(0)), next(full.epoch(0))
    assert one.resampled is None and one.uniform.view2 is None
    if len(one.uniform.labels) == len(both.uniform.labels):  # no unreadable image in the step: same images, same crops
        assert torch.equal(one.uniform.view1, both.uniform.view1)


def test_use_heads_refuses_a_predictor_without_its_projection():
    with pytest.raises(ValueError, match="predictor reads the projection"):
        use_heads(create_model("resnet8", 10), {"fc_cb", "predictor"})


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_exactly_the_heads_it_declares(name):
    run = quick_run(name)
    batch = next(run.loader.epoch(0))
    from glmc.engine import step_rng, train_step

    train_step(run.step_model, run.method, run.optimizer, batch, 9, step_rng(0, 9, 0))
    got_gradient = {module for module in ("fc", "fc_cb", "projection", "predictor")
                    if getattr(run.model.heads, module).weight.grad is not None}
    assert got_gradient == set(run.method.needs.heads)
