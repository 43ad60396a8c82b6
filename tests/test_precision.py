"""train.precision and eval.precision: what `auto` picks, what stays fp32, what evaluation uses."""

from __future__ import annotations

import json

import pytest
import torch

from glmc import precision as precision_module
from glmc.cli import main
from glmc.config import OptimConfig, build_config
from glmc.engine import step_rng, train_step
from glmc.optim import learning_rate
from glmc.errors import ConfigError
from glmc.precision import MixedPrecision, predict_logits, resolve_precision
from glmc.trainer import build_run, train

CPU = torch.device("cpu")


def quick_run(**overrides):
    values = {"train.device": "cpu", "train.batch_size": "16", **{k.replace("__", "."): v for k, v in overrides.items()}}
    return build_run(build_config("quickstart", values))


def one_step(run, epoch: int = 3):
    batch = next(run.loader.epoch(epoch))
    return train_step(run.step_model, run.method, run.optimizer, batch, epoch, step_rng(0, epoch, 0))


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_exactly_where_the_device_has_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: native)
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


def test_native_bf16_follows_the_cpu_capabilities(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert precision_module.native_bf16(CPU)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    assert not precision_module.native_bf16(CPU)


@pytest.mark.parametrize("key", ["train.precision", "eval.precision"])
def test_an_unknown_precision_is_refused_naming_the_choices(key):
    with pytest.raises(ConfigError, match=r"unknown .*precision value 'fp16'.*auto, fp32, bf16"):
        build_config("quickstart", {key: "fp16"})


def test_defaults_are_auto_for_training_and_fp32_for_evaluation():
    config = build_config("quickstart")
    assert (config.train.precision, config.eval.precision) == ("auto", "fp32")


# Golden values of one fp32 step (quickstart of 30 epochs, batch 16, epoch 3, step 0), computed with the code before
# precision became a setting (commit 0660e73): the fp32 path must stay exactly that computation.
GOLDEN_FP32_STEP = {"loss": 5.12496138, "ce": 5.16651535, "cb": 1.49874067, "sim": -0.00487634214,
                    "alpha": 0.99000001, "lam": 0.832669199}
GOLDEN_WEIGHTS = {"sum": 208.521065, "abs": 7751.943, "squares": 1270.68784, "momentum_abs": 784.898456}


def test_an_fp32_step_equals_the_step_before_precision_was_a_setting():
    run = quick_run(train__precision="fp32", train__epochs="30")
    parts = one_step(run)
    assert {name: value.item() for name, value in parts.items()} == pytest.approx(GOLDEN_FP32_STEP, rel=1e-6)
    weights = torch.cat([p.detach().flatten() for p in run.model.parameters()]).double()
    momentum = torch.cat([run.optimizer.state[p]["momentum_buffer"].flatten() for p in run.model.parameters()]).double()
    measured = {"sum": weights.sum().item(), "abs": weights.abs().sum().item(), "squares": weights.pow(2).sum().item(),
                "momentum_abs": momentum.abs().sum().item()}
    assert measured == pytest.approx(GOLDEN_WEIGHTS, rel=1e-6)


def test_a_bf16_step_keeps_weights_optimiser_state_and_losses_in_fp32():
    bf16, fp32 = quick_run(train__precision="bf16"), quick_run(train__precision="fp32")
    assert bf16.precision == "bf16" and isinstance(bf16.step_model, MixedPrecision)
    parts_bf16, parts_fp32 = one_step(bf16), one_step(fp32)
    assert all(value.dtype == torch.float32 for value in parts_bf16.values())
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert all(state["momentum_buffer"].dtype == torch.float32 for state in bf16.optimizer.state.values())
    # the forward really ran in bf16: close to the fp32 loss, not equal to it
    assert parts_bf16["loss"].item() != parts_fp32["loss"].item()
    assert parts_bf16["loss"].item() == pytest.approx(parts_fp32["loss"].item(), rel=2e-2)


def test_mixed_precision_returns_every_output_in_fp32_without_touching_the_weights():
    run = quick_run(train__precision="bf16")
    images = torch.randn(4, 3, 32, 32)
    out = run.step_model(images)
    assert all(field.dtype == torch.float32 for field in out)
    assert not any(isinstance(module, MixedPrecision) for module in run.model.modules())  # saved state is the bare model


def test_evaluation_forward_is_plain_fp32_unless_asked():
    run = quick_run()
    run.model.eval()
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        plain = run.model(images).logits
    torch.testing.assert_close(predict_logits(run.model, images, "fp32"), plain, rtol=0, atol=1e-6)
    rounded = predict_logits(run.model, images, "bf16")
    assert rounded.dtype == torch.float32 and not torch.equal(rounded, plain)
    torch.testing.assert_close(rounded, plain, rtol=0.05, atol=0.05)


def test_the_summary_records_both_precisions(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["precision"] == {"train": resolve_precision("auto", CPU), "eval": "fp32", "interim_eval": "fp32"}


def test_interim_evaluations_may_run_in_bf16_and_the_last_one_always_in_eval_precision(tmp_path, capsys):
    config = build_config("quickstart", {"train.epochs": "3", "train.eval_every": "1", "train.device": "cpu",
                                         "train.batch_size": "128", "eval.interim_precision": "bf16"})
    train(config, tmp_path / "run", quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["precision"] for record in records] == ["bf16", "bf16", "fp32"]
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final"]
    assert main(["eval", str(tmp_path / "run" / "checkpoint_last.pt"), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["per_class"] == final["per_class"]  # the headline: glmc eval's fp32


def test_bench_prints_the_precision_it_ran(capsys):
    args = ["bench", "--preset", "quickstart", "--device", "cpu", "--steps", "1", "--warmup", "0",
            "--set", "train.precision=fp32", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "fp32"


# ---------------------------------------------------------------- the authors' ImageNet/iNat lr lag


def test_schedule_lag_trains_epoch_e_at_the_value_of_epoch_e_minus_1():
    plain = OptimConfig(lr=0.1, schedule="warmup-cosine", warmup_epochs=10)
    lagged = OptimConfig(lr=0.1, schedule="warmup-cosine", warmup_epochs=10, schedule_lag=True)
    assert learning_rate(0, 135, lagged) == 0.1  # their optimiser starts at the base lr
    assert learning_rate(0, 135, plain) == pytest.approx(0.01)
    for epoch in (1, 5, 10, 11, 12, 60, 134):
        assert learning_rate(epoch, 135, lagged) == learning_rate(epoch - 1, 135, plain)
    assert learning_rate(11, 135, lagged) == pytest.approx(0.11)  # their warm-up ends at 1.1 lr (epoch <= 10)


def test_only_the_authors_imagenet_and_inat_presets_lag():
    assert build_config("imagenet-lt-authors").optim.schedule_lag and build_config("inat2018-authors").optim.schedule_lag
    assert not build_config("cifar10-lt-if100-authors").optim.schedule_lag  # CosineAnnealingLR: epoch e at f(e)
    assert not build_config("imagenet-lt-authors", {"optim.schedule_lag": "false"}).optim.schedule_lag
