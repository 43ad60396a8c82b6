"""`glmc data`: the dataset card, as text and JSON, and its bad-input behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from glmc.cli import main

from conftest import refusal, write_small_cifar10


def glmc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "glmc.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.real_data
@pytest.mark.parametrize("split", ["standard", "glmc"])
@pytest.mark.parametrize("factor, total, many, medium", [(100, 12406, 8, 2), (50, 13996, 9, 1), (10, 20431, 10, 0)])
def test_json_card_on_real_cifar10(cifar10_root, capsys, split, factor, total, many, medium):
    code = main(["data", "--dataset", "cifar10-lt", "--imbalance-factor", str(factor), "--split", split,
                 "--data-root", str(cifar10_root), "--json"])
    card = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"num_classes", "class_counts", "total", "many", "medium", "few", "fingerprint"} <= set(card)
    assert (card["num_classes"], card["total"], card["many"], card["medium"], card["few"]) == (10, total, many, medium, 0)
    assert card["class_counts"][0] == 5000 and card["class_counts"][-1] == 5000 // factor
    assert card["fingerprint"].startswith("sha256:") and len(card["fingerprint"]) == 7 + 64


@pytest.mark.real_data
def test_text_card_shows_counts_shots_and_fingerprint(cifar10_root, capsys):
    main(["data", "--data-root", str(cifar10_root), "--json"])
    fingerprint = json.loads(capsys.readouterr().out)["fingerprint"]
    assert main(["data", "--data-root", str(cifar10_root)]) == 0
    text = capsys.readouterr().out
    assert "train images 12406" in text and "many 8 / medium 2 / few 0" in text
    assert fingerprint in text and "airplane" in text and "   50" in text


def test_data_root_comes_from_the_environment_when_not_given(tmp_path, monkeypatch, capsys):
    write_small_cifar10(tmp_path, per_class=6)
    monkeypatch.setenv("GLMC_DATA_ROOT", str(tmp_path))
    # 6 images per class cannot hold the 5000-image head: the error shows the folder was read
    assert main(["data"]) == 2
    assert "class 0 has 30 training images" in capsys.readouterr().err


def snapshot(folder):
    return sorted((p, os.path.getmtime(os.path.join(p, f))) for p, _, files in os.walk(folder) for f in files)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data-root", "{root}/nowhere"], "CIFAR-10 not found: looked for {root}/nowhere/cifar-10-batches-py"),
        (["--data-root", "{root}", "--imbalance-factor", "0.5"], "data.imbalance_factor must be >= 1, got 0.5"),
        (["--data-root", "{root}", "--split", "cao"], "unknown split protocol 'cao'"),
        (["--data-root", "{root}", "--dataset", "cifar-10"], "unknown dataset 'cifar-10'; did you mean 'cifar10-lt'"),
        (["--dataset", "cifar100-lt", "--data-root", "{root}"], "CIFAR-100 not found"),
        (["--data-root", "{root}", "--imbalance-factor", "ten"], "invalid float value: 'ten'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    write_small_cifar10(tmp_path)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert message.format(root=tmp_path) in refusal(capsys, "data", *[a.format(root=tmp_path) for a in args])
    assert snapshot(tmp_path) == before


def test_truncated_pickle_through_the_cli(tmp_path):
    write_small_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    batch.write_bytes(batch.read_bytes()[:1000])
    done = glmc("data", "--data-root", str(tmp_path))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "data_batch_4 is not a readable CIFAR pickle" in done.stderr
