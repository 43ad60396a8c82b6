"""`glmc bench` and the fast paths: the JSON it prints, stand-in data, equivalence of fast steps."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from conftest import write_image_tree
from glmc.cli import main
from glmc.config import build_config
from glmc.engine import step_rng
from glmc.machine import cpu_model
from glmc.methods import create_method, method_options
from glmc.precision import MixedPrecision
from glmc.reproduce import load_tables, make_plan
from glmc.rundir import RunFolder
from glmc.trainer import build_run


def bench_json(capsys, *args) -> tuple[dict, str]:
    assert main(["bench", *args, "--json"]) == 0
    printed = capsys.readouterr()
    return json.loads(printed.out), printed.err


def test_bench_times_the_real_training_step(capsys, monkeypatch):
    import glmc.bench

    calls = []
    real_step = glmc.bench.train_step
    monkeypatch.setattr(glmc.bench, "train_step", lambda *args, **kwargs: calls.append(1) or real_step(*args, **kwargs))
    result, _ = bench_json(capsys, "--preset", "quickstart", "--device", "cpu", "--steps", "2", "--warmup", "1")
    assert len(calls) == 1 + 1 + 2  # warm-up, the FLOP count, the timed steps: all through engine.train_step
    assert result["preset"] == "quickstart" and result["device"].startswith("cpu") and result["data"] == "real"
    assert cpu_model() in result["device"] and cpu_model() in result["machine"]
    start, end = result["timed_window"]  # wall-clock bounds of the timed steps, for benches run side by side
    assert time.time() - 600 < start and end - start >= result["ms_per_step"] * result["steps"] / 1000 - 1e-3
    assert all(result["phase_ms"][phase] > 0 for phase in ("data", "forward", "backward", "optimizer"))
    assert result["ms_per_step"] == result["phase_split_ms_per_step"] == pytest.approx(sum(result["phase_ms"].values()))


def test_bench_says_when_other_work_shared_the_cpus_while_it_timed(capsys, monkeypatch):
    import glmc.bench

    result, err = bench_json(capsys, "--preset", "quickstart", "--device", "cpu", "--steps", "1", "--warmup", "0")
    assert result["other_cpu_share"] is None or 0.0 <= result["other_cpu_share"] <= 1.0
    monkeypatch.setattr(glmc.bench.OtherWork, "share", lambda self: 0.48)  # another job kept one CPU of two busy
    result, err = bench_json(capsys, "--preset", "quickstart", "--device", "cpu", "--steps", "1", "--warmup", "0")
    assert result["other_cpu_share"] == 0.48
    assert "glmc: warning: other work took 48% of the CPU time while the steps were timed" in err


def test_bench_headline_leaves_out_the_split_synchronisations_where_the_device_queues_work(capsys, monkeypatch):
    import glmc.bench

    calls = []
    real_step = glmc.bench.train_step
    monkeypatch.setattr(glmc.bench, "train_step", lambda *args, **kwargs: calls.append(1) or real_step(*args, **kwargs))
    monkeypatch.setattr(glmc.bench, "queues_work", lambda device: True)
    # Every wait for the device: 200 ms, far above the ~90 ms by which a cold step's own time varies.
    monkeypatch.setattr(glmc.bench, "synchronize", lambda device: time.sleep(0.2))
    result, _ = bench_json(capsys, "--preset", "quickstart", "--device", "cpu", "--steps", "3", "--warmup", "0")
    assert len(calls) == 1 + 3 + 3  # the FLOP count, the synchronised split, the free-running window
    split = result["phase_split_ms_per_step"]
    assert split == pytest.approx(sum(result["phase_ms"].values()))
    # The split waits four times a step (800 ms); the headline window twice in all (133 ms a step).
    assert 500 < split - result["ms_per_step"] < 850
    assert result["images_per_s"] == pytest.approx(1000 * result["batch_size"] / result["ms_per_step"])
    start, end = result["timed_window"]  # the headline window's
    assert end - start == pytest.approx(3 * result["ms_per_step"] / 1000, abs=0.02)


class Compiled(torch.nn.Module):
    """What torch.compile returns, without compiling: the module it wraps kept as `_orig_mod`; counts its calls."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self._orig_mod = module
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self._orig_mod(*args, **kwargs)


def test_bench_counts_a_compiled_steps_flops_on_the_model_as_written(capsys, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: compiled.append(Compiled(module)) or compiled[-1])
    args = ["--preset", "quickstart", "--device", "cpu", "--warmup", "0", "--set", "train.compile=true"]
    one, _ = bench_json(capsys, *args, "--steps", "1")
    two, _ = bench_json(capsys, *args, "--steps", "2")
    assert compiled[1].calls == 2 * compiled[0].calls > 0  # the timed steps go through it, the FLOP count does not
    plain, _ = bench_json(capsys, *args[:-2], "--steps", "1")
    assert one["flops_per_step"] == two["flops_per_step"] == plain["flops_per_step"]


