"""`glmc bench`: the JSON it prints and the stand-in data when the real data is absent."""

from __future__ import annotations

import json

import pytest

from glmc.cli import main


def bench_json(capsys, *args) -> tuple[dict, str]:
    assert main(["bench", *args, "--json"]) == 0
    printed = capsys.readouterr()
    return json.loads(printed.out), printed.err


def test_bench_reports_throughput_and_its_split(capsys):
    result, _ = bench_json(capsys, "--preset", "quickstart", "--device", "cpu", "--steps", "2", "--warmup", "1")
    assert {"images_per_s", "ms_per_step", "device", "preset"} <= set(result)
    assert result["preset"] == "quickstart" and result["device"].startswith("cpu") and result["data"] == "real"
    assert result["images_per_s"] == pytest.approx(64 / (result["ms_per_step"] / 1000))
    assert sum(result["phase_ms"].values()) == pytest.approx(result["ms_per_step"])
    assert result["flops_per_step"] > 0 and result["peak_memory_mb"] > 0


def test_bench_without_the_data_uses_random_images_of_the_same_shape(capsys, tmp_path):
    result, err = bench_json(capsys, "--preset", "cifar10-lt-if100", "--data-root", str(tmp_path), "--device", "cpu",
                        "--steps", "1", "--warmup", "0", "--set", "model.backbone=resnet8")
    assert result["data"] == "random (same shape)" and result["backbone"] == "resnet8"
    assert "benchmarking on random images" in err


def test_bench_refuses_zero_steps(capsys):
    assert main(["bench", "--preset", "quickstart", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