def test_bench_counts_sams_second_pass(capsys):
    args = ["--preset", "quickstart", "--device", "cpu", "--steps", "1", "--warmup", "0"]
    plain, _ = bench_json(capsys, *args)
    sam, _ = bench_json(capsys, *args, "--set", "optim.sam_rho=0.05")
    assert sam["flops_per_step"] == pytest.approx(2 * plain["flops_per_step"], rel=0.05)  # two forward/backward passes


def test_bench_without_the_data_uses_random_images_of_the_same_shape(capsys, tmp_path):
    result, err = bench_json(capsys, "--preset", "cifar10-lt-if100", "--data-root", str(tmp_path), "--device", "cpu",
                        "--steps", "1", "--warmup", "0", "--set", "model.backbone=resnet8")
    assert result["data"] == "random (same shape)" and result["backbone"] == "resnet8"
    assert "benchmarking on random images" in err


def test_bench_refuses_zero_steps(capsys):
    assert main(["bench", "--preset", "quickstart", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


# --- fast paths: the same loss as the plain path on the same batch ---------------------


def one_step_loss(run, method, model) -> torch.Tensor:
    batch = next(run.loader.epoch(0))
    return method(model, batch, 5, step_rng(0, 0, 0)).loss


def test_joint_forward_equals_two_passes_for_a_per_sample_model():
    run = build_run(build_config("quickstart", {"train.device": "cpu", "train.batch_size": "16"}))
    run.model.eval()  # BatchNorm on running statistics: the encoder treats samples independently
    counts = run.dataset.class_counts
    plain = create_method(method_options(), counts, 30)
    joint = create_method(method_options(joint_forward=True), counts, 30)
    torch.testing.assert_close(one_step_loss(run, joint, run.model), one_step_loss(run, plain, run.model))


def test_joint_forward_changes_batchnorm_statistics_in_training_mode():
    run = build_run(build_config("quickstart", {"train.device": "cpu", "train.batch_size": "16"}))
    counts = run.dataset.class_counts
    plain = one_step_loss(run, create_method(method_options(), counts, 30), run.model)
    joint = one_step_loss(run, create_method(method_options(joint_forward=True), counts, 30), run.model)
    assert not torch.allclose(plain, joint)  # hence an option, off by default


def test_compiled_step_gives_the_plain_loss():
    # fp32: in bf16 the compiled kernels round intermediates differently (about 1e-3 of the loss)
    run = build_run(build_config("quickstart", {"train.device": "cpu", "train.batch_size": "8", "train.compile": "true",
                                                "train.precision": "fp32"}))
    uncompiled = run.step_model._orig_mod  # the model in the run's precision, fp32 outputs
    assert isinstance(uncompiled, MixedPrecision) and uncompiled.module is run.model
    method = create_method(run.config.method, run.dataset.class_counts, 30)
    torch.testing.assert_close(one_step_loss(run, method, run.step_model), one_step_loss(run, method, uncompiled),
                               rtol=1e-4, atol=1e-4)


def test_the_compile_mode_reaches_torch_compile_and_leaves_the_run_the_same_run(monkeypatch, tmp_path):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: modes.append(mode) or module)
    overrides = {"train.device": "cpu", "train.compile": "true"}
    build_run(build_config("quickstart", {**overrides, "train.compile_mode": "reduce-overhead"}))
    build_run(build_config("quickstart", overrides))
    assert modes == ["reduce-overhead", "default"]
    plan = make_plan(load_tables()["quickstart"], tmp_path, compile="reduce-overhead")  # glmc reproduce --compile MODE
    compiled = plan.config(plan.rows[0], 0)
    assert plan.machine == {"train.compile": True, "train.compile_mode": "reduce-overhead"}
    assert compiled.train.compile_mode == "reduce-overhead"
    folder = RunFolder(tmp_path / "run")  # a run begun plain continues compiled, in any mode: the same step
    folder.path.mkdir()
    folder.write_config(dataclasses.replace(compiled, train=dataclasses.replace(compiled.train, compile=False,
                                                                                 compile_mode="default")))
    folder.require_same_run(compiled)


def test_input_only_bench_times_the_image_file_workers(tmp_path, capsys):
    write_image_tree(tmp_path)
    args = ["bench", "--preset", "folder-resnet18", "--input-only", "--data-root", str(tmp_path), "--steps", "2",
            "--warmup", "0", "--set", "data.workers=0", "--set", "train.batch_size=4", "--set", "data.image_size=32",
            "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"] == str(tmp_path) and result["workers"] == 0 and result["batch_size"] == 4
    assert result["images_per_s"] > 0 and result["images_per_s_per_worker"] > 0


def test_input_only_bench_refuses_in_memory_datasets(capsys):
    assert main(["bench", "--preset", "quickstart", "--input-only", "--steps", "1"]) == 2
    assert "--input-only times the image-file loader" in capsys.readouterr().err
